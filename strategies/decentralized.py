"""Decentralized learning over a graph: D-PSGD/DFedAvg, DFedSAM and DFedSAM-MGS.

Shi, Shen, Wei, Sun, Yuan, Wang, Tao, "Improving the Model Consistency of Decentralized
Federated Learning", ICML 2023 (arXiv 2302.04083). No official code was found; public
reimplementations (``EricLoong/da-dpfl``) aggregate-then-train with row-stochastic
sample-weighted neighbourhood averaging. We deviate from them and follow the paper (train,
then gossip) with Metropolis–Hastings weights.

One round, for every node i that is online and replies::

    y = x_i;  K times: g = ∇F_i(y; ξ),  e = ρ g/‖g‖,  y ← y − η ∇F_i(y + e; ξ)
    z_i = y
    Q times:  z_i ← Σ_{j ∈ N(i) ∪ {i}} w_ij z_j            (synchronous, over the links)
    x_i ← z_i

ρ = 0 makes the local step plain SGD: that is DFedAvg (D-PSGD with K = 1 local step,
``training.local_steps: 1``). Q > 1 is DFedSAM-MGS; W^Q has spectral gap 1 − λ^Q.

How it is simulated. There is no server in the algorithm; here the server process only
*holds* each node's model x_i between rounds and plays the network: it sends node i its
own model in a ``train.dfedsam`` message, the node does its K local steps and replies
z_i, and the server runs the Q gossip steps through the grid services
(``GridServices.gossip``): on the simulator over the node-to-node links
(:mod:`fedsim.engine.links`: sender uplink time, noise and erasure; Q·deg(i) model transfers
counted per node and round), deployed relayed by the server. Graph vertex i is the node that
holds data partition i, on every grid (node ids are opaque). The train message and its reply
are therefore a relay
artifact: SimGrid counts them as ordinary server traffic (one model down and one up per
node and round) on top of the gossip bytes, which are also reported on their own as
``gossip_bytes``.

- **Availability.** Nodes not online this round, or whose reply is lost or late (after
  ``deadline_s``), keep their model and take no part in gossip; their neighbours treat
  them as lost messages and renormalize their weights (``on_missing``, see
  :mod:`topologies.mixing`).
- **Topologies.** ``scenario.topology``; time-varying ones (``random_matching``,
  ``resample``) draw each round's graph with :func:`topologies.graph_for_round`. A fixed
  topology must be connected (else :class:`topologies.TopologyError` at build time). On
  the complete graph W is exactly 11ᵀ/m (what Metropolis–Hastings gives, without the
  rounding of its diagonal), so one gossip step is exact averaging and all nodes agree
  bit for bit.
- **Metrics** (per round, in the train metrics, so recorded as ``train_<name>``):
  ``consensus_distance`` (1/m)Σ‖x_i − x̄‖² over all nodes; ``spectral_gap`` 1 − λ(W) and
  ``spectral_gap_q`` 1 − λ(W)^Q of the round's W; ``gossip_time_s``, ``gossip_exchanges``,
  ``gossip_lost``, ``gossip_bytes``; and, every ``node_eval_every`` rounds and in the
  last, each node model evaluated on the server's test set: ``node_<metric>_mean`` and
  ``node_<metric>_worst`` (lowest accuracy, highest loss/distance). With more than
  ``node_eval_max`` nodes, a seeded random subset of that size is evaluated.
  The runner's own ``accuracy``/``loss`` are those of the average model x̄ = (1/m)Σ x_i,
  the quantity the theory bounds (x̄ is passed to ``evaluate_fn`` and returned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.codec import (
    array_from_numpy,
    array_to_numpy,
    arrays_nbytes,
    arrays_to_model,
    flatten,
    model_to_arrays,
    unflatten,
)
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.loop import OwnLoop, StepOutcome
from fedsim.core.seeding import rng
from fedsim.core.services import GridServices, services_for
from fedsim.core.task import Dataset, Task
from fedsim.core.training import TrainConfig, local_batches, make_optimizer
from strategies import BuildContext, StrategyInfo
from topologies import (
    MixingKind,
    TopologySpec,
    build_graph,
    check_mixing_matrix,
    consensus_distance,
    graph_for_round,
    mixing_lambda,
    mixing_matrix,
)
from topologies.mixing import OnMissing

MESSAGE_TYPE = "train.dfedsam"
RHO_KEY = "sam-rho"
"""Train ConfigRecord key of the SAM radius ρ."""


# ---------------------------------------------------------------------------------------
# Client half: K local SAM steps


def local_sam(model: torch.nn.Module, task: Task, data: Dataset, config: TrainConfig,
              rho: float) -> tuple[int, float]:
    """K local SAM steps (Foret et al.); returns (gradient evaluations, mean loss).

    Each step: g = ∇F(y; ξ), e = ρ g/‖g‖₂ (global norm over all parameters), then the
    base SGD step (with its momentum and weight decay) applied at y with ∇F(y + e; ξ),
    on the same minibatch ξ. With ρ = 0 there is no perturbation and no second pass:
    exactly :func:`fedsim.core.training.local_sgd`'s step. The loss reported is at y.
    """
    model.train()
    optimizer = make_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    evaluations, samples, loss_sum = 0, 0, 0.0
    for x, y in local_batches(data, config):
        optimizer.zero_grad()
        loss = task.loss(model, x, y)
        loss.backward()
        evaluations += len(x)
        if rho > 0:
            evaluations += len(x) * _sam_perturbed_gradient(model, task, params, x, y, rho)
        optimizer.step()
        samples += len(x)
        loss_sum += loss.item() * len(x)
    return evaluations, loss_sum / max(samples, 1)


def _sam_perturbed_gradient(model: torch.nn.Module, task: Task, params: list[torch.Tensor],
                            x: torch.Tensor, y: torch.Tensor, rho: float) -> int:
    """Replace the gradients at y by those at y + ρ g/‖g‖; returns the extra passes (0/1)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads)) if grads else 0.0
    if not grads or float(norm) == 0.0:
        return 0  # at a stationary point the perturbation direction is undefined
    with torch.no_grad():
        shifts = [None if p.grad is None else rho * p.grad / norm for p in params]
        for p, shift in zip(params, shifts, strict=True):
            if shift is not None:
                p.add_(shift)
    model.zero_grad()
    task.loss(model, x, y).backward()
    with torch.no_grad():
        for p, shift in zip(params, shifts, strict=True):
            if shift is not None:
                p.sub_(shift)
    return 1


