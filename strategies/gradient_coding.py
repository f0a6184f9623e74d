"""Gradient coding: exact distributed gradient descent that tolerates s stragglers.

Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding: Avoiding Stragglers in Distributed
Learning", ICML 2017 (arXiv 1612.03301). Official code: ``rashisht1/gradient_coding``.

The data are cut into n partitions D_1..D_n with partial gradients g_j. Worker i holds the
partitions in the support of row i of an encoding matrix B (n×n) and sends

    f_i = Σ_j B_ij g_j                                                          (encoding)

The master, having heard from a set F of workers, finds a supported on F with

    aᵀ B = 1ᵀ,  so that  Σ_{i∈F} a_i f_i = Σ_j g_j = g                         (decoding)

Such an a exists for every |F| ≥ n−s iff 1 lies in the row span of every (n−s)-row submatrix.
Theorem 1 of the paper: every partition must be held by at least s+1 workers, so the per-worker
load is at least (s+1)/n; both constructions here meet that bound.

The first part of this module is the numpy core (matrices, encoding, decoding, the master's
stopping rule "first decodable set"). The second part runs it on the simulator as distributed
gradient descent (GC-GD, :class:`GradientCodingGD`) with its client half, plus the paper's
"ignore stragglers" baseline (:class:`IgnoreStragglersGD`); uncoded "wait for all" GD is
GC-GD with s = 0 (B = I).

Normalisation. Worker j of n owns data partition D_j (the task's shard j); N = Σ_j |D_j|.
The partial gradient of partition j is g_j = (|D_j|/N) ∇L_j(x), with L_j the task's loss on D_j
(mean over its samples, plus the task's regulariser if it has one). So Σ_j g_j = ∇F(x) for

    F(x) = Σ_j (|D_j|/N) L_j(x)   (the sample-mean loss; the task's f when shards are equal),

and the master steps x ← x − γ ĝ with ĝ the decoded Σ_j g_j and γ the scenario's
``training.lr``.

Deviations from the official code: plain GD where it runs Nesterov's accelerated GD;
stragglers are the simulated devices' slow or failed jobs (speed, straggling model, links),
and replies still in flight when the master decodes are dropped (every round starts fresh
jobs). The loop (results, evaluation, resume, checkpoint state) is `fedsim.core.loop`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.clock import Clock
from fedsim.core.codec import flatten, unflatten
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.loop import OwnLoop, StepOutcome
from fedsim.core.services import GridServices, PartitionMap, services_for
from fedsim.core.task import Dataset, Task
from strategies import BuildContext, StrategyInfo

GCScheme = Literal["frc", "crc"]

DECODE_ATOL = 1e-6
"""Largest ‖B_Fᵀ a − 1‖_∞ accepted as an exact decode (float64; CRC degrades as n grows)."""


def gc_load(n: int, s: int) -> float:
    """Normalised per-worker load (s+1)/n of a gradient code tolerating s of n stragglers."""
    return (s + 1) / n


def fractional_repetition_B(n: int, s: int) -> np.ndarray:
    """Fractional repetition code (FRC): B = I_{n/(s+1)} ⊗ 1_{(s+1)×(s+1)}.

    Workers form n/(s+1) groups of s+1 consecutive workers; every worker of group q holds the s+1
    partitions q(s+1)..q(s+1)+s and sends their plain sum. With ≤ s stragglers every group has a
    survivor, and the sum of one message per group is g. Requires (s+1) | n.
    """
    _check_tolerance(n, s)
    if n % (s + 1):
        raise ValueError(f"FRC needs (s+1) | n, got n={n}, s={s}")
    return np.kron(np.eye(n // (s + 1)), np.ones((s + 1, s + 1)))


def cyclic_repetition_B(n: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Cyclic repetition code (CRC), the randomised construction of the official ``getB``.

    Row i is supported on S_i = {i, i+1, ..., i+s} mod n. Draw H ∈ R^{s×n} with i.i.d. N(0, 1)
    entries in its first n−1 columns and the last column set to minus the row sums (H·1 = 0); then
    set B_ii = 1 and B_{i, S_i∖{i}} = −(H_{:, S_i∖{i}})⁻¹ H_{:, i}. Every row lies in null(H), which
    has dimension n−s and contains 1, and with probability 1 any n−s rows span it. This is the
    official code's construction.

    Gaussian H gets ill-conditioned as n grows (decode error ~1e−10 at n=10); for n in the tens
    and up prefer FRC.
    """
    _check_tolerance(n, s)
    h_free = rng.standard_normal((s, n - 1))
    H = np.hstack([h_free, -h_free.sum(axis=1, keepdims=True)])
    B = np.zeros((n, n))
    for i in range(n):
        others = (i + np.arange(1, s + 1)) % n
        B[i, i] = 1.0
        B[i, others] = -np.linalg.solve(H[:, others], H[:, i])
    return B


