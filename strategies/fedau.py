"""FedAU: FedAvg with online estimates of 1/p_n as aggregation weights.

Shiqiang Wang and Mingyue Ji, "A Lightweight Method for Tackling Unknown
Participation Statistics in Federated Averaging", ICLR 2024 (arXiv 2306.03401);
official code ``IBM/fedau`` (``main.py``, ``util/util.py``), which settles the details the
paper leaves open: omega_n is the mean of all recorded intervals (no window), 1 before the
first, and this round's interval is recorded only after aggregation.

Under FedAvg, a client that participates with probability p_n pulls the model
towards the optimum of sum_n p_n omega_n F_n, not of (1/N) sum_n F_n. FedAU
sets omega_n ~ 1/p_n, estimated online as the mean interval between a client's
participations (each interval cut off at K rounds), and divides the weighted
sum of updates by the total number of clients N. Participation itself is
exogenous: in fedsim it comes from the devices' availability models
(`clients.devices[].availability`: bernoulli / markov / cyclic, each with
`p_per_device` or FedAU's `label_correlation`). The client half is plain local
SGD (the default `train` action); the server recovers Delta_n = y_n - x from
the model it sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.services import GridServices, PartitionMap, services_for
from strategies import BuildContext, StrategyInfo

NO_CUTOFF = 100_000
"""The official code's K for "no cutoff"."""


class IntervalEstimator:
    """FedAU's online estimate omega_n of 1/p_n, per node id (paper Algorithm 2).

    Every round, every node's counter c_n advances by one. When node n
    participates, or c_n reaches the cutoff K, the interval c_n is recorded:
    omega_n becomes the mean of all recorded intervals and c_n restarts. omega_n
    is 1 until the first interval is recorded. Under Bernoulli(p) participation
    omega_n -> E[min(Geom(p), K)] = (1 - (1 - p)^K) / p, i.e. 1/p for large K.

    Nodes are added when first seen, with the state that all the rounds they
    missed would have given them, so a node's counter has advanced in every
    round whether or not the server knew its id.
    """

    def __init__(self, cutoff: int = NO_CUTOFF) -> None:
        self.cutoff = cutoff
        self.rounds = 0
        self._index: dict[int, int] = {}
        self._count = np.zeros(0, dtype=np.int64)  # c_n: rounds since the last boundary
        self._recorded = np.zeros(0, dtype=np.int64)  # M_n: intervals recorded
        self._omega = np.ones(0)  # mean recorded interval (1 before the first)

    def weights(self, node_ids: Iterable[int]) -> np.ndarray:
        """omega_n of these nodes, from the intervals recorded so far."""
        rows = self._rows(node_ids)  # first: it may grow the arrays
        return self._omega[rows]

    def observe(self, participants: Iterable[int]) -> None:
        """Close one round: advance every counter, record the intervals that end now."""
        rows = self._rows(participants)
        self._count += 1
        ends = self._count >= self.cutoff
        ends[rows] = True
        c, m = self._count[ends], self._recorded[ends]
        self._omega[ends] = np.where(m > 0, (m * self._omega[ends] + c) / (m + 1), c)
        self._recorded[ends] += 1
        self._count[ends] = 0
        self.rounds += 1

    def by_node(self) -> dict[int, float]:
        """omega_n of every node seen so far."""
        return {node: float(self._omega[row]) for node, row in self._index.items()}

    def summary(self, num_nodes: int) -> tuple[float, float]:
        """Mean and max of omega over `num_nodes` nodes (those not seen yet included)."""
        unseen = max(num_nodes - len(self._index), 0)
        omega_unseen = self._absent_state()[2]
        total = float(self._omega.sum()) + unseen * omega_unseen
        largest = max(float(self._omega.max(initial=0.0)), omega_unseen if unseen else 0.0)
        return total / max(num_nodes, 1), largest

    def _absent_state(self) -> tuple[int, int, float]:
        """(c, M, omega) of a node absent in every round so far: intervals of K each."""
        recorded = self.rounds // self.cutoff
        return self.rounds % self.cutoff, recorded, float(self.cutoff) if recorded else 1.0

    def _rows(self, node_ids: Iterable[int]) -> np.ndarray:
        node_ids = list(node_ids)
        new = [n for n in dict.fromkeys(node_ids) if n not in self._index]
        if new:
            c, m, omega = self._absent_state()
            for node in new:
                self._index[node] = len(self._index)
            self._count = np.append(self._count, np.full(len(new), c, dtype=np.int64))
            self._recorded = np.append(self._recorded, np.full(len(new), m, dtype=np.int64))
            self._omega = np.append(self._omega, np.full(len(new), omega))
        return np.array([self._index[n] for n in node_ids], dtype=np.int64)


