"""Split a training set over clients with flwr-datasets' partitioners.

The same partitioners serve simulation and deployment: a device given
`partition-id=i` computes the same indices as the simulator did for node i.
Every partitioner the scenario names (`task.partition.kind`) is flwr-datasets'
own class, built from the spec by `make_partitioner`; fedsim adds no
partitioning logic of its own.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import PartitionSpec

_CLASSES = {"iid": "IidPartitioner", "dirichlet": "DirichletPartitioner",
            "shards": "ShardPartitioner", "inner_dirichlet": "InnerDirichletPartitioner",
            "pathological": "PathologicalPartitioner", "natural_id": "NaturalIdPartitioner",
            "linear": "LinearPartitioner", "square": "SquarePartitioner",
            "exponential": "ExponentialPartitioner"}
"""`task.partition.kind` -> the class of `flwr_datasets.partitioner`."""

_SET_BY_FEDSIM = ("num_partitions", "seed")
"""Constructor arguments fedsim fills in (from clients.count and the scenario's seed)."""


def make_partitioner(spec: PartitionSpec, num_partitions: int, seed: int,
                     label: str = "label") -> Any:
    """flwr-datasets' partitioner of `spec` (no dataset yet); a bad argument is a
    `ScenarioError` naming `task.partition...`. Constructing one loads no data, so
    `fedsim validate` calls this to check the spec."""
    import flwr_datasets.partitioner

    cls = getattr(flwr_datasets.partitioner, _CLASSES[spec.kind])
    accepted = set(inspect.signature(cls).parameters)
    own = {"alpha": spec.alpha, "min_partition_size": spec.min_partition_size,
           "num_shards_per_partition": spec.shards_per_client, "self_balancing": False,
           "partition_by": label, "num_partitions": num_partitions, "seed": seed}
    kwargs = {key: value for key, value in own.items() if key in accepted}
    for key, value in spec.params.items():
        if key not in accepted or key in _SET_BY_FEDSIM:
            allowed = sorted(accepted.difference(_SET_BY_FEDSIM))
            raise ScenarioError(f"task.partition.params.{key}: not an argument of {cls.__name__} "
                                f"(allowed: {', '.join(allowed) or 'none'})")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"task.partition: {cls.__name__}({_shown(kwargs)}) refused its "
                            f"arguments: {exc}") from None


def _shown(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in kwargs.items())


def partition_rows(columns: dict[str, np.ndarray], spec: PartitionSpec, num_partitions: int,
                   seed: int, label: str = "label", shuffle: bool = True) -> list[np.ndarray]:
    """Row numbers of each client's partition, in the order flwr-datasets gives them.

    `columns` are the columns the partitioner reads (the label, a `partition_by`
    column). With `shuffle`, the rows are shuffled with `seed` first, as
    `FederatedDataset(shuffle=True, seed=seed)` does, so client i gets exactly
    the rows of `FederatedDataset(...).load_partition(i)`. A natural partition
    (`natural_id`) has one partition per id: clients take the first
    `num_partitions` of them, and more clients than ids is an error.
    """
    from datasets import Dataset

    rows = len(next(iter(columns.values())))
    if spec.kind != "natural_id" and num_partitions > rows:
        raise ScenarioError(f"clients.count ({num_partitions}) exceeds the {rows} training "
                            "samples: use fewer clients")
    by = spec.params.get("partition_by", label)
    if by not in columns:
        raise ScenarioError(f"task.partition.params.partition_by: no column {by!r} in the data "
                            f"(columns: {', '.join(columns)})")
    partitioner = make_partitioner(spec, num_partitions, seed, label)
    table = Dataset.from_dict({**columns, "__row__": np.arange(rows)})
    partitioner.dataset = table.shuffle(seed=seed) if shuffle else table
    try:  # flwr-datasets splits on the first of these calls
        available = partitioner.num_partitions
        shards = [np.asarray(partitioner.load_partition(i)["__row__"], dtype=np.int64)
                  for i in range(min(available, num_partitions))]
    except ValueError as exc:  # Dirichlet draws that never reach min_partition_size, ...
        raise ScenarioError(f"task.partition: {type(partitioner).__name__} could not split "
                            f"the {rows} rows over {num_partitions} clients: {exc}") from None
    if available < num_partitions:
        raise ScenarioError(f"clients.count ({num_partitions}) exceeds the {available} "
                            f"partitions of {type(partitioner).__name__}: use at most "
                            f"{available} clients")
    return shards


def partition_indices(labels: np.ndarray, spec: PartitionSpec, num_partitions: int,
                      seed: int) -> list[np.ndarray]:
    """Sample indices of each client's shard (sorted), for `labels` of the training set.

    Only `iid` shuffles first (its partitioner cuts contiguous blocks); the
    label-aware partitioners draw their own permutations from the seed.
    """
    shards = partition_rows({"label": np.asarray(labels)}, spec, num_partitions, seed,
                            shuffle=spec.kind == "iid")
    return [np.sort(shard) for shard in shards]
