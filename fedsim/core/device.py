"""The compute device client code trains on, set by the worker that runs a job.

A worker computes on the CPU or on a CUDA device (`backend.device`, on actors that have a
GPU); the client halves are the same code for both. They reach the device only through
`compute_device()`: `Task.model_with` puts the model there, `local_batches` moves each
minibatch there, as a DataLoader loop does. The setting is per thread of execution (a
context variable), so two inline workers on different devices in one process do not mix.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch

CPU = torch.device("cpu")

_device: ContextVar[torch.device] = ContextVar("fedsim_compute_device", default=CPU)


def compute_device() -> torch.device:
    """Where the job being run computes (the CPU outside a worker)."""
    return _device.get()


@contextlib.contextmanager
def computing_on(device: torch.device) -> Iterator[None]:
    token = _device.set(device)
    try:
        yield
    finally:
        _device.reset(token)


def seed_job(device: torch.device, seed: int) -> None:
    """Seed the generators a job draws from: the CPU's (batch order, initialisations) always,
    the CUDA device's too when it computes there (dropout and other draws on the GPU)."""
    torch.default_generator.manual_seed(seed)  # torch.manual_seed would seed every GPU: slow
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def cuda_deterministic() -> None:
    """CUDA settings that make a job's result depend only on its inputs and seed.

    cuBLAS needs its workspace fixed before its first handle (`CUBLAS_WORKSPACE_CONFIG`);
    cuDNN must not pick algorithms by timing (`benchmark`), and TF32 is off so that a CUDA
    run stays within float32 rounding of a CPU run. Where an operation has no deterministic
    CUDA kernel, torch warns (`warn_only`) instead of failing the run; such a run may differ
    in the last bits from one run to the next (see torch's "Reproducibility" notes).
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def usable_device(name: str) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:N") as a device this process can compute on; a
    `RuntimeError` saying why not."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise RuntimeError(f"{name!r}: torch {torch.__version__} here sees {count} CUDA "
                               "device(s)")
        cuda_deterministic()
    return device