class FedAU(FedAvg):
    """FedAU (Wang & Ji, ICLR 2024): x <- x + (gamma / N) sum_{n in S_t} omega_n Delta_n.

    S_t is the set of nodes whose training replies arrive in round t (online,
    sampled, not lost); omega_n comes from the intervals recorded before round
    t, and round t's intervals are recorded after aggregation (Algorithm 2's
    ordering). Counters of all N nodes advance every round, including rounds in
    which nobody is online (then no message is sent and the model stays).
    Clients are weighted equally (objective (1/N) sum_n F_n), as in the paper.

    Parameters
    ----------
    num_nodes : int
        N, the total number of clients (the normaliser; not the number online).
    global_lr : float (default: 1.0)
        gamma, the server learning rate.
    cutoff : int (default: 100000, i.e. none)
        K: an interval is recorded after K rounds without participation. The
        paper's second variant uses K = 50.
    estimate_includes_current_round : bool (default: False)
        Ablation only: record round t's intervals before aggregating, so
        omega_n depends on round t's own participation (breaks Algorithm 2).
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, ...
        As in Flower's FedAvg (sampling among the online nodes). When fewer
        than the minimum are online the round has no participants instead of
        waiting: in virtual time nobody comes online while the server waits.
    services : GridServices | None
        The grid's services (the runner's); None: asked of the grid at the first round.

    Node ids are opaque: Flower's sampling draws from the online nodes listed in partition
    order, and replies are summed in the order the messages were sent, so a run on a
    SuperLink (random ids, replies in any order) gives the simulator's numbers.
    """

    def __init__(self, num_nodes: int, global_lr: float = 1.0, cutoff: int = NO_CUTOFF,
                 estimate_includes_current_round: bool = False,
                 services: GridServices | None = None, **fedavg_kwargs: object) -> None:
        super().__init__(**fedavg_kwargs)  # type: ignore[arg-type]
        self.num_nodes = num_nodes
        self.global_lr = global_lr
        self.estimate_includes_current_round = estimate_includes_current_round
        self.estimator = IntervalEstimator(cutoff)
        self._sent: ArrayRecord | None = None
        self.services = services  # the grid's, not state: never checkpointed
        self._send_order: dict[int, int] = {}  # node -> position in the last configure

    def partition_map(self, grid: Grid) -> PartitionMap:
        """Which partition each node holds (asks the grid once if no services were given)."""
        if self.services is None:
            self.services = services_for(grid, None)
        return self.services.partitions

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling among the online nodes; remember x to recover each Delta_n."""
        self._sent = arrays
        if not self._enough_online(grid, self.min_train_nodes):
            return []
        return self._remember_order(super().configure_train(
            server_round, arrays, config, self._sampling_grid(grid)))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self._enough_online(grid, self.min_evaluate_nodes):
            return []
        return self._remember_order(super().configure_evaluate(
            server_round, arrays, config, self._sampling_grid(grid)))

    def _sampling_grid(self, grid: Grid) -> Grid:
        """`grid` as Flower's sampling should see it: online nodes in partition order."""
        return cast(Grid, _InPartitionOrder(grid, self.partition_map(grid)))

    def _remember_order(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        self._send_order = {m.metadata.dst_node_id: k for k, m in enumerate(messages)}
        return messages

    def _in_send_order(self, replies: Iterable[Message]) -> list[Message]:
        """Replies in the order their messages were sent, however they arrived."""
        last = len(self._send_order)
        return sorted(replies, key=lambda m: self._send_order.get(m.metadata.src_node_id, last))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return super().aggregate_evaluate(server_round, self._in_send_order(replies))

    def _enough_online(self, grid: Grid, minimum: int) -> bool:
        online = len(list(grid.get_node_ids()))
        return online > 0 and online >= max(minimum, self.min_available_nodes)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """x + (gamma/N) sum omega_n (y_n - x), then record this round's intervals."""
        valid, _ = self._check_and_log_replies(self._in_send_order(replies), is_train=True)
        participants = [reply.metadata.src_node_id for reply in valid]
        if self.estimate_includes_current_round:
            self.estimator.observe(participants)
        omega = self.estimator.weights(participants)
        if not self.estimate_includes_current_round:
            self.estimator.observe(participants)
        arrays, metrics = None, MetricRecord()
        if valid:
            contents = [reply.content for reply in valid]
            assert self._sent is not None
            arrays = _weighted_step(self._sent, [next(iter(c.array_records.values()))
                                                 for c in contents],
                                    self.global_lr * omega / self.num_nodes)
            metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        mean, largest = self.estimator.summary(self.num_nodes)
        metrics["fedau_weight_mean"] = mean
        metrics["fedau_weight_max"] = largest
        return arrays, metrics


class _InPartitionOrder:
    """`grid` with its online nodes listed in partition order, for Flower's sampling
    (`random.sample` of that list): the same seed then picks the same partitions, in the same
    order, on any grid. On a SimGrid the list is already in that order."""

    def __init__(self, grid: Grid, partitions: PartitionMap) -> None:
        self._grid, self._partitions = grid, partitions

    def get_node_ids(self) -> list[int]:
        return self._partitions.in_partition_order(self._grid.get_node_ids())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def _weighted_step(x: ArrayRecord, ys: list[ArrayRecord], coef: np.ndarray) -> ArrayRecord:
    """x + sum_n coef_n (y_n - x), as (1 - sum coef) x + sum_n coef_n y_n in float64.

    This form gives exactly FedAvg's arithmetic when coef_n = 1/|S| (full
    participation, omega = 1, gamma = 1).
    """
    out = {}
    keep = 1.0 - float(coef.sum())
    for key, array in x.items():
        acc = array.numpy().astype(np.float64) * keep
        for y, c in zip(ys, coef, strict=True):
            acc += y[key].numpy() * float(c)
        out[key] = Array(acc.astype(array.numpy().dtype, copy=False))
    return ArrayRecord(out)


class FedAUParams(BaseModel):
    """Hyperparameters of FedAU (defaults: IBM/fedau `config.py`)."""

    model_config = ConfigDict(extra="forbid")

    global_lr: float = Field(default=1.0, gt=0, description="gamma")
    cutoff: int = Field(default=NO_CUTOFF, ge=1, description="K, interval cutoff in rounds")
    estimate_includes_current_round: bool = Field(
        default=False, description="ablation: use round t's interval in round t (wrong)")
    fraction_train: float = Field(default=1.0, gt=0, le=1)
    fraction_evaluate: float = Field(default=0.0, ge=0, le=1)
    min_train_nodes: int = Field(default=1, ge=1)
    min_evaluate_nodes: int = Field(default=1, ge=0)
    min_available_nodes: int = Field(default=1, ge=1)


def build(params: FedAUParams, context: BuildContext) -> FedAU:
    return FedAU(num_nodes=context.num_nodes, services=context.services, **params.model_dump())


STRATEGIES = (
    StrategyInfo("fedau", "FedAU: FedAvg weighted by online estimates of 1/p_n (Wang & Ji 2024)",
                 FedAUParams, build),
)
