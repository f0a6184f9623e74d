"""EF21 error feedback (with -SGD, -PP and -W variants), and the machinery shared by EF14/EControl.

Richtárik, Sokolov, Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and Practically
Faster Error Feedback", NeurIPS 2021 (arXiv 2106.05203); Fatkhullin, Sokolov, Gorbunov, Li,
Richtárik, "EF21 with Bells & Whistles" (arXiv 2110.03294; EF21-SGD, EF21-PP); Richtárik,
Gasanov, Burlachenko, "Error Feedback Reloaded: From Quadratic to Arithmetic Mean of Smoothness
Constants", ICLR 2024 (arXiv 2402.10774; EF21-W).
Official code: ``IgorSokoloff/ef21_experiments_source_code`` (``bdfg_distributed_stable.py``),
``IgorSokoloff/ef21_b-w_experiements_source_code`` (``ef21_pp.py``, ``ef21_sgd.py``).

Every method here is a compressed gradient method on flat float64 vectors. The server keeps x
(and an aggregate direction); each round it broadcasts x, every sampled client turns its local
gradient ∇f_i(x) (full, or a minibatch for -SGD) into one compressed message with its own
error-feedback memory, which lives in the node's ``context.state`` so it survives rounds where
the node is not sampled, and the server moves x. Replies carry the compressed arrays
(`Compressed.to_arrays`), so the simulator's byte counts are the message's real size; value and
index bits are also reported apart (``uplink_value_bits``, ``uplink_index_bits`` per round).

EF21 (client state g_i; server state x, g):

    client i:  c_i = C(s_i ∇f_i(x) − g_i);  g_i ← g_i + c_i;  send c_i
    server:    g ← g + Σ_i a_i c_i;  x ← x − γ g

with s_i = 1, a_i = 1/n. A client's first message is ∇f_i(x⁰) uncompressed (g_i = 0 before it;
the official code starts with g_i⁰ = ∇f_i(x⁰)), so EF21 with the identity compressor is GD.
EF21-W uses w_i = L_i/Σ_j L_j, s_i = 1/(n w_i), a_i = w_i; for positively homogeneous C (Top-K,
Rand-K, sign) it is EF21 itself, and its gain is the theory step with L_AM in place of L_QM.

Theory step sizes (α = the compressor's contraction on d coordinates):

    θ = 1 − √(1−α),  β = (1−α)/(1 − √(1−α)),  γ = 1/(L + L_QM √(β/θ))     (EF21, EF21-SGD)
    γ = 1/(L + L_AM √(β/θ))                                                (EF21-W)
    EF21-PP (authors' framework, Th. 7 of EF21-BW, s = ρ = 1e−3, participation p):
    θ = 1 − (1+s)(1−α), β = (1+1/s)(1−α), θ_p = ρp + θp − ρ,
    B = (βp + (1 + 1/ρ)(1−p)) L_QM²,  γ = 1/(L + √(B/θ_p))

times ``step_factor`` (the EF21 experiments use 1×, 2×, 4×...), unless ``lr`` fixes γ.
L_i and L come from the task (``task.smoothness()``, e.g. the ``logreg`` and ``least_squares``
tasks). A reply lost on the channel leaves client and server memories out of step (the client
has already applied its message): EF21's analysis assumes reliable links.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.codec import flatten, unflatten
from fedsim.core.keys import WORK_KEY
from fedsim.core.seeding import rng
from fedsim.core.services import GridServices, PartitionMap, services_for
from fedsim.core.task import Dataset, Task
from fedsim.core.training import TrainConfig, local_sgd
from strategies import BuildContext, StrategyInfo
from strategies.compressors import (
    Compressed,
    Compressor,
    CompressorSpec,
    Identity,
    TopK,
    make_compressor,
)

Smoothness = tuple[np.ndarray, float]
"""(L_i for every client, L of f)."""

ClientUpdate = Callable[[dict[str, np.ndarray], np.ndarray, Compressor, np.random.Generator,
                         ConfigRecord], Compressed]
"""(memory, input vector u, C, rng, config) -> message; updates the memory in place."""


# ------------------------------------------------------------------------ step sizes


def ef21_theta_beta(alpha: float) -> tuple[float, float]:
    """θ = 1 − √(1−α) and β = (1−α)/(1 − √(1−α)) of the EF21 analysis."""
    root = math.sqrt(1 - alpha)
    return 1 - root, (1 - alpha) / (1 - root)


def ef21_step(alpha: float, smooth_mean: float, L: float) -> float:
    """γ = 1/(L + M √(β/θ)), M = L_QM (EF21) or L_AM (EF21-W); 1/L for the identity (α = 1)."""
    theta, beta = ef21_theta_beta(alpha)
    return 1 / (L + smooth_mean * math.sqrt(beta / theta))


def ef21_pp_step(alpha: float, p: float, L_QM: float, L: float, s: float = 1e-3,
                 rho: float = 1e-3) -> float:
    """The EF21-PP theory step of the authors' framework (module docstring)."""
    theta = 1 - (1 + s) * (1 - alpha)
    beta = (1 + 1 / s) * (1 - alpha)
    theta_p = rho * p + theta * p - rho
    if theta_p <= 0:
        raise ValueError(f"EF21-PP theory step undefined: θ_p = {theta_p:.3g} ≤ 0 for α = "
                         f"{alpha:.3g}, p = {p}; give strategy.params.lr")
    B = (beta * p + (1 + 1 / rho) * (1 - p)) * L_QM ** 2
    return 1 / (L + math.sqrt(B / theta_p))