def encoding_matrix(scheme: GCScheme, n: int, s: int, seed: int = 0) -> np.ndarray:
    """The n×n encoding matrix of `scheme` ("frc" or "crc") tolerating s stragglers.

    `seed` drives CRC's random H (``numpy.random.default_rng(seed)``); FRC ignores it.
    """
    if scheme == "frc":
        return fractional_repetition_B(n, s)
    if scheme == "crc":
        return cyclic_repetition_B(n, s, np.random.default_rng(seed))
    raise ValueError(f"unknown gradient-coding scheme {scheme!r}; expected 'frc' or 'crc'")


def data_assignment(B: np.ndarray) -> list[list[int]]:
    """Partitions each worker must hold: the nonzero columns of its row of B."""
    return [np.flatnonzero(row).tolist() for row in np.asarray(B)]


def encode(B_row: np.ndarray, partial_grads: np.ndarray) -> np.ndarray:
    """A worker's message f_i = Σ_j B_ij g_j.

    `partial_grads` has shape [n, *grad_shape] (one row per partition); rows outside the support of
    `B_row` are never read, so a worker may leave the partitions it does not hold as zeros.
    """
    support = np.flatnonzero(B_row)
    return np.tensordot(B_row[support], np.asarray(partial_grads)[support], axes=1)


def decoding_vector(B: np.ndarray, alive: Sequence[int], atol: float = DECODE_ATOL) -> np.ndarray:
    """The decoding vector a (length n, zero off `alive`) with aᵀ B = 1ᵀ.

    Solves B_Fᵀ a_F = 1 by least squares for F = `alive` (the minimum-norm solution when F holds
    more workers than needed). The system is exactly consistent for every |F| ≥ n−s; a residual
    ‖B_Fᵀ a_F − 1‖_∞ above `atol` means F cannot decode, and raises ValueError.
    """
    B = np.asarray(B, dtype=float)
    n = B.shape[0]
    workers = np.unique(np.asarray(alive, dtype=int))
    if workers.size and (workers[0] < 0 or workers[-1] >= n):
        raise ValueError(f"worker ids must lie in [0, {n}), got {workers.tolist()}")
    a = np.zeros(n)
    if workers.size:
        a[workers] = np.linalg.lstsq(B[workers].T, np.ones(n), rcond=None)[0]
    residual = float(np.abs(a @ B - 1.0).max())
    if residual > atol:
        raise ValueError(
            f"workers {workers.tolist()} cannot decode the full gradient "
            f"(‖aᵀB − 1ᵀ‖∞ = {residual:.2e} > {atol:.0e})"
        )
    return a


def is_decodable(B: np.ndarray, alive: Sequence[int], atol: float = DECODE_ATOL) -> bool:
    """Whether the messages of `alive` determine g, i.e. 1ᵀ lies in the row span of B[alive]."""
    try:
        decoding_vector(B, alive, atol)
    except ValueError:
        return False
    return True


def first_decodable(B: np.ndarray, arrival_order: Sequence[int]) -> list[int]:
    """The master's stopping rule: the shortest prefix of `arrival_order` that decodes.

    For CRC this is the first n−s arrivals; for FRC it is the moment every group has one arrival,
    often earlier. Decodability is monotone in the prefix, so the
    prefix length is found by bisection. Raises ValueError if even all of `arrival_order` cannot
    decode.
    """
    order = list(arrival_order)
    if not is_decodable(B, order):
        raise ValueError(f"arrivals {order} cannot decode the full gradient")
    lo, hi = 0, len(order)  # prefix lo does not decode (or is empty), prefix hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_decodable(B, order[:mid]):
            hi = mid
        else:
            lo = mid
    return order[:hi]