def train_dfedsam(message: Message, context: Context) -> Message:
    """A node's local training: K SAM steps (ρ from the config) from its own model x_i."""
    task, partition = client_task(context)
    model = task.model_with(message.content["arrays"])
    record = message.content["config"]
    data = task.train_data(partition)
    work, loss = local_sam(model, task, data, TrainConfig.from_record(record),
                           float(record.get(RHO_KEY, 0.0)))
    return reply(message, model_to_arrays(model),
                 **{"num-examples": len(data), "train_loss": loss, WORK_KEY: work})


# ---------------------------------------------------------------------------------------
# Server half: one model per node, gossip over the links


class DFedSAM(OwnLoop, FedAvg):
    """DFedSAM (Shi et al., ICML 2023): local SAM steps, then Q gossip steps with W.

    Parameters
    ----------
    topology : TopologySpec
        The communication graph (``scenario.topology``).
    num_nodes : int
        m, the number of nodes (graph vertex i is the node holding partition i, on every
        grid).
    task : Task
        For evaluating each node's model on the server's test set.
    seed : int (default: 0)
        Seeds random topologies and the node-evaluation subset.
    rho : float (default: 0.01)
        SAM radius ρ; 0 gives plain local SGD (DFedAvg / D-PSGD).
    gossip_steps : int (default: 1)
        Q gossip steps per round; Q > 1 is DFedSAM-MGS.
    mixing : "metropolis_hastings" | "max_degree" (default: "metropolis_hastings")
        How W is built from the graph (both symmetric and doubly stochastic).
    on_missing : "renormalize" | "self_weight" (default: "renormalize")
        What a node does with the weight of a neighbour whose message did not arrive
        (lost or inactive): renormalize over what arrived, or keep it on itself.
    node_eval_every : int (default: 1)
        Evaluate the individual node models every this many rounds (and in the last);
        0 = only in the last round.
    node_eval_max : int (default: 64)
        Evaluate at most this many node models (a seeded random subset per round).
    services : GridServices | None (default: None)
        The grid's services (partition map, gossip); None: asked of the grid in `prepare`.
        Not state: never checkpointed.
    """

    def __init__(self, topology: TopologySpec, num_nodes: int, task: Task, seed: int = 0,
                 rho: float = 0.01, gossip_steps: int = 1,
                 mixing: MixingKind = "metropolis_hastings",
                 on_missing: OnMissing = "renormalize", node_eval_every: int = 1,
                 node_eval_max: int = 64, services: GridServices | None = None) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
                         min_evaluate_nodes=1, min_available_nodes=1)
        self.topology, self.num_nodes, self.task, self.seed = topology, num_nodes, task, seed
        self.rho, self.gossip_steps, self.mixing = rho, gossip_steps, mixing
        self.on_missing: OnMissing = on_missing
        self.node_eval_every, self.node_eval_max = node_eval_every, node_eval_max
        self.services = services
        if topology.time_varying == "none":
            self._fixed_W: np.ndarray | None = self._mixing_for(
                build_graph(topology, num_nodes, seed))
            check_mixing_matrix(self._fixed_W)
        else:
            build_graph(topology, num_nodes, seed)  # the base graph must be connected
            self._fixed_W = None
        self._fixed_lambda: float | None = None  # λ(W) of the fixed W, once computed
        self._round_arrays: ArrayRecord | None = None
        self._round_metrics: dict[str, float] = {}
        self._X = np.zeros((0, 0))  # row i: node i's model x_i, flat

    state_fields = ("_X",)  # with the loop's round count, all a resumed run needs

    def summary(self) -> None:
        """Flower logs a strategy's summary at start; this one has no FedAvg fields to show."""

    # ------------------------------------------------------------ the round loop

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        """The run's context; the runner's `evaluate_fn(t, x̄)` follows every round."""
        self._grid, self._timeout, self._num_rounds = grid, timeout, num_rounds
        if self.services is None:
            self.services = services_for(grid, None)
        self._node_id_list = self._node_ids(self.services)
        self._vertex_of = {node_id: i for i, node_id in enumerate(self._node_id_list)}
        self._template = initial_arrays
        self._model_nbytes = arrays_nbytes(initial_arrays)
        self._float_mask = _float_mask(initial_arrays)
        self._config = ConfigRecord(dict(config))
        self._config[RHO_KEY] = float(self.rho)

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        self._X = np.tile(flatten(initial_arrays), (self.num_nodes, 1))

    def step(self, n: int) -> StepOutcome:
        """Round n: online nodes train locally, then Q gossip steps; returns x̄."""
        grid, node_ids, template, config = (self._grid, self._node_id_list, self._template,
                                            self._config)
        config["server-round"] = n
        available = set(grid.get_node_ids())
        online = [i for i, node_id in enumerate(node_ids) if node_id in available]
        messages = [Message(RecordDict({"arrays": arrays, "config": config}),
                            node_ids[i], MESSAGE_TYPE, group_id=str(n))
                    for i, arrays in zip(online, _node_arrays(self._X, online, template),
                                         strict=True)]
        replies = sorted((r for r in grid.send_and_receive(messages, timeout=self._timeout)
                          if not r.has_error()),
                         key=lambda r: self._vertex_of[r.metadata.src_node_id])
        Z, active = self._X.copy(), np.zeros(self.num_nodes, dtype=bool)
        for r in replies:
            i = self._vertex_of[r.metadata.src_node_id]
            Z[i], active[i] = flatten(r.content["arrays"]), True
        W = self._round_W(n)
        assert self.services is not None  # set by prepare
        X, report = self.services.gossip(Z, W, active, self.gossip_steps, n,
                                         self._model_nbytes, self.on_missing, self._float_mask)
        self._X = X
        lam = self._round_lambda(W)
        self._round_arrays = unflatten(_network_average(X), template)
        self._round_metrics = {
            "consensus_distance": consensus_distance(X),
            "spectral_gap": 1.0 - lam, "spectral_gap_q": 1.0 - lam ** self.gossip_steps,
            "gossip_time_s": report.duration_s, "gossip_exchanges": report.exchanges,
            "gossip_lost": report.lost, "gossip_bytes": report.bytes_sent,
            "active_nodes": int(active.sum()),
            **self._node_metrics(X, template, n, self._num_rounds),
        }
        arrays, metrics = self.aggregate_train(n, replies)
        assert arrays is not None
        return arrays, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The round's average model x̄, and the nodes' train metrics plus the network's."""
        contents = [r.content for r in replies if not r.has_error()]
        metrics = (self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents
                   else MetricRecord())
        metrics.update(self._round_metrics)
        return self._round_arrays, metrics

    # ------------------------------------------------------------ helpers

    def _node_ids(self, services: GridServices) -> list[int]:
        """Node ids in graph-vertex order: vertex i is the node holding partition i."""
        partitions = services.partitions
        ids = partitions.node_ids
        if partitions.num_partitions != self.num_nodes or len(ids) != self.num_nodes:
            raise ScenarioError(f"clients.count: the topology has {self.num_nodes} nodes but "
                                f"the grid has {len(ids)} nodes holding "
                                f"{partitions.num_partitions} partitions; they must match")
        return ids

    def _mixing_for(self, graph: Any) -> np.ndarray:
        m = graph.number_of_nodes()
        if graph.number_of_edges() == m * (m - 1) // 2:
            return np.full((m, m), 1.0 / m)  # what both kinds give on K_m, without rounding
        return mixing_matrix(graph, self.mixing)

    def _round_W(self, server_round: int) -> np.ndarray:
        if self._fixed_W is not None:
            return self._fixed_W
        return self._mixing_for(
            graph_for_round(self.topology, self.num_nodes, self.seed, server_round))

    def _round_lambda(self, W: np.ndarray) -> float:
        """λ(W); an eigen-decomposition of the m x m W, so done once for a fixed topology."""
        if self._fixed_W is None:
            return mixing_lambda(W)
        if self._fixed_lambda is None:
            self._fixed_lambda = mixing_lambda(self._fixed_W)
        return self._fixed_lambda

    def _node_metrics(self, X: np.ndarray, template: ArrayRecord, server_round: int,
                      num_rounds: int) -> dict[str, float]:
        """Mean and worst of each node model's metrics on the server's test set."""
        every = self.node_eval_every
        if server_round != num_rounds and (every == 0 or server_round % every):
            return {}
        nodes = np.arange(self.num_nodes)
        if self.num_nodes > self.node_eval_max:
            nodes = np.sort(rng(self.seed, "node-eval", server_round).choice(
                self.num_nodes, self.node_eval_max, replace=False))
        model, test = self.task.make_model(), self.task.test_data(None)
        per_node = [self.task.evaluate(arrays_to_model(model, unflatten(X[i], template)), test)
                    for i in nodes]
        out: dict[str, float] = {}
        for key in per_node[0]:
            values = np.array([m[key] for m in per_node])
            out[f"node_{key}_mean"] = float(values.mean())
            out[f"node_{key}_worst"] = float(values.min() if key == "accuracy" else values.max())
        return out