def quadratic_mean(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


# ------------------------------------------------------------------------ client half


def local_gradient(task: Task, model: torch.nn.Module, data: Dataset,
                   batch_fraction: float | None, generator: np.random.Generator
                   ) -> tuple[np.ndarray, float, int]:
    """∇f_i(x) on the whole shard, or on a τ-nice minibatch (τ = ⌊fraction·m⌋, EF21-SGD code).

    Returns (gradient as a float64 vector in ``state_dict`` order, loss, samples used).
    """
    m = len(data)
    x, y = data.x, data.y
    if batch_fraction is not None:
        index = np.sort(generator.choice(m, max(1, math.floor(batch_fraction * m)),
                                         replace=False))
        x, y = x[index], y[index]
    model.train()
    model.zero_grad()
    loss = task.loss(model, x, y)
    loss.backward()
    parts = []
    for value in model.state_dict(keep_vars=True).values():
        grad = value.grad if isinstance(value, torch.nn.Parameter) else None
        parts.append((torch.zeros_like(value) if grad is None else grad).detach().reshape(-1))
    gradient = torch.cat(parts).to(torch.float64).numpy()
    return gradient, float(loss.item()), len(y)


def client_input(task: Task, partition: int, message: Message, generator: np.random.Generator
                 ) -> tuple[np.ndarray, float, int, int]:
    """The vector u the client compresses, its loss, its work and its shard size.

    ``ef-input`` = "gradient": u = scale · (∇f_i(x) + noise), scale = ``ef-scale`` (EF21-W's
    1/(n w_i), EF14's γ); noise ~ N(0, ``ef-noise-std``² I) models a stochastic oracle
    (EControl's check). "local_sgd": u = x − (x after the scenario's local SGD), FedAvg's update.
    """
    config = message.content["config"]
    model = task.model_with(message.content["arrays"])
    data = task.train_data(partition)
    if config["ef-input"] == "local_sgd":
        start = flatten(message.content["arrays"])
        work, loss = local_sgd(model, task, data, TrainConfig.from_record(config))
        end = np.concatenate([v.detach().reshape(-1).to(torch.float64).numpy()
                              for v in model.state_dict().values()])
        # sent in the model's own precision (float32 for the CNNs): honest uplink bytes
        dtype = next(iter(message.content["arrays"].values())).dtype
        return (start - end).astype(dtype), loss, work, len(data)
    fraction = float(config["ef-batch-fraction"])
    gradient, loss, work = local_gradient(task, model, data, fraction if fraction > 0 else None,
                                          generator)
    noise_std = float(config["ef-noise-std"])
    if noise_std > 0:
        gradient = gradient + noise_std * generator.standard_normal(gradient.size)
    return float(config["ef-scale"]) * gradient, loss, work, len(data)


def run_client(message: Message, context: Context, update: ClientUpdate) -> Message:
    """A compressed-gradient client: input, error-feedback update of its memory, reply."""
    task, partition = client_task(context)
    config = message.content["config"]
    generator = rng(task.seed, "error-feedback", partition, int(config["server-round"]))
    u, loss, work, num_examples = client_input(task, partition, message, generator)
    key = "ef-memory"
    memory = ({k: v.numpy().copy() for k, v in context.state[key].items()}
              if key in context.state else {})
    compressor = make_compressor(json.loads(str(config["ef-compressor"])))
    sent = update(memory, u, compressor, generator, config)
    context.state[key] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in memory.items()})
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in sent.to_arrays().items()})
    return reply(message, arrays, **{"num-examples": num_examples, "train_loss": loss,
                                     WORK_KEY: work, "value_bits": sent.value_bits(),
                                     "index_bits": sent.index_bits()})