def decode(a: np.ndarray, coded: Mapping[int, np.ndarray]) -> np.ndarray:
    """g = Σ_i a_i f_i over the received messages `coded` ({worker: f_i}).

    Every worker with a nonzero weight must be in `coded`.
    """
    missing = [int(i) for i in np.flatnonzero(a) if int(i) not in coded]
    if missing:
        raise ValueError(f"decoding vector needs messages from workers {missing}")
    return sum(a[i] * np.asarray(f) for i, f in coded.items() if a[i] != 0)


def decode_received(B: np.ndarray, coded: Mapping[int, np.ndarray]) -> np.ndarray:
    """Decode g from whichever workers' messages arrived: decode(decoding_vector(B, F), coded)."""
    return decode(decoding_vector(B, list(coded)), coded)


def _check_tolerance(n: int, s: int) -> None:
    if not 0 <= s < n:
        raise ValueError(f"need 0 ≤ s < n, got n={n}, s={s}")


# ---------------------------------------------------------------------------------------------
# GC-GD on the simulator: client half, master, baseline
# ---------------------------------------------------------------------------------------------

MESSAGE_TYPE = "train.gradient_coding"


def weighted_gradient(task: Task, model: torch.nn.Module, data: Dataset, weight: float
                      ) -> tuple[np.ndarray, float]:
    """(weight · ∇L(x), L(x)) with L = task.loss on `data`; float64, in ``state_dict`` order."""
    values = list(model.state_dict(keep_vars=True).values())
    trainable = [v for v in values if isinstance(v, torch.nn.Parameter)]
    loss = task.loss(model, data.x, data.y)
    grads = iter(torch.autograd.grad(loss, trainable, allow_unused=True))
    parts = []
    for value in values:
        grad = next(grads) if isinstance(value, torch.nn.Parameter) else None
        parts.append((torch.zeros_like(value) if grad is None else grad).detach().reshape(-1))
    return weight * torch.cat(parts).to(torch.float64).numpy(), float(loss.item())


def train_gradient_coding(message: Message, context: Context) -> Message:
    """Worker i: f_i = Σ_j B_ij g_j over the partitions in the support of its row of B.

    The row arrives in the config (``gc-row``); the worker reads the task's shard j for every
    partition j it holds (redundant placement: s+1 shards each under GC) and reports the samples
    it processed as its work, so redundancy costs virtual compute time.
    """
    task, _ = client_task(context)
    row = np.asarray(message.content["config"]["gc-row"], dtype=np.float64)
    held = data_assignment(row[None])[0]
    sizes = [len(task.train_data(j)) for j in range(row.size)]
    total = sum(sizes)
    model = task.model_with(message.content["arrays"])
    partials: np.ndarray | None = None
    losses = []
    for j in held:
        grad, loss = weighted_gradient(task, model, task.train_data(j), sizes[j] / total)
        if partials is None:
            partials = np.zeros((row.size, grad.size))
        partials[j] = grad
        losses.append(loss)
    assert partials is not None, "a row of B has at least one nonzero"
    coded = encode(row, partials)
    work = sum(sizes[j] for j in held)
    return reply(message, ArrayRecord({"coded": Array(np.ascontiguousarray(coded))}),
                 **{"num-examples": work, "train_loss": float(np.mean(losses)), WORK_KEY: work,
                    "total-samples": total})


class GradientMaster:
    """What a gradient master (GC, SGC) binds when its loop starts: the train config and
    its lr, the grid with its services and clock, and the model's shape."""

    services: GridServices | None

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        self._config, self._lr = config, float(config["lr"])
        self._services = services_for(grid, self.services)
        self._grid, self._clock = grid, self._services.clock()
        self._like = initial_arrays


