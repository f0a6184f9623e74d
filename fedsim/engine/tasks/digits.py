"""Handwritten digits (scikit-learn's 8x8 digits): the offline image task.

1,797 images ship with scikit-learn, so this task runs with no download. A
stratified `test_fraction` is the server's test set; the rest is split over
clients by the scenario's partitioner, and each client keeps the first
`client_val_fraction` of its shard for federated evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.task import TaskParams
from fedsim.engine.tasks.arrays import ArraysTask


class DigitsParams(TaskParams):
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    client_val_fraction: float = Field(default=0.1, ge=0, lt=1)


class SmallCNN(nn.Module):
    """Two 3x3 conv layers and two dense layers for 1x8x8 images (about 11k weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsTask(ArraysTask):
    name = "digits"
    summary = "scikit-learn 8x8 digits, 10 classes (cnn | mlp | logreg)"
    models = ("cnn", "mlp", "logreg")
    Params = DigitsParams
    params: DigitsParams
    cuda = True  # torch only: the default client path may train it on a GPU

    def make_model(self) -> nn.Module:
        if self.model_name == "cnn":
            return SmallCNN()
        if self.model_name == "mlp":
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        images, labels = load_digits(return_X_y=True)
        images = (images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        x_train, x_test, y_train, y_test = train_test_split(
            images, labels, test_size=self.params.test_fraction, stratify=labels,
            random_state=self.seed % 2**32)
        return x_train, y_train, x_test, y_test


TASKS = (DigitsTask,)
