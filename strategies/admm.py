"""Consensus ADMM federated learning over noisy links with random client scheduling.

Lari, Arablouei, Gogineni, Werner, "Noise-robust and resource-efficient ADMM-based federated
learning", arXiv 2409.13451, 2024 (earlier parts: IEEE SSP 2023, APSIPA ASC 2023). No
official code was found, and only the paper's abstract and introduction could be read: the
baseline below is standard consensus ADMM (its update order agrees with a third-party summary
of the paper's baseline); the paper's own "proposed" recursion is not implemented. Task:
weighted least squares (``wls``), client k with R_k = X_kᵀW_kX_k, r_k = X_kᵀW_ky_k,
J_k(v) = ‖y_k − X_k v‖²_{W_k} (no ½, so N_k = (2R_k + ρI)⁻¹; a paper that writes ½J_k has
(R_k + ρI)⁻¹ instead, which only rescales ρ).

Each round the server schedules every client independently with probability p. The downlink
message is exactly the vector the client uses and the uplink message exactly the vector the
server averages, so the channel's ``noise_sigma`` (downlink η, uplink ν) hits those vectors.

**Baseline ADMM** (`ADMM`; client state w_k, z_k; server state w and every client's last
contribution s_k, all 0 at the start)::

    client k ∈ S_n:  receive ŵ = w + η;  z_k ← z_k + ρ(w_k − ŵ);  w_k ← N_k(2r_k + ρŵ − z_k)
                     send s_k = w_k + z_k/ρ                    (server gets s_k + ν)
    server:          w ← (1/K) Σ_{k=1..K} s_k                  (unscheduled k: stored s_k)

``server_rule="sampled"`` averages only the replies of S_n; with p < 1 it diverges (in an
independent numpy simulation and in ``tests/test_admm.py``), so it is only an experiment.

**Dual-free form** (`DualFreeADMM`; client state w_k; server state w, w_prev, stored w_k).
Eliminating z_k with the previous local solve's optimality condition (no noise, p = 1) gives
z_k = −∇J_k(w_k) + ρ(w_{n−1} − w_n), hence w_k ← w_k + ρN_k(2w_n − w_{n−1} − w_k) =
N_k(2R_k w_k + ρ v_n). The server sends the extrapolated v_n = 2w_n − w_{n−1}, so a client
uses one received vector, once, per round and keeps no dual::

    client k ∈ S_n:  receive v̂ = v_n + η
                     first time: w_k ← N_k(2r_k + ρv̂)     (ADMM's first round: prox step)
                     later:      w_k ← N_k(2R_k w_k + ρv̂)
                     send w_k
    server:          w_prev, w ← w, (1/K) Σ_k stored w_k

What it converges to (tests in ``tests/test_admm.py``). Any consensus point (w_k = w for
all k) is a fixed point; the limit is selected by the quantity
G_n = Σ_k ∇J_k(w_k) − Kρ(w_{n−1} − w_n), which the recursion conserves when p = 1 and links
are clean, and which the prox first round sets to 0. So:

- p = 1, no noise: the iterates equal ADMM's and converge to the WLS optimum w* (unbiased).
- p < 1: G is no longer conserved (only the scheduled terms move); the run settles on a
  consensus point with Σ_k ∇J_k(w) ≠ 0, i.e. a **biased** limit (an MSD floor, not w*).
- noisy links: every noise sample moves G and nothing pulls it back, so G performs a
  random walk and the MSD floor **rises slowly** with the rounds (about −47 dB near round
  2000 to −31 dB near round 40000 with σ = 0.01 on the ``wls`` task), whereas baseline ADMM,
  whose server average keeps the Σz_k/ρ correction, stays at about −46 dB.

This is an algebraic rewrite of ADMM, not the paper's "proposed" recursion (which could not
be read, including its rule for unscheduled clients that keep updating); it is not shipped
as that algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import ClassVar, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.codec import flatten, unflatten
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.seeding import rng
from fedsim.core.services import GridServices, PartitionMap, services_for
from strategies import BuildContext, StrategyInfo

STATE_KEY = "admm"


# ------------------------------------------------------------------------ client halves


def _local(message: Message, context: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        float, dict[str, np.ndarray]]:
    """(R_k, r_k, received vector, ρ, stored client state) of this node.

    The state also carries "n", the shard size, for the reply's metrics.
    """
    task, partition = client_task(context)
    problem = getattr(task, "local_problem", None)
    if problem is None:
        raise TypeError(f"ADMM needs a task with local_problem() (e.g. 'wls'), not {task.name!r}")
    R, r = problem(partition)
    received = flatten(message.content["arrays"])
    rho = float(message.content["config"]["admm-rho"])
    state = ({k: v.numpy().copy() for k, v in context.state[STATE_KEY].items()}
             if STATE_KEY in context.state else {})
    state["n"] = np.array(len(task.train_data(partition)))
    return R, r, received, rho, state


def _finish(message: Message, context: Context, state: dict[str, np.ndarray], sent: np.ndarray,
            R: np.ndarray, r: np.ndarray, w_local: np.ndarray) -> Message:
    context.state[STATE_KEY] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                            for k, v in state.items()})
    samples = int(state["n"])
    # J_k(w_k) - y_kᵀ W_k y_k: the local least-squares objective without its constant, so it
    # can be negative; not a loss to compare with other strategies' train_loss
    objective = float(w_local @ R @ w_local - 2 * r @ w_local)
    return reply(message, ArrayRecord({"s": Array(np.ascontiguousarray(sent))}),
                 **{"num-examples": samples, "local_objective": objective, WORK_KEY: samples})


def train_admm(message: Message, context: Context) -> Message:
    """Baseline ADMM client: dual update, exact local solve, send w_k + z_k/ρ."""
    R, r, w_hat, rho, state = _local(message, context)
    w_k = state.get("w", np.zeros_like(w_hat))
    z_k = state.get("z", np.zeros_like(w_hat))
    z_k = z_k + rho * (w_k - w_hat)
    w_k = np.linalg.solve(2 * R + rho * np.eye(len(w_hat)), 2 * r + rho * w_hat - z_k)
    return _finish(message, context, state | {"w": w_k, "z": z_k}, w_k + z_k / rho, R, r, w_k)


def train_admm_dual_free(message: Message, context: Context) -> Message:
    """Dual-free client: one received vector v̂, w_k ← N_k(2R_k w_k + ρv̂) (prox the first time)."""
    R, r, v_hat, rho, state = _local(message, context)
    pull = 2 * r if "w" not in state else 2 * R @ state["w"]
    w_k = np.linalg.solve(2 * R + rho * np.eye(len(v_hat)), pull + rho * v_hat)
    return _finish(message, context, state | {"w": w_k}, w_k, R, r, w_k)


# ------------------------------------------------------------------------ server half


class ADMM(FedAvg):
    """Consensus ADMM FL with random scheduling (Lari et al., arXiv 2409.13451; baseline).

    Updates and what is exact are in the module docstring. Parameters (keyword):

    num_nodes : int
        K; the server average is over all K clients.
    seed : int
        Seeds the scheduling draws.
    rho : float, default 1.0
        ADMM penalty ρ (> 0); not readable from the paper. ρ ∈ {0.1, 1, 10} all converge
        (p = 1, clean links); 1 is the test default.
    participation : float, default 1.0
        p, the probability that a client is scheduled in a round (independently per client).
    server_rule : "stored" | "sampled", default "stored"
        "stored": average every client's last contribution; "sampled": only this round's
        replies (diverges for p < 1; an experiment, not a default).
    services : GridServices | None
        The grid's services (the runner's); None: asked of the grid at the first round.

    Client k is the node holding partition k (node ids are opaque): draws, stored
    contributions and the order of every sum go by partition, so a run on a SuperLink, whose
    ids are random and whose replies arrive in any order, gives the simulator's numbers.
    """

    message_type: ClassVar[str] = "train.admm"

    def __init__(self, *, num_nodes: int, seed: int, rho: float = 1.0,
                 participation: float = 1.0,
                 server_rule: Literal["stored", "sampled"] = "stored",
                 services: GridServices | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.num_nodes, self.seed, self.rho = num_nodes, seed, rho
        self.participation, self.server_rule = participation, server_rule
        self.w: np.ndarray | None = None
        self.stored: np.ndarray | None = None  # K × L, last contribution of each client
        self._like: ArrayRecord | None = None
        self.services = services  # the grid's, not state: never checkpointed

    def partition_map(self, grid: Grid) -> PartitionMap:
        """Which partition each node holds (asks the grid once if no services were given)."""
        if self.services is None:
            self.services = services_for(grid, None)
        return self.services.partitions

    def broadcast(self) -> np.ndarray:
        """The vector scheduled clients receive: the global model w."""
        assert self.w is not None
        return self.w

    def move(self, average: np.ndarray) -> None:
        self.w = average

    def schedule(self, server_round: int, grid: Grid) -> list[int]:
        """Online nodes drawn independently with probability p (seeded per round, one draw
        per partition), in partition order."""
        partitions = self.partition_map(grid)
        nodes = partitions.in_partition_order(grid.get_node_ids())
        if self.participation >= 1:
            return nodes
        draws = rng(self.seed, "admm-schedule", server_round).random(self.num_nodes)
        return [n for n in nodes if draws[partitions.partition_of(n)] < self.participation]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.w is None:
            self.w, self._like = flatten(arrays), arrays
            self.stored = np.zeros((self.num_nodes, self.w.size))
        payload = RecordDict({
            "arrays": unflatten(self.broadcast(), self._like),
            "config": ConfigRecord({"admm-rho": self.rho, "server-round": server_round}),
        })
        return [Message(content=payload, dst_node_id=node, message_type=self.message_type)
                for node in self.schedule(server_round, grid)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        assert self.w is not None and self.stored is not None and self._like is not None
        assert self.services is not None  # set by configure_train
        partition_of = self.services.partitions.partition_of
        valid = sorted(valid, key=lambda m: partition_of(m.metadata.src_node_id))
        received = []
        for message in valid:
            s_k = flatten(message.content["arrays"])
            self.stored[partition_of(message.metadata.src_node_id)] = s_k
            received.append(s_k)
        if self.server_rule == "sampled":
            if received:
                self.move(np.mean(received, axis=0))
        else:
            self.move(self.stored.mean(axis=0))
        objectives = [float(m.content["metrics"]["local_objective"]) for m in valid]
        metrics = MetricRecord({"scheduled": len(valid), "local_objective":
                                float(np.mean(objectives)) if objectives else math.nan})
        return unflatten(self.w, self._like), metrics


class DualFreeADMM(ADMM):
    """Dual-free rewrite of consensus ADMM (z_k eliminated; see the module docstring).

    Same parameters as `ADMM`. The server broadcasts v_n = 2w_n − w_{n−1}; clients keep only
    w_k. Equals ADMM for p = 1 on clean links; biased for p < 1; drifts under link noise.
    """

    message_type: ClassVar[str] = "train.admm_dual_free"

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.w_prev: np.ndarray | None = None

    def broadcast(self) -> np.ndarray:
        assert self.w is not None
        previous = self.w if self.w_prev is None else self.w_prev
        return 2 * self.w - previous

    def move(self, average: np.ndarray) -> None:
        self.w_prev, self.w = self.w, average


# ------------------------------------------------------------------------ registration


class ADMMParams(BaseModel):
    """Hyperparameters of `ADMM` / `DualFreeADMM` (see the class docstring)."""

    model_config = ConfigDict(extra="forbid")
    rho: float = Field(default=1.0, gt=0, description="ADMM penalty ρ")
    participation: float = Field(default=1.0, gt=0, le=1,
                                 description="P(a client is scheduled in a round)")
    server_rule: Literal["stored", "sampled"] = "stored"


def _builder(cls: type[ADMM]):  # type: ignore[no-untyped-def]
    def build(params: ADMMParams, context: BuildContext) -> ADMM:
        if not hasattr(context.task, "local_problem"):  # refused before any client runs
            raise ScenarioError(f"task.name: ADMM solves each client's problem exactly and "
                                f"needs a task with local_problem() (e.g. 'wls'), not "
                                f"{context.task.name!r}")
        return cls(num_nodes=context.num_nodes, seed=context.scenario.seed,
                   services=context.services, **params.model_dump())

    return build


STRATEGIES = (
    StrategyInfo("admm", "consensus ADMM FL (exact local solves) with random scheduling",
                 ADMMParams, _builder(ADMM), {"train.admm": train_admm}),
    StrategyInfo("admm_dual_free", "dual-free rewrite of ADMM FL (one received vector/round)",
                 ADMMParams, _builder(DualFreeADMM),
                 {"train.admm_dual_free": train_admm_dual_free}),
)