class DPSGD(DFedSAM):
    """D-PSGD / DFedAvg (Lian et al., NeurIPS 2017; Sun et al., 2022): DFedSAM with ρ = 0.

    K local SGD steps, then one gossip step. With ``training.local_steps: 1`` this is
    D-PSGD; with more local steps, DFedAvg. Parameters as :class:`DFedSAM`, with
    ``rho`` fixed to 0.
    """

    def __init__(self, topology: TopologySpec, num_nodes: int, task: Task, seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(topology, num_nodes, task, seed, rho=0.0, **kwargs)


class DFedSAMMGS(DFedSAM):
    """DFedSAM-MGS (Shi et al., ICML 2023): DFedSAM with Q > 1 gossip steps (default 4).

    Parameters as :class:`DFedSAM`, with ``gossip_steps`` defaulting to 4.
    """

    def __init__(self, topology: TopologySpec, num_nodes: int, task: Task, seed: int = 0,
                 gossip_steps: int = 4, **kwargs: Any) -> None:
        super().__init__(topology, num_nodes, task, seed, gossip_steps=gossip_steps, **kwargs)


# ---------------------------------------------------------------------------------------
# Parameters and registration


class _GossipParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gossip_steps: int = Field(default=1, ge=1, le=100_000, description="Q gossip steps per round")
    mixing: Literal["metropolis_hastings", "max_degree"] = "metropolis_hastings"
    on_missing: Literal["renormalize", "self_weight"] = "renormalize"
    node_eval_every: int = Field(default=1, ge=0, description="0 = last round only")
    node_eval_max: int = Field(default=64, ge=1)


class DPSGDParams(_GossipParams):
    pass


class DFedSAMParams(_GossipParams):
    rho: float = Field(default=0.01, ge=0, description="SAM radius; 0 = plain SGD")


class DFedSAMMGSParams(DFedSAMParams):
    gossip_steps: int = Field(default=4, ge=1, le=100_000, description="Q gossip steps per round")


def _builder(cls: type[DFedSAM], name: str) -> Callable[[BaseModel, BuildContext], DFedSAM]:
    def build(params: BaseModel, ctx: BuildContext) -> DFedSAM:
        topology = ctx.scenario.topology
        if topology is None:
            raise ScenarioError(
                f"topology: strategy {name!r} is decentralized and needs a `topology` "
                "section, e.g. `topology: {name: ring}`")
        return cls(topology, ctx.num_nodes, ctx.task, ctx.scenario.seed,
                   services=ctx.services, **params.model_dump())

    return build


def _float_mask(arrays: ArrayRecord) -> np.ndarray:
    """1 for the entries of float arrays, 0 elsewhere (channel noise spares integers)."""
    return np.concatenate([np.full(a.numpy().size, float(np.issubdtype(a.numpy().dtype,
                                                                        np.floating)))
                           for a in arrays.values()])


def _node_arrays(X: np.ndarray, rows: list[int], template: ArrayRecord) -> list[ArrayRecord]:
    """`unflatten(X[i], template)` for each i in `rows` (same bytes), each array's cast
    done once for all rows rather than once per node."""
    blocks, offset = [], 0
    for key, array in template.items():
        like = array_to_numpy(array)
        block = X[rows, offset:offset + like.size].astype(like.dtype)
        blocks.append((key, like.shape, block))
        offset += like.size
    return [ArrayRecord({key: array_from_numpy(block[n].reshape(shape))
                         for key, shape, block in blocks}) for n in range(len(rows))]


def _network_average(X: np.ndarray) -> np.ndarray:
    """x̄ = (1/m)Σ x_i; exactly x_0 when all rows agree, rather than a rounding of it."""
    if np.all(X[0] == X):
        return X[0].copy()
    return X.mean(axis=0)


_ACTIONS = {MESSAGE_TYPE: train_dfedsam}

STRATEGIES = (
    StrategyInfo("dpsgd", "D-PSGD / DFedAvg: local SGD, then gossip with W (decentralized)",
                 DPSGDParams, _builder(DPSGD, "dpsgd"), _ACTIONS),
    StrategyInfo("dfedsam", "DFedSAM: local SAM steps, then gossip with W (decentralized)",
                 DFedSAMParams, _builder(DFedSAM, "dfedsam"), _ACTIONS),
    StrategyInfo("dfedsam_mgs", "DFedSAM-MGS: local SAM, then Q gossip steps (decentralized)",
                 DFedSAMMGSParams, _builder(DFedSAMMGS, "dfedsam_mgs"), _ACTIONS),
)
