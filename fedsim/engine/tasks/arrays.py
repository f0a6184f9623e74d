"""The shape of a task whose data is one labelled array set: a training set split over
clients by the scenario's partitioner, and a server test set.

A subclass gives `_load` (train inputs and labels, test inputs and labels) and its
models. The server's validation set (`task.validation_share`) is held out of the training
set, stratified, before it is partitioned; each client keeps the first
`client_val_fraction` of its shard (a task parameter) for federated evaluation. Arrays and
shards are computed once, on the driver, and handed to the workers (`shared`).
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

    def _load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x_train, y_train, x_test, y_test."""
        raise NotImplementedError

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, ...]:
        """Train, test and validation arrays (x, y each); validation held out of train."""
        from sklearn.model_selection import train_test_split

        x_train, y_train, x_test, y_test = self._load()
        x_val, y_val = x_train[:0], y_train[:0]
        if self.spec.validation_share:
            x_train, x_val, y_train, y_val = train_test_split(
                x_train, y_train, test_size=self.spec.validation_share, stratify=y_train,
                random_state=self.seed % 2**32)
        return x_train, y_train, x_test, y_test, x_val, y_val

    @functools.cached_property
    def _shards(self) -> list[np.ndarray]:
        y_train = self._arrays[1]
        return partition_indices(y_train, self.spec.partition, self.num_clients, self.seed)

    def _split(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self._shards[partition_id]
        fraction: float = self.params.client_val_fraction  # type: ignore[attr-defined]
        n_val = math.ceil(fraction * len(shard)) if len(shard) > 1 else 0
        return shard[n_val:], shard[:n_val]

    def _dataset(self, x: np.ndarray, y: np.ndarray) -> Dataset:
        return Dataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))

    def train_data(self, partition_id: int) -> Dataset:
        x, y = self._arrays[:2]
        index = self._split(partition_id)[0]
        return self._dataset(x[index], y[index])

    def test_data(self, partition_id: int | None = None) -> Dataset:
        x, y, x_test, y_test = self._arrays[:4]
        if partition_id is None:
            return self._dataset(x_test, y_test)
        index = self._split(partition_id)[1]
        return self._dataset(x[index], y[index])

    def validation_data(self) -> Dataset | None:
        x_val, y_val = self._arrays[4:]
        return self._dataset(x_val, y_val) if len(y_val) else None
