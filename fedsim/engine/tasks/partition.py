"""Split a labelled training set over clients with flwr-datasets' partitioners.

The same partitioners serve simulation and deployment: a device given
`partition-id=i` computes the same indices as the simulator did for node i.
"""

from __future__ import annotations

import numpy as np

from fedsim.core.schema import PartitionSpec


def partition_indices(labels: np.ndarray, spec: PartitionSpec, num_partitions: int,
                      seed: int) -> list[np.ndarray]:
    """Sample indices of each client's shard (sorted), for `labels` of the training set."""
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        ShardPartitioner,
    )

    if num_partitions > len(labels):
        raise ValueError(f"clients.count ({num_partitions}) exceeds the {len(labels)} "
                         "training samples: use fewer clients")
    table = Dataset.from_dict({"index": np.arange(len(labels)), "label": labels})
    if spec.kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_partitions)
        table = table.shuffle(seed=seed)
    elif spec.kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=spec.alpha,
            min_partition_size=spec.min_partition_size, self_balancing=False, seed=seed)
    else:
        partitioner = ShardPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_shards_per_partition=spec.shards_per_client, seed=seed)
    partitioner.dataset = table
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64))
            for i in range(num_partitions)]
