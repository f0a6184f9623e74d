"""scikit-learn's wine data (178 samples, 13 features, 3 cultivars): ships with scikit-learn,
so nothing is downloaded. Features are standardised with the training set's statistics."""

from __future__ import annotations

import functools

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.task import Dataset, Task, TaskParams
from fedsim.engine.tasks.partition import partition_indices


class WineParams(TaskParams):
    test_fraction: float = Field(default=0.25, gt=0, lt=1, description="server's test share")


class WineTask(Task):
    name = "wine"
    summary = "scikit-learn wine, 13 features, 3 classes (example plug-in)"
    models = ("logreg", "mlp")
    Params = WineParams
    params: WineParams

    def make_model(self) -> nn.Module:
        if self.model_name == "mlp":
            return nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
        return nn.Linear(13, 3)

    @functools.cached_property
    def _data(self) -> tuple[Dataset, Dataset, list[np.ndarray]]:
        from sklearn.datasets import load_wine
        from sklearn.model_selection import train_test_split

        x, y = load_wine(return_X_y=True)
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=self.params.test_fraction, stratify=y, random_state=self.seed % 2**32)
        mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
        train, test = (Dataset(torch.tensor((a - mean) / std, dtype=torch.float32),
                               torch.tensor(b, dtype=torch.int64))
                       for a, b in ((x_train, y_train), (x_test, y_test)))
        shards = partition_indices(y_train, self.spec.partition, self.num_clients, self.seed)
        return train, test, shards

    def train_data(self, partition_id: int) -> Dataset:
        train, _, shards = self._data
        index = torch.as_tensor(shards[partition_id], dtype=torch.int64)
        return Dataset(train.x[index], train.y[index])

    def test_data(self, partition_id: int | None = None) -> Dataset:
        _, test, _ = self._data
        return test if partition_id is None else Dataset(test.x[:0], test.y[:0])


TASKS = (WineTask,)
