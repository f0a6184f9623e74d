"""MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", arXiv:2011.14439):
ten 1-D digit templates, padded, scaled, sheared, translated and noised into 40-sample
signals. Small enough for CPUs, hard enough that models differ the way they do on real
images: its authors report a linear model well behind an MLP, itself behind a small CNN,
trained centrally.

The data is the package's offline generator, `mnist1d.data.make_dataset()` with its
default arguments (4,000 training and 1,000 test signals, its own seed 42): never its
downloading helper, and no file is written. It is regenerated deterministically in each
process that needs it (the driver; workers get it through `shared`), once per process
(about 5 s on a busy core): a cache on disk would be a pickle (mnist1d's own format) or a
file outside the run directory, and neither is worth 5 s. The generator seeds Python's and
NumPy's global generators; their states are restored around it.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.task import TaskParams
from fedsim.engine.tasks.arrays import ArraysTask
from fedsim.engine.tasks.models import logreg, mlp


class Mnist1dParams(TaskParams):
    client_val_fraction: float = Field(default=0.1, ge=0, lt=1)


class Mnist1dCNN(nn.Module):
    """The paper's small CNN (the `ConvBase` of the mnist1d package): three 1-D convolutions
    of 25 channels (kernel 5, then 3, 3; stride 2 each) and a linear layer (5.6k weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(125, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@functools.cache
def generate() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D's default dataset, float32 signals of shape (N, 1, 40), int64 labels."""
    from mnist1d.data import make_dataset

    saved = random.getstate(), np.random.get_state()
    try:
        data = make_dataset()
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    signals = [np.asarray(data[key], dtype=np.float32)[:, None, :] for key in ("x", "x_test")]
    labels = [np.asarray(data[key], dtype=np.int64) for key in ("y", "y_test")]
    return signals[0], labels[0], signals[1], labels[1]


class Mnist1dTask(ArraysTask):
    name = "mnist1d"
    summary = "MNIST-1D, 40-sample 1-D digits generated offline, 10 classes (mlp | cnn | logreg)"
    models = ("mlp", "cnn", "logreg")
    Params = Mnist1dParams
    params: Mnist1dParams

    def make_model(self) -> nn.Module:
        if self.model_name == "cnn":
            return Mnist1dCNN()
        return (mlp if self.model_name == "mlp" else logreg)((1, 40), 10)

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return generate()


TASKS = (Mnist1dTask,)
