"""Synthetic images: MNIST-shaped (by default) data generated from the seed, per client.

Each class has a prototype image, a Gaussian blob at a class-specific place
(drawn from the seed); a sample is its class's prototype plus Gaussian pixel
noise, so the task is learnable and its difficulty is set by `noise`. Nothing
is downloaded and nothing is materialised for the whole population: a client's
shard is generated on demand from `rng(seed, "synthetic-images", split, id)`,
so a worker hosting 1 or 10,000 nodes holds only the shards it is using.

The scenario's `partition` sets each client's label distribution without a
global dataset: `iid` draws labels uniformly, `dirichlet` draws the client's
class proportions from Dirichlet(alpha), `shards` gives it `shards_per_client`
classes. Benchmarks (round overhead, scale, logistic regression) use this task.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.seeding import rng
from fedsim.core.task import Dataset, Task, TaskParams
from fedsim.engine.tasks.models import FedAvgCNN


class SyntheticImagesParams(TaskParams):
    num_samples: int = Field(default=600, ge=1, description="training samples per client")
    num_test_samples: int = Field(default=60, ge=0, description="held-out samples per client")
    server_test_samples: int = Field(default=2000, ge=1, description="the server's test set")
    image_shape: tuple[int, int, int] = Field(default=(1, 28, 28), description="C x H x W")
    num_classes: int = Field(default=10, ge=2)
    noise: float = Field(default=1.0, ge=0, description="std of the pixel noise")
    blob_width: float = Field(default=0.15, gt=0, description="blob std / image side")


class SmallImageCNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels, 2x2 max-pool each) and two dense layers.

    For 1x28x28 inputs: 28 -> 14 -> 7, then 32*7*7 -> 64 -> classes (about 106k weights).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 32 * (height // 4) * (width // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SyntheticImagesTask(Task):
    name = "synthetic_images"
    summary = ("seeded class-blob images, MNIST-shaped by default, per-client lazy "
               "(cnn | logreg | fedavg_cnn)")
    models = ("cnn", "logreg", "fedavg_cnn")
    Params = SyntheticImagesParams
    params: SyntheticImagesParams
    cuda = True  # torch only: the default client path may train it on a GPU

    def check(self) -> None:
        if self.spec.partition.kind not in ("iid", "dirichlet", "shards"):
            raise ScenarioError(f"task.partition.kind: {self.spec.partition.kind!r} needs a "
                                "dataset to partition; synthetic_images draws each client's "
                                "labels itself (iid, dirichlet or shards)")

    def make_model(self) -> nn.Module:
        shape, classes = self.params.image_shape, self.params.num_classes
        if self.model_name == "cnn":
            if min(shape[1:]) < 4:
                raise ValueError(f"the cnn needs images of at least 4x4, got {shape}")
            return SmallImageCNN(shape, classes)
        if self.model_name == "fedavg_cnn":  # CIFAR-shaped benchmarks (benchmarks/pfl_cifar.py)
            return FedAvgCNN(shape, classes)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))

    @functools.cached_property
    def _prototypes(self) -> np.ndarray:
        """One blob image per class, shape (classes, C, H, W), peak 1."""
        classes, (channels, height, width) = self.params.num_classes, self.params.image_shape
        gen = rng(self.seed, "synthetic-images", "prototypes")
        centers = gen.uniform(0.2, 0.8, size=(classes, channels, 2))
        rows = (np.arange(height) + 0.5) / height
        cols = (np.arange(width) + 0.5) / width
        width2 = 2 * self.params.blob_width ** 2
        dy = rows[None, None, :, None] - centers[:, :, 0, None, None]
        dx = cols[None, None, None, :] - centers[:, :, 1, None, None]
        return np.exp(-(dy ** 2 + dx ** 2) / width2).astype(np.float32)

    def _class_weights(self, partition_id: int) -> np.ndarray:
        """The client's label distribution, from the scenario's partition kind."""
        spec, classes = self.spec.partition, self.params.num_classes
        gen = rng(self.seed, "synthetic-images", "labels", partition_id)
        if spec.kind == "dirichlet":
            return gen.dirichlet(np.full(classes, spec.alpha))
        weights = np.zeros(classes) if spec.kind == "shards" else np.ones(classes)
        if spec.kind == "shards":
            chosen = gen.choice(classes, size=min(spec.shards_per_client, classes), replace=False)
            weights[chosen] = 1.0
        return weights / weights.sum()

    def _generate(self, split: str, key: int, n: int, weights: np.ndarray | None) -> Dataset:
        gen = rng(self.seed, "synthetic-images", split, key)
        classes = self.params.num_classes
        labels = gen.choice(classes, size=n, p=weights)
        noise = gen.standard_normal((n, *self.params.image_shape), dtype=np.float32)
        x = self._prototypes[labels] + np.float32(self.params.noise) * noise
        return Dataset(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))

    def train_data(self, partition_id: int) -> Dataset:
        return self._generate("train", partition_id, self.params.num_samples,
                              self._class_weights(partition_id))

    def test_data(self, partition_id: int | None = None) -> Dataset:
        if partition_id is None:
            return self._generate("server-test", 0, self.params.server_test_samples, None)
        return self._generate("test", partition_id, self.params.num_test_samples,
                              self._class_weights(partition_id))


TASKS = (SyntheticImagesTask,)
