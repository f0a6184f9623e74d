"""The shape of a task whose data is one labelled array set: a training set split over
clients by the scenario's partitioner, and a server test set.

A subclass gives `_arrays` (train inputs and labels, test inputs and labels) and its
models; each client keeps the first `client_val_fraction` of its shard (a task
parameter) for federated evaluation. Arrays and shards are computed once, on the driver,
and handed to the workers (`shared`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from fedsim.core.task import Dataset, Task
from fedsim.engine.tasks.partition import partition_indices


class ArraysTask(Task):
    shared = ("_arrays", "_shards")  # workers import no data library

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x_train, y_train, x_test, y_test."""
        raise NotImplementedError

    @functools.cached_property
    def _shards(self) -> list[np.ndarray]:
        _, y_train, _, _ = self._arrays
        return partition_indices(y_train, self.spec.partition, self.num_clients, self.seed)

    def _split(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self._shards[partition_id]
        fraction: float = self.params.client_val_fraction  # type: ignore[attr-defined]
        n_val = math.ceil(fraction * len(shard)) if len(shard) > 1 else 0
        return shard[n_val:], shard[:n_val]

    def _dataset(self, x: np.ndarray, y: np.ndarray) -> Dataset:
        return Dataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

    def train_data(self, partition_id: int) -> Dataset:
        x, y, _, _ = self._arrays
        index = self._split(partition_id)[0]
        return self._dataset(x[index], y[index])

    def test_data(self, partition_id: int | None = None) -> Dataset:
        x, y, x_test, y_test = self._arrays
        if partition_id is None:
            return self._dataset(x_test, y_test)
        index = self._split(partition_id)[1]
        return self._dataset(x[index], y[index])
