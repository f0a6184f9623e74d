"""Any dataset flwr-datasets can load: a Hugging Face hub id, or local files.

`dataset` is a hub id (`uoft-cs/cifar10`, `flwrlabs/femnist`), loaded by
`datasets.load_dataset` where the hub is reachable, or the format of local
`files`: csv, json, parquet, imagefolder (a folder of class folders) or npz
(read with `allow_pickle=False`). The `features` column(s) become the model's
input through a `transform`, the `label` column its target. Rows are shuffled
with the seed and split by the scenario's partitioner exactly as
`FederatedDataset(shuffle=True, seed=seed)` with that partitioner splits them,
so client i holds the rows of flwr-datasets' partition i (on a SuperNode with
`partition-id=i` as in simulation). Each client keeps the first
`client_val_fraction` of its partition as held-out data; the server's test set
is `test_split`, or else the union of the clients' held-out data (LEAF's rule).

Data is loaded and partitioned once, on the driver (`shared`). Local files are
read through a temporary cache that is deleted once the arrays are in memory,
so nothing is written beside the user's files or in Hugging Face's cache; hub
downloads use Hugging Face's own cache. Validating a scenario loads nothing.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_object
from fedsim.core.task import Dataset, Task, TaskParams
from fedsim.engine.tasks.models import MODELS, build_model, is_reference, model_factory
from fedsim.engine.tasks.partition import make_partitioner, partition_rows

LOCAL_FORMATS = ("csv", "json", "parquet", "imagefolder", "npz")

LEAF_CHARACTERS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
                   "abcdefghijklmnopqrstuvwxyz}")
"""The 80 characters of LEAF's Shakespeare (`language_utils.ALL_LETTERS`); any other
character is index 80."""

Files = str | list[str] | dict[str, str | list[str]]


class DatasetParams(TaskParams):
    dataset: str = Field(description="a Hugging Face dataset id, or the format of local "
                         f"`files`: {', '.join(LOCAL_FORMATS)}")
    files: Files | None = Field(default=None, description="local file(s), a folder "
                                "(imagefolder), or {split: file(s)}")
    subset: str | None = Field(default=None, description="the hub dataset's configuration")
    train_split: str = "train"
    test_split: str | None = Field(default=None, description="the server's test set; null: "
                                   "the union of the clients' held-out data")
    features: str | list[str] = Field(description="input column, or numeric columns")
    label: str = "label"
    transform: str = Field(default="none", description="image | chars | none (numbers) | an "
                           "installed 'module:attr' (column values -> numpy array)")
    client_val_fraction: float = Field(default=0.1, ge=0, lt=1)
    num_classes: int | None = Field(default=None, ge=2, description="null: from the labels")

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, value: str) -> str:
        if value not in ("image", "chars", "none") and ":" not in value:
            raise ValueError("expected image, chars, none or an installed 'module:attr'")
        return value

    @property
    def local(self) -> bool:
        return self.dataset in LOCAL_FORMATS


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]


class DatasetTask(Task):
    name = "dataset"
    summary = ("a Hugging Face dataset or local files (csv, json, parquet, imagefolder, npz), "
               "any flwr-datasets partitioner")
    models = tuple(MODELS)
    model_references = True
    Params = DatasetParams
    params: DatasetParams
    shared = ("_arrays", "_shards")  # workers import neither `datasets` nor PIL

    @property
    def downloads(self) -> bool:
        return not self.params.local

    def check(self) -> None:
        params = self.params
        if params.local and params.files is None:
            raise ScenarioError(f"task.params.files: required for local {params.dataset} data")
        if not params.local and params.files is not None:
            raise ScenarioError(f"task.params.files: only for local data (dataset: "
                                f"{', '.join(LOCAL_FORMATS)}), not the hub id "
                                f"{params.dataset!r}")
        for path in _paths(params.files):
            if not any(char in path for char in "*?[") and not Path(path).exists():
                raise ScenarioError(f"task.params.files: {path!r} does not exist")
        if params.test_split is None and params.client_val_fraction == 0:
            raise ScenarioError("task.params.test_split: without a test split the server tests "
                                "on the clients' held-out data; set client_val_fraction > 0")
        for ref, field in ((self.model_name, "task.model"), (params.transform,
                                                             "task.params.transform")):
            if is_reference(ref):
                (model_factory if field == "task.model" else _transform_function)(ref)
        make_partitioner(self.spec.partition, self.num_clients, self.seed, params.label)

    def make_model(self) -> nn.Module:
        x, _, _, _, info = self._arrays
        return build_model(self.model_name, tuple(x.shape[1:]), info["num_classes"])

    @functools.cached_property
    def _arrays(self) -> Arrays:
        """Training inputs and labels, the test split's (or None), and the partition columns."""
        splits = [self.params.train_split] + [s for s in [self.params.test_split] if s]
        tables = _load(self.params, splits)
        x, raw, columns = self._convert(tables[0])
        x_test, raw_test = self._convert(tables[1])[:2] if len(tables) > 1 else (None, None)
        if self.params.transform == "chars":
            y, y_test = (None if r is None else _char_indices(r)[:, -1] for r in (raw, raw_test))
            classes = len(LEAF_CHARACTERS) + 1
        else:
            y, y_test = _integer_labels(raw, raw_test)
            classes = int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
        classes = max(classes, self.params.num_classes or 0)
        return x, y, x_test, y_test, {"num_classes": classes, "columns": columns}

    def _convert(self, table: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The inputs, the raw label column and the columns the partitioner reads."""
        params = self.params
        names = [params.features] if isinstance(params.features, str) else params.features
        by = self.spec.partition.params.get("partition_by", params.label)
        for column in {*names, params.label, by}:
            if column not in table:
                field = ("task.partition.params.partition_by" if column == by != params.label
                         else "task.params.label" if column == params.label
                         else "task.params.features")
                raise ScenarioError(f"{field}: no column {column!r} in the data (columns: "
                                    f"{', '.join(table)})")
        x = _transformed(params.transform, [table[name] for name in names])
        raw = np.asarray(table[params.label])
        columns = {params.label: raw, **({by: np.asarray(table[by])} if by != params.label
                                         else {})}
        return x, raw, columns

    @functools.cached_property
    def _shards(self) -> list[np.ndarray]:
        columns = self._arrays[4]["columns"]
        return partition_rows(columns, self.spec.partition, self.num_clients, self.seed,
                              self.params.label)

    def _split(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        shard = self._shards[partition_id]
        fraction = self.params.client_val_fraction
        n_val = math.ceil(fraction * len(shard)) if len(shard) > 1 else 0
        return shard[n_val:], shard[:n_val]

    def _dataset(self, x: np.ndarray, y: np.ndarray) -> Dataset:
        inputs = torch.from_numpy(x)
        if x.dtype == np.uint8:  # images stay uint8 in memory; the model reads [0, 1]
            inputs = inputs.float().div_(255.0)
        return Dataset(inputs, torch.from_numpy(y.astype(np.int64)))

    def train_data(self, partition_id: int) -> Dataset:
        x, y, _, _, _ = self._arrays
        rows = self._split(partition_id)[0]
        return self._dataset(x[rows], y[rows])

    def test_data(self, partition_id: int | None = None) -> Dataset:
        x, y, x_test, y_test, _ = self._arrays
        if partition_id is not None:
            rows = self._split(partition_id)[1]
            return self._dataset(x[rows], y[rows])
        if x_test is not None and y_test is not None:
            return self._dataset(x_test, y_test)
        rows = np.concatenate([self._split(i)[1] for i in range(self.num_clients)])
        return self._dataset(x[rows], y[rows])


def _paths(files: Files | None) -> list[str]:
    if files is None:
        return []
    if isinstance(files, dict):
        return [path for value in files.values() for path in _paths(value)]
    return [files] if isinstance(files, str) else list(files)


def _load(params: DatasetParams, splits: list[str]) -> list[dict[str, Any]]:
    """Each split's columns (name -> values); a split that is not there is one line."""
    if params.dataset == "npz":
        return [_load_npz(params.files, split) for split in splits]
    import datasets

    kwargs: dict[str, Any] = {}
    if params.local:
        files = params.files
        if isinstance(files, str) and Path(files).is_dir():
            kwargs["data_dir"] = files
        else:
            kwargs["data_files"] = files
    else:
        kwargs["name"] = params.subset
    with tempfile.TemporaryDirectory(prefix="fedsim-data-") as cache:
        try:
            loaded = datasets.load_dataset(params.dataset, **kwargs, keep_in_memory=True,
                                           **({"cache_dir": cache} if params.local else {}))
        except Exception as exc:  # the library's own error (no such file, hub unreachable)
            raise ScenarioError(f"task.params.dataset: loading {params.dataset!r} failed: "
                                f"{type(exc).__name__}: {exc}") from None
        missing = [split for split in splits if split not in loaded]
        if missing:
            field = "task.params.test_split" if missing[0] == params.test_split else (
                "task.params.train_split")
            raise ScenarioError(f"{field}: no split {missing[0]!r} (splits: "
                                f"{', '.join(loaded)})")
        return [{name: loaded[split][name] for name in loaded[split].column_names}
                for split in splits]


def _load_npz(files: Files | None, split: str) -> dict[str, Any]:
    path = files.get(split) if isinstance(files, dict) else files if split == "train" else None
    if not isinstance(path, str):
        raise ScenarioError(f"task.params.files: npz data needs one file for split {split!r} "
                            "({train: a.npz, test: b.npz})")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"task.params.files: {path!r} is not a readable .npz of plain "
                            f"arrays: {exc}") from None