class GradientCodingGD(GradientMaster, OwnLoop, FedAvg):
    """Gradient-coded distributed GD (Tandon et al., ICML 2017): exact steps despite stragglers.

    Each round the master pushes x to all n workers; worker i returns f_i = Σ_j B_ij g_j; the
    master advances the clock reply by reply and decodes ĝ = Σ_{i∈F} a_i f_i = Σ_j g_j from the
    FIRST decodable set F of replies in arrival order (:func:`first_decodable`: the first n−s
    replies for CRC, one per group for FRC), then steps x ← x − γ ĝ (γ = ``training.lr``; see
    the module docstring for the normalisation). Replies still in flight are ignored (counted as
    grid stragglers and in the ``ignored`` metric); a straggler's next job starts with the next
    round, as the simulator models jobs independently. With s = 0 (B = I) this is uncoded
    distributed GD that waits for all n. The scenario's ``deadline_s`` is not used: the master
    waits until it can decode; if more than s jobs fail (loss, dropout) the run stops with an error.

    Parameters
    ----------
    num_workers : int
        n, the number of workers (= clients); worker i owns the task's shard i.
    s : int (default 1)
        Stragglers tolerated, 0 ≤ s < n; each worker computes s+1 partial gradients.
    scheme : "crc" | "frc" (default "crc")
        Cyclic repetition (any s) or fractional repetition ((s+1) | n) code.
    code_seed : int (default 0)
        Seed of CRC's random H (:func:`encoding_matrix`).
    services : GridServices | None (default None: asked of the grid at start)
        The grid's partition map (worker i = the node holding partition i), clock and
        straggler counter; run context, not state.
    """

    def __init__(self, num_workers: int, s: int = 1, scheme: GCScheme = "crc",
                 code_seed: int = 0, services: GridServices | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.services = services  # as built; `prepare` falls back to asking the grid
        self._services: GridServices | None = None  # this run's
        self.n, self.s = num_workers, s
        self.B = encoding_matrix(scheme, num_workers, s, code_seed)
        self._x = np.zeros(0)  # the model, flat; with the loop's step count, all the state
        self._like = ArrayRecord()
        self._lr = 0.0
        self._round_metrics: dict[str, float] = {}

    state_fields = ("_x",)

    # ------------------------------------------------------------ the master's rule

    def can_stop(self, arrived: Sequence[int]) -> bool:
        """Whether the workers that replied so far (arrival order) suffice."""
        return is_decodable(self.B, arrived)

    def used(self, arrived: Sequence[int]) -> list[int]:
        """The replies the master uses: the first decodable prefix."""
        return first_decodable(self.B, arrived)

    def gradient(self, replies: Sequence[Message]) -> np.ndarray:
        """ĝ = Σ_{i∈F} a_i f_i = ∇F(x) exactly."""
        partitions = self._partitions()
        return decode_received(self.B, {partitions.partition_of(m.metadata.src_node_id):
                                        flatten(m.content["arrays"]) for m in replies})

    # ------------------------------------------------------------ round

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the gradient from the used replies and take the GD step."""
        replies = list(replies)
        self._x = self._x - self._lr * self.gradient(replies)
        metrics = [m.content["metrics"] for m in replies]
        return unflatten(self._x, self._like), MetricRecord({
            "num-examples": float(sum(float(m["num-examples"]) for m in metrics)),
            "train_loss": float(np.mean([float(m["train_loss"]) for m in metrics])),
            "decoded_from": float(len(replies)), **self._round_metrics,
        })

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        self._x = flatten(initial_arrays).copy()

    def _partitions(self) -> PartitionMap:
        assert self._services is not None, "prepare() first"
        return self._services.partitions

    def step(self, n: int) -> StepOutcome:
        """GD step n, decoded from the first decodable set of replies."""
        started = self._clock.now()
        replies, ignored = self._collect(self._grid, self._clock, n, self._config)
        self._round_metrics = {"ignored": float(ignored),
                               "round_time_s": self._clock.now() - started}
        arrays, metrics = self.aggregate_train(n, replies)
        assert arrays is not None and metrics is not None
        return arrays, metrics

    def _collect(self, grid: Grid, clock: Clock, server_round: int, config: ConfigRecord
                 ) -> tuple[list[Message], int]:
        """Push x to every online worker (in worker order); wait reply by reply until
        `can_stop`.

        Returns (the used replies, sorted by worker; how many pushed jobs were not used).
        """
        assert self._services is not None
        partitions = self._services.partitions
        online = partitions.online(grid.get_node_ids())
        arrays = unflatten(self._x, self._like)
        messages = []
        for worker in range(self.n):
            if worker in online:
                round_config = ConfigRecord({**config, "gc-row": self.B[worker].tolist(),
                                             "server-round": server_round})
                messages.append(Message(RecordDict({"arrays": arrays, "config": round_config}),
                                        partitions.node_of(worker), MESSAGE_TYPE,
                                        group_id=str(server_round)))
        ids = grid.push_messages(messages)
        pending = dict(zip((m.metadata.dst_node_id for m in messages), ids, strict=True))
        arrived: list[int] = []
        by_worker: dict[int, Message] = {}
        while not self.can_stop(arrived):
            batch = clock.wait_for_replies(grid, list(pending.values()))
            if not batch:
                raise RuntimeError(
                    f"round {server_round}: workers {sorted(arrived)} replied and the rest "
                    f"failed; they cannot decode the gradient (s = {self.s})")
            for message in batch:
                del pending[message.metadata.src_node_id]
                if not message.has_error():
                    arrived.append(partitions.partition_of(message.metadata.src_node_id))
                    by_worker[arrived[-1]] = message
        self._services.count_stragglers(list(pending.values()))
        used = sorted(self.used(arrived))
        return [by_worker[w] for w in used], len(messages) - len(used)


class IgnoreStragglersGD(GradientCodingGD):
    """The paper's "ignore stragglers" baseline (official ``avoidstragg.py``): inexact GD.

    One partition per worker (B = I, no redundancy); the master uses the first n−s replies in
    arrival order and rescales their sum to the sample mean of the data that arrived:
    ĝ = Σ_{i∈F} (|D_i|/N_F) ∇L_i = (N/N_F) Σ_{i∈F} f_i (n/(n−s) for equal shards, as the
    official code). It waits for as many replies as CRC's master but each costs 1/(s+1) of the
    work, so its rounds are fastest, and its gradient ignores the stragglers' data (inexact).

    Parameters
    ----------
    num_workers : int
        n, the number of workers (= clients).
    s : int (default 1)
        The master uses the first n−s replies, 0 ≤ s < n.
    """

    def __init__(self, num_workers: int, s: int = 1,
                 services: GridServices | None = None) -> None:
        super().__init__(num_workers, s=0, scheme="frc", services=services)
        self.s = s
        if not 0 <= s < num_workers:
            raise ValueError(f"need 0 ≤ s < n, got n={num_workers}, s={s}")

    def can_stop(self, arrived: Sequence[int]) -> bool:
        return len(arrived) >= self.n - self.s

    def used(self, arrived: Sequence[int]) -> list[int]:
        return list(arrived[: self.n - self.s])

    def gradient(self, replies: Sequence[Message]) -> np.ndarray:
        metrics = [m.content["metrics"] for m in replies]
        arrived = sum(float(m["num-examples"]) for m in metrics)
        total = float(metrics[0]["total-samples"])
        return total / arrived * sum(flatten(m.content["arrays"]) for m in replies)


class GradientCodingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    s: int = Field(default=1, ge=0, description="stragglers tolerated (0: uncoded, wait for all)")
    scheme: Literal["crc", "frc"] = "crc"
    code_seed: int = Field(default=0, ge=0, description="seed of CRC's random H")


class IgnoreStragglersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    s: int = Field(default=1, ge=0, description="the master uses the first n−s replies")


def _build_gc(params: GradientCodingParams, ctx: BuildContext) -> GradientCodingGD:
    try:
        return GradientCodingGD(ctx.num_nodes, **params.model_dump(), services=ctx.services)
    except ValueError as exc:
        raise ScenarioError(f"strategy.params: {exc} (n = clients.count)") from None


def _build_ignore(params: IgnoreStragglersParams, ctx: BuildContext) -> IgnoreStragglersGD:
    try:
        return IgnoreStragglersGD(ctx.num_nodes, **params.model_dump(), services=ctx.services)
    except ValueError as exc:
        raise ScenarioError(f"strategy.params: {exc} (n = clients.count)") from None


STRATEGIES = (
    StrategyInfo("gradient_coding", "gradient-coded GD: exact steps from the first decodable "
                 "n−s replies (s = 0: uncoded wait-for-all GD)", GradientCodingParams,
                 _build_gc, {MESSAGE_TYPE: train_gradient_coding}),
    StrategyInfo("ignore_stragglers_gd", "GD from the first n−s uncoded replies, rescaled "
                 "(inexact baseline of gradient coding)", IgnoreStragglersParams, _build_ignore,
                 {MESSAGE_TYPE: train_gradient_coding}),
)
