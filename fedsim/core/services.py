"""What differs by grid, as services a strategy is handed: node ids, time, gossip, stragglers.

A strategy runs on any Flower `Grid` (the simulator's SimGrid, Flower's own simulation, a
real SuperLink). Node ids are opaque there: on a SuperLink they are random 64-bit integers,
so a strategy that needs a client's index (its data partition) asks the `PartitionMap`,
never does arithmetic on an id. Everything else that depends on the grid goes through
`GridServices`:

- `clock()`: virtual on a simulated grid, the wall clock deployed;
- `gossip(...)`: node-to-node exchanges for decentralized strategies, played over the
  simulated links (time, loss, noise, bytes) or relayed through the server when deployed;
- `count_stragglers(message_ids)`: replies a strategy stopped waiting for; a deployed grid keeps no
  such counter, so there it is a no-op and the run's summary has no straggler count.

`DeployedServices.query(grid)` learns the partition map on any grid by asking every node
for its `partition-id` and `num-partitions` (a `query.partition` message, answered by
`fedsim.core.client.partition_info`). The simulator hands strategies its own implementation
(`fedsim.engine.services.SimServices`), which knows the map without sending anything.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsim.core.clock import Clock, WallClock
from topologies.mixing import OnMissing, mix_active

PARTITION_QUERY = "query.partition"
"""Message type of the question "which partition do you hold?" (see `partition_info`)."""

log = logging.getLogger("fedsim")


class PartitionMapError(RuntimeError):
    """The nodes' partitions do not make one consistent federation."""


class PartitionMap:
    """Which data partition each node holds, and the node that holds each partition."""

    def __init__(self, partitions: Mapping[int, int], num_partitions: int) -> None:
        self.num_partitions = num_partitions
        self._partition = {int(node): int(p) for node, p in partitions.items()}
        self._node = {p: node for node, p in self._partition.items()}
        if len(self._node) != len(self._partition):
            raise PartitionMapError("two nodes report the same partition-id")

    def partition_of(self, node_id: int) -> int:
        return self._partition[int(node_id)]

    def node_of(self, partition: int) -> int:
        return self._node[int(partition)]

    def online(self, node_ids: Iterable[int]) -> set[int]:
        """The partitions of these nodes; a node the map does not know (one that joined
        after it was learnt) holds no partition the run knows, and is left out."""
        return {self._partition[n] for n in node_ids if n in self._partition}

    def in_partition_order(self, node_ids: Iterable[int]) -> list[int]:
        """The given nodes sorted by the partition they hold."""
        return sorted(node_ids, key=self.partition_of)

    @property
    def node_ids(self) -> list[int]:
        """Every known node, in partition order."""
        return [self._node[p] for p in sorted(self._node)]


@dataclass(frozen=True)
class GossipReport:
    """What Q gossip steps cost."""

    duration_s: float
    """Seconds on the grid's clock: the sum over steps of each step's slowest transfer."""
    exchanges: int
    """Neighbour messages sent (Q · Σ_i deg_active(i))."""
    lost: int
    """Of those, erased on the link."""
    bytes_sent: int
    """Payload bytes of all exchanges (what the senders' uplinks carried)."""


class GridServices(ABC):
    """What a strategy needs from a grid beyond Flower's `Grid` API."""

    partitions: PartitionMap

    @abstractmethod
    def clock(self) -> Clock:
        """The clock time-driven strategies wait on."""

    @abstractmethod
    def gossip(self, X: np.ndarray, W: np.ndarray, active: np.ndarray, steps: int,
               round_: int, model_nbytes: int, on_missing: OnMissing = "renormalize",
               float_mask: np.ndarray | None = None) -> tuple[np.ndarray, GossipReport]:
        """`steps` gossip steps of the rows of X (row i: partition i's vector) with W.

        `active[i]` marks the partitions that take part this round; inactive ones neither
        send nor receive and keep their vector.
        """

    @abstractmethod
    def count_stragglers(self, message_ids: Sequence[str]) -> None:
        """Record the replies the strategy stopped waiting for (it never pulls them)."""


class DeployedServices(GridServices):
    """Services on a grid that keeps no simulated world: wall clock, relayed gossip."""

    def __init__(self, partitions: PartitionMap) -> None:
        self.partitions = partitions
        self._clock = WallClock()

    @classmethod
    def query(cls, grid: Grid, timeout_s: float | None = None,
              expected: int | None = None) -> DeployedServices:
        """Ask every connected node which partition it holds.

        Refuses a federation whose nodes disagree on `num-partitions` or report the same
        partition twice; warns when `expected` (the scenario's `clients.count`) differs.
        """
        nodes = sorted(grid.get_node_ids())
        messages = [grid.create_message(RecordDict({"config": ConfigRecord()}),
                                        PARTITION_QUERY, node, "partition-map")
                    for node in nodes]
        replies = list(grid.send_and_receive(messages, timeout=timeout_s))
        return cls(partition_map_from(replies, nodes, expected))

    def clock(self) -> Clock:
        return self._clock

    def gossip(self, X: np.ndarray, W: np.ndarray, active: np.ndarray, steps: int,
               round_: int, model_nbytes: int, on_missing: OnMissing = "renormalize",
               float_mask: np.ndarray | None = None) -> tuple[np.ndarray, GossipReport]:
        """The server relays every exchange: nothing is lost, nothing is noisy, no time."""
        num_nodes = W.shape[0]
        talks = (W > 0) & ~np.eye(num_nodes, dtype=bool) & active[:, None] & active[None, :]
        mixed = np.array(X, dtype=np.float64, copy=True)
        for _ in range(steps):
            mixed = mix_active(mixed, W, active, talks, on_missing, None)
        exchanges = steps * int(talks.sum())
        return mixed, GossipReport(0.0, exchanges, 0, exchanges * model_nbytes)

    def count_stragglers(self, message_ids: Sequence[str]) -> None:
        """A deployed grid keeps no straggler counter."""


def services_for(grid: Grid, given: GridServices | None) -> GridServices:
    """The services the composition root handed the strategy, else learned from the grid
    (a strategy built by hand and run on any Flower grid)."""
    return given if given is not None else DeployedServices.query(grid)


def partition_map_from(replies: Sequence[Message], nodes: Sequence[int],
                       expected: int | None = None) -> PartitionMap:
    """The map from the nodes' answers to `PARTITION_QUERY` (see `DeployedServices.query`)."""
    partitions: dict[int, int] = {}
    totals: set[int] = set()
    for reply in replies:
        if reply.has_error():
            raise PartitionMapError(f"node {reply.metadata.src_node_id} did not say which "
                                    f"partition it holds: {reply.error.reason}")
        answer = reply.content["partition"]
        partitions[reply.metadata.src_node_id] = int(answer["partition-id"])
        totals.add(int(answer["num-partitions"]))
    missing = sorted(set(nodes) - set(partitions))
    if missing:
        raise PartitionMapError(f"{len(missing)} node(s) did not answer the partition query")
    if len(totals) > 1:
        raise PartitionMapError(f"the nodes disagree on num-partitions ({sorted(totals)}): "
                                "start every SuperNode with the same num-partitions")
    total = totals.pop() if totals else 0
    bad = sorted(p for p in partitions.values() if not 0 <= p < total)
    if bad:
        raise PartitionMapError(f"partition-id {bad[0]} is outside 0..{total - 1}")
    if expected is not None and total != expected:
        log.warning("the nodes hold %d partitions but the scenario says clients.count: %d; "
                    "the run uses the nodes' %d", total, expected, total)
    return PartitionMap(partitions, total)
