"""FedPCA: federated principal subspace by ADMM, Euclidean (FedPE) or on the Grassmannian (FedPG).

Nguyen, Le, Nguyen, Bao, Seneviratne, Hong, Tran, "Federated PCA on Grassmann Manifold for IoT
Anomaly Detection", IEEE/ACM ToN 2024 (arXiv 2407.07421). Official code:
``dual-grp/FedPCA_AnomalyDetection`` (the same code as ``longtanle/FedPCA_ToN``); earlier
version at INFOCOM 2023 (arXiv 2212.12121). Task: ``anomaly`` (``task.local_problem(i)`` = X_i,
d × n_i).

Client i minimises f_i(U) = (1/n_i)‖X_i − UUᵀX_i‖_F² with the consensus constraint U_i = Z::

    L_i(U) = f_i(U) + ⟨Y_i, U − Z⟩_F + (ρ/2)‖U − Z‖_F²
             [FedPE: + ⟨T_i, h(U)⟩_F + (ρ/2)‖h(U)‖_F²,  h(U) = max(0, UᵀU − I)² elementwise]
    ∇f_i(U) = (1/n_i)(−4S_iU + 2S_iUUᵀU + 2UUᵀS_iU),  S_i = X_iX_iᵀ

    server: sample ⌊fraction·M⌋ clients (≥ 1) uniformly without replacement; send Z
    client i (state U_i, Y_i [, T_i] in its context; first time U_i = Z, Y_i = 0, T_i = 0):
        Y_i ← Y_i + ρ(U_i − Z);   FedPE: T_i ← T_i + ρ h(U_i)
        repeat R times:  G = ∇L_i(U_i)
            FedPE: U_i ← U_i − lr G
            FedPG: U_i ← qf(U_i − lr (I − U_iU_iᵀ) G)   (QR retraction, signs fixed: diag R > 0)
        send U_i + Y_i/ρ   ("textbook"; "simplified" sends U_i, as the official code does)
    server: Z ← Σ_{i∈S} n_i/Σ_{j∈S}n_j · (what i sent)

Deviations from the official code (we keep the paper's ADMM): the dual term is the Frobenius
product (the code's ``torch.inner`` sum gives a rank-one gradient); Z starts orthonormal (the
model's init) and Y_i, T_i at 0; the new Z goes to the *current* sample; the QR sign fix is
always applied (without it column signs flip between clients and consensus breaks). Z is not
re-orthonormalised on the server; scoring uses an orthonormal basis of it (the task's job).
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
from fedsim.core.keys import WORK_KEY
from fedsim.core.seeding import rng
from fedsim.core.services import GridServices, PartitionMap, services_for
from strategies import BuildContext, StrategyInfo

STATE_KEY = "fedpca"


def qf(matrix: np.ndarray) -> np.ndarray:
    """Q of the QR factorisation with diag(R) > 0, so Q is unique (the retraction)."""
    q, r = np.linalg.qr(matrix)
    signs = np.sign(np.diag(r))
    return q * np.where(signs == 0, 1.0, signs)


def pca_gradient(cov: np.ndarray, u: np.ndarray) -> np.ndarray:
    """∇f_i(U) with cov = S_i/n_i."""
    su = cov @ u
    return -4 * su + 2 * su @ (u.T @ u) + 2 * u @ (u.T @ su)


def orthogonality_excess(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, h): m = max(0, UᵀU − I), h = m² elementwise (FedPE's penalised constraint)."""
    m = np.maximum(0.0, u.T @ u - np.eye(u.shape[1]))
    return m, m ** 2


def local_steps(cov: np.ndarray, u: np.ndarray, z: np.ndarray, y: np.ndarray,
                t: np.ndarray | None, rho: float, lr: float, steps: int) -> np.ndarray:
    """R gradient steps on L_i: Euclidean with the h-penalty (t given: FedPE) or Riemannian."""
    for _ in range(steps):
        grad = pca_gradient(cov, u) + y + rho * (u - z)
        if t is None:
            grad = grad - u @ (u.T @ grad)  # tangent space of the Grassmannian
            u = qf(u - lr * grad)
        else:
            m, h = orthogonality_excess(u)
            weight = (t + rho * h) * 2 * m
            u = u - lr * (grad + u @ (weight + weight.T))
    return u


def train_fedpca(message: Message, context: Context) -> Message:
    """FedPE / FedPG client: dual ascent with the fresh Z, R local steps, send U (+ Y/ρ)."""
    task, partition = client_task(context)
    problem = getattr(task, "local_problem", None)
    if problem is None:
        raise TypeError(f"FedPCA needs a task with local_problem() (e.g. 'anomaly'), "
                        f"not {task.name!r}")
    x = problem(partition)
    config = message.content["config"]
    rho, lr, steps = float(config["pca-rho"]), float(config["pca-lr"]), int(config["pca-steps"])
    euclidean = str(config["pca-manifold"]) == "euclidean"
    like = message.content["arrays"]
    z = flatten(like).reshape(x.shape[0], -1)
    if STATE_KEY in context.state:
        state = {k: v.numpy().copy() for k, v in context.state[STATE_KEY].items()}
    else:
        k = z.shape[1]
        state = {"u": z.copy(), "y": np.zeros_like(z), "t": np.zeros((k, k))}
    u, y, t = state["u"], state["y"], state["t"]
    y = y + rho * (u - z)
    if euclidean:
        t = t + rho * orthogonality_excess(u)[1]
    cov = x @ x.T / x.shape[1]
    u = local_steps(cov, u, z, y, t if euclidean else None, rho, lr, steps)
    context.state[STATE_KEY] = ArrayRecord({"u": Array(u), "y": Array(y), "t": Array(t)})
    sent = u + y / rho if str(config["pca-server-rule"]) == "textbook" else u
    loss = float(np.trace(cov) - 2 * np.trace(u.T @ cov @ u) + np.trace(u.T @ u @ u.T @ cov @ u))
    n = x.shape[1]
    return reply(message, unflatten(sent.reshape(-1), like),
                 **{"num-examples": n, "train_loss": loss, WORK_KEY: n * steps})