def _transformed(transform: str, columns: list[Any]) -> np.ndarray:
    if transform == "image":
        return _images(columns[0])
    if transform == "chars":
        return _char_indices(columns[0])
    if transform == "none":
        arrays = [np.asarray(column, dtype=np.float32) for column in columns]
        if len(arrays) > 1:  # numeric columns side by side: one feature vector per row
            return np.stack(arrays, axis=1)
        return arrays[0]
    return np.asarray(_transform_function(transform)(columns[0]))


def _transform_function(ref: str) -> Any:
    function = installed_object(ref, "task.params.transform")
    if not callable(function):
        raise ScenarioError(f"task.params.transform: {ref!r} is not callable")
    return function


def _images(column: Any) -> np.ndarray:
    """PIL images (or arrays) as uint8 (N, C, H, W), in the first image's colour mode."""
    images = list(column)
    if hasattr(images[0], "convert"):
        mode = images[0].mode if images[0].mode in ("L", "RGB") else "RGB"
        images = [np.asarray(image.convert(mode)) for image in images]
    shapes = {np.shape(image) for image in images}
    if len(shapes) > 1:
        raise ScenarioError(f"task.params.features: images of different sizes {sorted(shapes)}; "
                            "resize them to one size")
    stacked = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    return stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)


def _char_indices(column: Any) -> np.ndarray:
    """Strings (all of one length) as LEAF character indices."""
    index = {char: i for i, char in enumerate(LEAF_CHARACTERS)}
    texts = list(column)
    lengths = {len(text) for text in texts}
    if len(lengths) > 1:
        raise ScenarioError(f"task.params.features: chars needs strings of one length, got "
                            f"lengths {min(lengths)}..{max(lengths)}")
    unknown = len(LEAF_CHARACTERS)
    return np.array([[index.get(char, unknown) for char in text] for text in texts],
                    dtype=np.int64).reshape(len(texts), -1)


def _integer_labels(train: np.ndarray, test: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer labels as they are; any other labels numbered in the sorted order of the
    training set's (a test label the training set lacks is an error)."""
    if np.issubdtype(train.dtype, np.integer) and (
            test is None or np.issubdtype(test.dtype, np.integer)):
        return train.astype(np.int64), None if test is None else test.astype(np.int64)
    names = np.unique(train)
    if test is not None and not np.isin(test, names).all():
        raise ScenarioError("task.params.test_split: the test split has labels the training "
                            f"split lacks: {sorted(set(test.tolist()) - set(names.tolist()))[:5]}")
    encoded = [None if v is None else np.searchsorted(names, v).astype(np.int64)
               for v in (train, test)]
    return encoded[0], encoded[1]


TASKS = (DatasetTask,)
