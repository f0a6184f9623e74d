"""Client-side building blocks: local training config, minibatches, model <-> arrays.

Every client half (FedAvg's, FedSpeed's, DFedSAM's...) uses these, so the
definition of "a local step" is the same for all strategies.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common.constant import SType

from fedsim.scenario import TrainingSpec
from fedsim.tasks import Dataset, Task


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters, as carried in a train message's ConfigRecord."""

    lr: float = 0.05
    local_epochs: int = 1
    local_steps: int = 0  # if > 0, overrides local_epochs
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: Flower's FedProx sends it as "proximal-mu"

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> TrainConfig:
        return cls(**spec.model_dump())

    @classmethod
    def from_record(cls, config: ConfigRecord) -> TrainConfig:
        fields = cls.__dataclass_fields__
        values = {k.replace("-", "_"): v for k, v in config.items()}
        return cls(**{k: v for k, v in values.items() if k in fields})  # type: ignore[arg-type]

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({k.replace("_", "-"): v for k, v in asdict(self).items()})


def local_batches(data: Dataset, config: TrainConfig,
                  generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Minibatches for one round of local work: `local_steps` batches, else epochs.

    Each epoch is a fresh permutation; steps cycle through epochs as needed.
    The batch order comes from torch's generator, seeded per job by the pool.
    """
    n = len(data)
    if n == 0:
        return
    size = min(config.batch_size, n)
    total = config.local_steps or config.local_epochs * -(-n // size)
    done = 0
    while done < total:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            index = order[start:start + size]
            yield data.x[index], data.y[index]
            done += 1
            if done == total:
                return


def make_optimizer(model: torch.nn.Module, config: TrainConfig, lr: float | None = None
                   ) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=config.lr if lr is None else lr,
                           momentum=config.momentum, weight_decay=config.weight_decay)


def local_sgd(model: torch.nn.Module, task: Task, data: Dataset, config: TrainConfig
              ) -> tuple[int, float]:
    """Local SGD; returns (samples processed, mean training loss).

    With `proximal_mu` > 0 this is FedProx's local solver: the loss gains
    mu/2 ||w - w_received||^2 (Li et al. 2020, eq. 2).
    """
    model.train()
    optimizer = make_optimizer(model, config)
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu else []
    samples, loss_sum = 0, 0.0
    for x, y in local_batches(data, config):
        optimizer.zero_grad()
        loss = task.loss(model, x, y)
        if anchor:
            distance = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                strict=True))
            loss = loss + config.proximal_mu / 2 * distance
        loss.backward()
        optimizer.step()
        samples += len(x)
        loss_sum += loss.item() * len(x)
    return samples, loss_sum / max(samples, 1)


def model_to_arrays(model: torch.nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (the bytes `ArrayRecord(state_dict)` makes)."""
    record = ArrayRecord()
    for key, tensor in model.state_dict().items():
        record[key] = array_from_numpy(tensor.detach().cpu().numpy())
    return record


@torch.no_grad()
def arrays_to_model(model: torch.nn.Module, arrays: ArrayRecord) -> torch.nn.Module:
    """Copy `arrays` into the model's parameters and buffers, in place.

    What `load_state_dict(strict=True)` does for a plain module (same keys, same shapes,
    values cast to the tensor's dtype), without its per-module hook machinery, which
    costs more than the copy for small models.
    """
    state = model.state_dict(keep_vars=True)
    if state.keys() != arrays.keys():
        raise KeyError(f"model keys {sorted(state)} != array keys {sorted(arrays)}")
    for key, tensor in state.items():
        values = torch.from_numpy(array_to_numpy(arrays[key]))
        if values.shape != tensor.shape:
            raise ValueError(f"{key}: array of shape {tuple(values.shape)} for a tensor of "
                             f"shape {tuple(tensor.shape)}")
        tensor.copy_(values)
    return model


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The header `np.save` writes for a C-ordered array of this dtype and shape."""
    buffer = io.BytesIO()
    np.save(buffer, np.empty(shape, dtype=dtype), allow_pickle=False)
    data = buffer.getvalue()
    return data[:len(data) - np.dtype(dtype).itemsize * math.prod(shape)]


def array_from_numpy(values: np.ndarray) -> Array:
    """`Array(values)`, byte for byte, without `np.save`'s per-call header formatting.

    Models go through this twice per job; Flower's path spends as long formatting and
    parsing the npy header as copying a small model's weights.
    """
    if not values.flags.c_contiguous or values.dtype.hasobject:
        return Array(values)
    header = _npy_header(values.dtype.str, values.shape)
    return Array(dtype=str(values.dtype), shape=tuple(values.shape), stype=SType.NUMPY,
                 data=header + values.tobytes())


def array_to_numpy(array: Array) -> np.ndarray:
    """`array.numpy()` (a writable copy), reading the npy header only if it is not the usual one."""
    if array.stype == SType.NUMPY:
        dtype = np.dtype(array.dtype)
        shape = tuple(array.shape)
        if not dtype.hasobject:
            header = _npy_header(dtype.str, shape)
            if array.data.startswith(header):
                values = np.frombuffer(array.data, dtype=dtype, offset=len(header))
                if values.size == math.prod(shape):
                    return values.reshape(shape).copy()
    return array.numpy()


def flatten(arrays: ArrayRecord) -> np.ndarray:
    """All arrays of a record as one float64 vector (for inner products, norms)."""
    parts = [array_to_numpy(a).ravel() for a in arrays.values()]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """Arrays shaped and typed like `like`, filled from a flat vector."""
    out, offset = {}, 0
    for key, array in like.items():
        template = array_to_numpy(array)
        size = template.size
        out[key] = vector[offset:offset + size].reshape(template.shape).astype(template.dtype)
        offset += size
    return ArrayRecord({k: array_from_numpy(np.ascontiguousarray(v)) for k, v in out.items()})