class FedPCA(FedAvg):
    """Federated PCA by consensus ADMM (Nguyen et al., IEEE/ACM ToN 2024); see module docstring.

    Parameters (keyword; defaults: the official code's argparse defaults):

    num_nodes : int
        M, the number of clients.
    seed : int
        Seeds client sampling.
    fraction : float, default 0.1
        Share of the online clients sampled each round (⌊fraction·M⌋, at least 1).
    local_steps : int, default 30
        R, full-batch local steps per round.
    lr : float, default 1e-4
        Local step size.
    rho : float, default 0.01
        ADMM penalty ρ.
    server_rule : "textbook" | "simplified", default "textbook"
        Clients send U_i + Y_i/ρ (textbook ADMM) or U_i (official code); identical Z with full
        participation and equal weights.
    services : GridServices | None
        The grid's services (the runner's); None: asked of the grid at the first round.

    Node ids are opaque: sampling picks positions among the online nodes in partition order
    and replies are summed in partition order, so a run on a SuperLink, whose ids are random
    and whose replies arrive in any order, gives the simulator's numbers.
    """

    manifold: ClassVar[Literal["euclidean", "grassmann"]] = "grassmann"

    def __init__(self, *, num_nodes: int, seed: int, fraction: float = 0.1,
                 local_steps: int = 30, lr: float = 1e-4, rho: float = 0.01,
                 server_rule: Literal["textbook", "simplified"] = "textbook",
                 services: GridServices | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.num_nodes, self.seed, self.fraction = num_nodes, seed, fraction
        self.local_steps, self.lr, self.rho, self.server_rule = local_steps, lr, rho, server_rule
        self.services = services  # the grid's, not state: never checkpointed

    def partition_map(self, grid: Grid) -> PartitionMap:
        """Which partition each node holds (asks the grid once if no services were given)."""
        if self.services is None:
            self.services = services_for(grid, None)
        return self.services.partitions

    def sample(self, server_round: int, grid: Grid) -> list[int]:
        """⌊fraction·online⌋ online nodes (at least 1), in partition order."""
        nodes = self.partition_map(grid).in_partition_order(grid.get_node_ids())
        size = min(len(nodes), max(1, math.floor(self.fraction * len(nodes))))
        chosen = rng(self.seed, "fedpca-sample", server_round).choice(len(nodes), size,
                                                                      replace=False)
        return [nodes[i] for i in sorted(chosen)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        payload = RecordDict({"arrays": arrays, "config": ConfigRecord({
            "pca-rho": self.rho, "pca-lr": self.lr, "pca-steps": self.local_steps,
            "pca-manifold": self.manifold, "pca-server-rule": self.server_rule,
            "server-round": server_round})})
        return [Message(content=payload, dst_node_id=node, message_type="train.fedpca")
                for node in self.sample(server_round, grid)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        assert self.services is not None  # set by configure_train
        partition_of = self.services.partitions.partition_of
        valid = sorted(valid, key=lambda m: partition_of(m.metadata.src_node_id))
        weights = np.array([float(m.content["metrics"]["num-examples"]) for m in valid])
        weights /= weights.sum()
        z = sum(w * flatten(m.content["arrays"]) for w, m in zip(weights, valid, strict=True))
        losses = [float(m.content["metrics"]["train_loss"]) for m in valid]
        like = valid[0].content["arrays"]
        return unflatten(np.asarray(z), like), MetricRecord({
            "num-examples": int(sum(int(m.content["metrics"]["num-examples"]) for m in valid)),
            "train_loss": float(np.dot(weights, losses)),
            "sampled": len(valid)})


class FedPG(FedPCA):
    """FedPG: FedPCA with Riemannian steps on the Grassmann manifold (QR retraction)."""


class FedPE(FedPCA):
    """FedPE: FedPCA with Euclidean steps and a penalised UᵀU ≤ I constraint (multiplier T_i)."""

    manifold = "euclidean"


# ------------------------------------------------------------------------ registration


class FedPCAParams(BaseModel):
    """Hyperparameters of FedPE / FedPG (see `FedPCA`)."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(default=0.1, gt=0, le=1, description="share of clients per round")
    local_steps: int = Field(default=30, ge=1, description="R, local steps per round")
    lr: float = Field(default=1e-4, gt=0, description="local step size")
    rho: float = Field(default=0.01, gt=0, description="ADMM penalty ρ")
    server_rule: Literal["textbook", "simplified"] = "textbook"


def _builder(cls: type[FedPCA]):  # type: ignore[no-untyped-def]
    def build(params: FedPCAParams, context: BuildContext) -> FedPCA:
        return cls(num_nodes=context.num_nodes, seed=context.scenario.seed,
                   services=context.services, **params.model_dump())

    return build


STRATEGIES = (
    StrategyInfo("fedpg", "FedPCA on the Grassmann manifold (Riemannian ADMM, QR retraction)",
                 FedPCAParams, _builder(FedPG), {"train.fedpca": train_fedpca}),
    StrategyInfo("fedpe", "FedPCA in Euclidean space (ADMM with a penalised UᵀU ≤ I)",
                 FedPCAParams, _builder(FedPE), {"train.fedpca": train_fedpca}),
)