def ef21_update(memory: dict[str, np.ndarray], u: np.ndarray, compress: Compressor,
                generator: np.random.Generator, config: ConfigRecord) -> Compressed:
    """c = C(u − g), g ← g + c; the first message is u itself (g = 0 before it)."""
    if "g" not in memory:
        sent = Identity()(u, generator)
        memory["g"] = sent.to_dense().astype(np.float64)
        return sent
    sent = compress(u - memory["g"], generator)
    memory["g"] = memory["g"] + sent.to_dense()
    return sent


def train_ef21(message: Message, context: Context) -> Message:
    """EF21's client (all variants: the server's config carries the scale and batch)."""
    return run_client(message, context, ef21_update)


# ------------------------------------------------------------------------ server half


class CompressedGradientStrategy(FedAvg):
    """Shared server half of EF21, EF14, EControl and compressed FedAvg (see module docstring).

    Subclasses set ``message_type``, ``client_input`` and `apply` (how the weighted sum of the
    decoded messages moves x), and may override `step_size`, `weights` and `client_scales`.

    Parameters (all keyword):
    compressor : Compressor, default Top-K with K = 1
        Applied client-side to every message but a client's first (uncompressed) one.
    lr : float | None, default None
        A fixed step γ; None means the theory step times ``step_factor``.
    step_factor : float, default 1.0
        Multiplier of the theory step.
    participation : float, default 1.0
        Fraction of the online nodes sampled (uniformly, without replacement) each round from
        round 2 on; round 1 reaches every online node, whose uncompressed first message sets
        the memories (EF21-PP code).
    batch_fraction : float | None, default None
        None: full local gradients; else minibatches of ⌊fraction·m_i⌋ samples (EF21-SGD).
    gradient_noise_std : float, default 0.0
        Std of Gaussian noise added to each local gradient (a stochastic oracle).
    smoothness : (L_i array, L) | None
        From the task; needed unless ``lr`` is given.
    num_nodes : int
        n, the number of clients f averages over.
    seed : int
        Seeds participation sampling.
    services : GridServices | None
        The grid's services (the runner's); None: asked of the grid at the first round.

    Client i is the node holding partition i (node ids are opaque): sampling, s_i, a_i and
    the order of the sum go by partition, so a run on a SuperLink, whose ids are random and
    whose replies arrive in any order, gives the simulator's numbers.
    """

    message_type: ClassVar[str] = "train.ef21"
    input_kind: ClassVar[str] = "gradient"
    needs_step: ClassVar[bool] = True

    def __init__(self, *, num_nodes: int, seed: int, compressor: Compressor | None = None,
                 lr: float | None = None, step_factor: float = 1.0, participation: float = 1.0,
                 batch_fraction: float | None = None, gradient_noise_std: float = 0.0,
                 smoothness: Smoothness | None = None, services: GridServices | None = None,
                 **extra_config: Any) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.compressor = compressor if compressor is not None else TopK(k=1)
        self.lr, self.step_factor = lr, step_factor
        self.participation = participation
        self.batch_fraction, self.gradient_noise_std = batch_fraction, gradient_noise_std
        self.smoothness, self.num_nodes, self.seed = smoothness, num_nodes, seed
        self.extra_config = {f"ef-{k}": v for k, v in extra_config.items()}  # rule options
        if self.needs_step and lr is None and smoothness is None:
            raise ValueError("the theory step needs the task's smoothness constants "
                             "(task.smoothness()); give strategy.params.lr for this task")
        self.x: np.ndarray | None = None
        self.direction: np.ndarray | None = None  # EF21's g (EControl's h)
        self.gamma: float | None = None
        self._like: ArrayRecord | None = None
        self.services = services  # the grid's, not state: never checkpointed

    def partition_map(self, grid: Grid) -> PartitionMap:
        """Which partition each node holds (asks the grid once if no services were given)."""
        if self.services is None:
            self.services = services_for(grid, None)
        return self.services.partitions

    # -- what subclasses vary

    def step_size(self, alpha: float) -> float:
        """The theory γ before ``step_factor`` (EF21's, with L_QM)."""
        assert self.smoothness is not None
        local, L = self.smoothness
        return ef21_step(alpha, quadratic_mean(local), L)

    def weights(self, partitions: list[int]) -> np.ndarray:
        """a_i for the replying clients ``partitions``: 1/n (f averages over all n clients)."""
        return np.full(len(partitions), 1 / self.num_nodes)

    def client_scale(self, partition: int) -> float:
        """s_i, the factor on client i's gradient."""
        return 1.0

    def apply(self, aggregate: np.ndarray) -> None:
        """EF21: g ← g + Σ a_i c_i; x ← x − γ g."""
        assert self.x is not None and self.direction is not None and self.gamma is not None
        self.direction = self.direction + aggregate
        self.x = self.x - self.gamma * self.direction

    # -- the round

    def _start(self, arrays: ArrayRecord) -> None:
        self.x = flatten(arrays)
        self.direction = np.zeros_like(self.x)
        self._like = arrays
        if self.lr is not None:
            self.gamma = self.lr
        else:
            self.gamma = self.step_factor * self.step_size(self.compressor.alpha(self.x.size))

    def _sample(self, server_round: int, grid: Grid) -> list[int]:
        """The round's nodes, in partition order (the draw picks positions in that order)."""
        nodes = self.partition_map(grid).in_partition_order(grid.get_node_ids())
        if server_round == 1 or self.participation >= 1:
            return nodes
        size = max(1, math.floor(self.participation * len(nodes)))
        chosen = rng(self.seed, "ef-participation", server_round).choice(len(nodes), size,
                                                                          replace=False)
        return [nodes[i] for i in sorted(chosen)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.x is None:
            self._start(arrays)
        shared = dict(config) | {
            "server-round": server_round, "ef-input": self.input_kind,
            "ef-compressor": json.dumps(_spec_of(self.compressor)),
            "ef-batch-fraction": float(self.batch_fraction or 0.0),
            "ef-noise-std": float(self.gradient_noise_std),
        } | self.extra_config
        messages = []
        partition_of = self.partition_map(grid).partition_of
        for node in self._sample(server_round, grid):
            scale = self.client_scale(partition_of(node))
            node_config = ConfigRecord(shared | {"ef-scale": scale})
            content = RecordDict({"arrays": arrays, "config": node_config})
            messages.append(Message(content=content, dst_node_id=node,
                                    message_type=self.message_type))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid or self.x is None:
            return None, None
        assert self.services is not None  # set by configure_train
        partition_of = self.services.partitions.partition_of
        valid = sorted(valid, key=lambda m: partition_of(m.metadata.src_node_id))
        weights = self.weights([partition_of(m.metadata.src_node_id) for m in valid])
        aggregate = np.zeros_like(self.x)
        totals = {"value_bits": 0.0, "index_bits": 0.0}
        loss_sum, examples = 0.0, 0
        for weight, message in zip(weights, valid, strict=True):
            arrays = {k: v.numpy() for k, v in message.content["arrays"].items()}
            decoded = Compressed.from_arrays(arrays, self.x.size).to_dense().astype(np.float64)
            aggregate += weight * decoded
            metrics = message.content["metrics"]
            for key in totals:
                totals[key] += float(metrics[key])
            examples += int(metrics["num-examples"])
            loss_sum += float(metrics["train_loss"]) * int(metrics["num-examples"])
        self.apply(aggregate)
        assert self.x is not None and self._like is not None
        record = MetricRecord({
            "num-examples": examples, "train_loss": loss_sum / max(examples, 1),
            "uplink_value_bits": totals["value_bits"], "uplink_index_bits": totals["index_bits"],
            "step_size": float(self.gamma or 0.0),
        })
        if self.direction is not None:
            record["direction_norm_sq"] = float(self.direction @ self.direction)
        return unflatten(self.x, self._like), record


def _spec_of(compressor: Compressor) -> dict[str, Any]:
    """The scenario form of a compressor (a CompressorSpec member), for the client's config."""
    return asdict(compressor)  # type: ignore[call-overload]


class EF21(CompressedGradientStrategy):
    """EF21 (Richtárik, Sokolov, Fatkhullin, NeurIPS 2021): compress the change of the estimate.

    See the module docstring for the updates and step size; parameters as in
    `CompressedGradientStrategy` (default participation 1, full gradients).
    """


class EF21SGD(EF21):
    """EF21-SGD (EF21-BW): EF21 with minibatch gradients, ``batch_fraction`` = 0.5 by default."""


class EF21PP(EF21):
    """EF21-PP (EF21-BW): EF21 with ``participation`` = 0.5 of the clients per round by default.

    Unsampled clients keep g_i; the server adds (1/n) Σ_{i ∈ S_t} c_i. Theory step: the
    authors' framework formula (module docstring), with p = ``participation``.
    """

    def step_size(self, alpha: float) -> float:
        assert self.smoothness is not None
        local, L = self.smoothness
        return ef21_pp_step(alpha, self.participation, quadratic_mean(local), L)


class EF21W(EF21):
    """EF21-W (Richtárik, Gasanov, Burlachenko, ICLR 2024): EF21 weighted by w_i = L_i/Σ L_j.

    Client i compresses ∇f_i(x)/(n w_i) − g_i, the server adds Σ w_i c_i, and the theory step
    uses the arithmetic mean L_AM of the L_i (≤ L_QM, so a larger step). For positively
    homogeneous compressors (Top-K, Rand-K, sign) the iterates equal EF21's at the same step.
    """

    def _weights_from_smoothness(self) -> np.ndarray:
        if self.smoothness is None:
            raise ValueError("EF21-W weights need the task's smoothness constants L_i")
        local = np.asarray(self.smoothness[0], dtype=np.float64)
        return local / local.sum()

    def weights(self, partitions: list[int]) -> np.ndarray:
        return self._weights_from_smoothness()[partitions]

    def client_scale(self, partition: int) -> float:
        return float(1 / (self.num_nodes * self._weights_from_smoothness()[partition]))

    def step_size(self, alpha: float) -> float:
        assert self.smoothness is not None
        local, L = self.smoothness
        return ef21_step(alpha, float(np.mean(local)), L)


# ------------------------------------------------------------------------ registration


class CompressedGradientParams(BaseModel):
    """Hyperparameters shared by the compressed gradient methods (see the class docstring)."""

    model_config = ConfigDict(extra="forbid")
    compressor: CompressorSpec = Field(default_factory=lambda: TopK(k=1))
    lr: float | None = Field(default=None, gt=0, description="fixed γ; None: theory step")
    step_factor: float = Field(default=1.0, gt=0, description="multiplier of the theory step")
    participation: float = Field(default=1.0, gt=0, le=1)
    batch_fraction: float | None = Field(default=None, gt=0, le=1)
    gradient_noise_std: float = Field(default=0.0, ge=0)


class EF21SGDParams(CompressedGradientParams):
    batch_fraction: float | None = Field(default=0.5, gt=0, le=1)


class EF21PPParams(CompressedGradientParams):
    participation: float = Field(default=0.5, gt=0, le=1)


def task_smoothness(context: BuildContext) -> Smoothness | None:
    """(L_i, L) from the scenario's task, or None if the task has no smoothness constants."""
    method = getattr(context.task, "smoothness", None)
    return method() if method is not None else None


def builder(cls: type[CompressedGradientStrategy]
            ) -> Callable[[BaseModel, BuildContext], CompressedGradientStrategy]:
    """Build ``cls`` from its params; the task supplies L_i and L for the theory step."""

    def build(params: BaseModel, context: BuildContext) -> CompressedGradientStrategy:
        values = params.model_dump()
        values["compressor"] = getattr(params, "compressor")  # noqa: B009  (keep the object)
        return cls(num_nodes=context.num_nodes, seed=context.scenario.seed,
                   smoothness=task_smoothness(context), services=context.services, **values)

    return build


STRATEGIES = (
    StrategyInfo("ef21", "EF21: compressed gradient differences with a Markov estimate",
                 CompressedGradientParams, builder(EF21), {"train.ef21": train_ef21}),
    StrategyInfo("ef21_sgd", "EF21-SGD: EF21 with minibatch gradients", EF21SGDParams,
                 builder(EF21SGD), {"train.ef21": train_ef21}),
    StrategyInfo("ef21_pp", "EF21-PP: EF21 with partial participation", EF21PPParams,
                 builder(EF21PP), {"train.ef21": train_ef21}),
    StrategyInfo("ef21_w", "EF21-W: EF21 weighted by L_i, step with L_AM",
                 CompressedGradientParams, builder(EF21W), {"train.ef21": train_ef21}),
)
