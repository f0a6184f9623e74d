"""FedSpeed: prox-correction plus gradient perturbation.

Yan Sun, Li Shen, Tiansheng Huang, Liang Ding, Dacheng Tao, "FedSpeed: Larger Local Interval,
Less Communication Round, and Higher Generalization Accuracy", ICLR 2023 (arXiv 2302.10429).
Official code: https://github.com/woodenchild95/FL-Simulator (``client/fedspeed.py``,
``optimizer/ESAM.py``, ``server/FedSpeed.py``; checked at commit 502bec6).

FedProx's proximal pull (1/2λ)‖x − x^t‖² keeps local models close but biases the fixed point.
FedSpeed adds a per-client prox-correction ĝ_i (a dual variable built from the client's past
drifts) that cancels the bias, so full-participation training reaches the exact optimum of the
global objective; each local gradient is also a merge of the plain gradient and one taken after a
SAM-like ascent step of size ρ, against local overfitting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import Field

from fedsim.core.client import client_task, reply
from fedsim.core.codec import flatten, model_to_arrays, unflatten
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.training import TrainConfig, local_batches
from strategies import FEDAVG_DEFAULTS, BuildContext, FedAvgParams, StrategyInfo

ServerRule = Literal["paper", "official"]

MESSAGE_TYPE = "train.fedspeed"
CORRECTION_KEY = "fedspeed-correction"
"""Context.state key of ĝ_i, the node's prox-correction (flat float64 over the parameters)."""


class FedSpeed(FedAvg):
    """FedSpeed (Sun et al., ICLR 2023), the paper's Algorithm 1 by default.

    Client i, holding ĝ_i (zero at first; kept in its Context.state across rounds, unchanged
    when not sampled), from x_{i,0} = x^t, for k = 0..K−1 on one minibatch ξ each:

        g1 = ∇f_i(x_{i,k}; ξ);   y = x_{i,k} + ρ·g1 (÷‖g1‖ if `perturb_normalize`)    (lines 7-8)
        g2 = ∇f_i(y; ξ);         g = (1 − α)·g1 + α·g2                               (lines 9-10)
        x_{i,k+1} = x_{i,k} − η_l·(g − ĝ_i + (1/λ)(x_{i,k} − x^t))                   (line 11)

    then ĝ_i ← ĝ_i − (1/λ)(x_{i,K} − x^t) (line 13) and it uploads x̂_i = x_{i,K} − λ·ĝ_i
    (line 14). The server averages the uploads of the active clients (`server_rule="paper"`).

    Sign convention (the official code's; FLGo's newer port flips it): λĝ_i = −h_i with
    h_i = Σ_past (x_{i,K} − x^t) the client's accumulated drift, so the local step contains
    "− ĝ_i", i.e. "+ h_i/λ", and x̂_i = x_{i,K} + h_i whatever λ is. With the opposite sign
    FedSpeed does not reach x* on two quadratics of different curvatures
    (tests/test_fedspeed.py).

    Differences of the official code, as options: it normalises the ascent step,
    y = x + ρ·g1/(‖g1‖ + ε) with ε = 1e-7 (`perturb_normalize=True`, `perturb_eps=1e-7`, the
    defaults here; whether the paper normalises could not be checked), uses only g2
    (`alpha=1`), and sets x^{t+1} = mean_{active}(x_{i,K}) + mean_{all N}(h_i), FedDyn-style
    (`server_rule="official"`: clients upload x_{i,K}; the server keeps H = mean_i h_i, adding
    (x_{i,K} − x^t)/N per report). With full participation both rules give the same iterates.

    Not reproduced, and what happens instead:
    - lr decay: the official server multiplies the local lr by 0.998 every round; here every
      round's local steps use the scenario's constant `training.lr` (fedsim has no per-round lr
      schedule). Over T rounds the official lr ends at 0.998^T of it (0.37 at T = 500), so long
      runs here take larger late steps.
    - gradient clip: the official code clips the norm of each local step's g2 plus the
      correction term to 10 before the SGD step; here the step is never clipped. It only differs
      when that norm exceeds 10 (large early gradients, or a large drift h_i/λ).
    - weight decay: the official code folds the prox pull into SGD's weight decay; here the
      prox term is explicit and a scenario's `training.weight_decay` is added as + wd·x.
    The averages are weighted by `weighted_by_key` as in FedAvg (uniform when shards are
    balanced, as in the paper); H is uniform over the N clients.

    Cost: two forward/backward passes per local step when ρ > 0 and α > 0 (reported as work).

    Parameters
    ----------
    prox_lambda : float (default: 10.0)
        λ; the prox strength is 1/λ (the official code's `lamb` = 0.1).
    rho : float (default: 0.1)
        Ascent step (perturbation radius) ρ; 0 disables the perturbation.
    alpha : float (default: 0.9)
        Merge weight α of the perturbed gradient (official: effectively 1).
    perturb_normalize : bool (default: True)
        Normalise the ascent direction, y = x + ρ·g1/(‖g1‖ + ε) (official code, standard SAM).
    perturb_eps : float (default: 1e-7)
        ε of the normalisation, which keeps a vanishing gradient from blowing up the ascent step;
        1e-7 is the official code's (fixed there).
    server_rule : "paper" | "official" (default: "paper")
        Average x̂_i over active clients, or mean active x_{i,K} plus H over all N clients.
    prox_correction : bool (default: True)
        Keep ĝ_i. False holds it at zero: local FedProx with μ = 1/λ (the prox-correction's
        failure test: the fixed point is then biased).
    num_nodes : int or None (default: None)
        N, the population size ("official" rule); the builder passes the scenario's count.
    **fedavg
        Flower's FedAvg arguments (fraction_train, min_train_nodes, weighted_by_key...);
        the min_* counts default to 1.
    """

    def __init__(self, prox_lambda: float = 10.0, rho: float = 0.1, alpha: float = 0.9,
                 perturb_normalize: bool = True, perturb_eps: float = 1e-7,
                 server_rule: ServerRule = "paper",
                 prox_correction: bool = True, num_nodes: int | None = None,
                 **fedavg: Any) -> None:
        super().__init__(**{**FEDAVG_DEFAULTS, **fedavg})
        if server_rule == "official" and not num_nodes:
            raise ValueError("server_rule='official' needs num_nodes (the population size N)")
        self.prox_lambda, self.rho, self.alpha = prox_lambda, rho, alpha
        self.perturb_normalize, self.prox_correction = perturb_normalize, prox_correction
        self.perturb_eps = perturb_eps
        self.server_rule, self.num_nodes = server_rule, num_nodes
        self.current_arrays: ArrayRecord | None = None
        self.mean_drift: np.ndarray | None = None  # H = mean_i h_i ("official" rule)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling, FedSpeed's settings in the config, message type train.fedspeed."""
        self.current_arrays = arrays
        return [Message(content=m.content, message_type=MESSAGE_TYPE,
                        dst_node_id=m.metadata.dst_node_id)
                for m in super().configure_train(server_round, arrays,
                                                 self.client_config(config), grid)]

    def client_config(self, config: ConfigRecord) -> ConfigRecord:
        """The train config plus λ, ρ, α, the normalisation and what the client uploads."""
        return ConfigRecord({
            **dict(config), "fedspeed-lambda": self.prox_lambda, "fedspeed-rho": self.rho,
            "fedspeed-alpha": self.alpha, "fedspeed-normalize": self.perturb_normalize,
            "fedspeed-eps": self.perturb_eps,
            "fedspeed-correction": self.prox_correction,
            "fedspeed-upload": "corrected" if self.server_rule == "paper" else "local"})

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Paper: the average of x̂_i. Official: the average of x_{i,K} plus H."""
        replies = list(replies)
        average, metrics = super().aggregate_train(server_round, replies)
        if self.server_rule == "paper" or average is None or self.current_arrays is None:
            return average, metrics
        assert self.num_nodes is not None
        start = flatten(self.current_arrays)
        if self.mean_drift is None:
            self.mean_drift = np.zeros_like(start)
        for message in replies:
            if not message.has_error():
                drift = flatten(message.content[self.arrayrecord_key]) - start
                self.mean_drift += drift / self.num_nodes
        return unflatten(flatten(average) + self.mean_drift, average), metrics


# ---------------------------------------------------------------------------- client half


def train_fedspeed(message: Message, context: Context) -> Message:
    """Lines 7-14 of Algorithm 1 on this node, with ĝ_i in `context.state`."""
    task, partition = client_task(context)
    content = message.content
    model = task.model_with(content["arrays"])
    record = content["config"]
    config = TrainConfig.from_record(record)
    lam = float(record["fedspeed-lambda"])  # type: ignore[arg-type]
    rho = float(record["fedspeed-rho"])  # type: ignore[arg-type]
    alpha = float(record["fedspeed-alpha"])  # type: ignore[arg-type]
    normalize, use_correction = bool(record["fedspeed-normalize"]), bool(
        record["fedspeed-correction"])
    eps = float(record["fedspeed-eps"])  # type: ignore[arg-type]
    data = task.train_data(partition)

    model.train()
    params = list(model.parameters())
    anchor = [p.detach().clone() for p in params]
    stored = context.state.array_records.get(CORRECTION_KEY)
    g_hat = flatten(stored) if stored is not None else np.zeros(sum(p.numel() for p in params))
    correction = _like(g_hat, params)
    perturb = rho > 0 and alpha > 0
    work, samples, loss_sum = 0, 0, 0.0
    for x, y in local_batches(data, config):
        loss = task.loss(model, x, y)
        g1 = torch.autograd.grad(loss, params)
        grad = g1
        if perturb:
            scale = rho
            if normalize:
                norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in g1)))
                scale = rho / (norm + eps)
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, g in zip(params, g1, strict=True):
                    p.add_(g, alpha=scale)
            g2 = torch.autograd.grad(task.loss(model, x, y), params)
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
            grad = g2 if alpha == 1 else tuple(
                (1 - alpha) * a + alpha * b for a, b in zip(g1, g2, strict=True))
            work += len(x)
        with torch.no_grad():
            for p, g, c, a in zip(params, grad, correction, anchor, strict=True):
                step = g - c + (p - a) / lam
                if config.weight_decay:
                    step = step + config.weight_decay * p
                p.sub_(config.lr * step)
        work += len(x)
        samples += len(x)
        loss_sum += loss.item() * len(x)

    x_local = _vector(params)
    drift = x_local - _vector(anchor)
    if use_correction:
        g_hat = g_hat - drift / lam  # line 13
        context.state[CORRECTION_KEY] = ArrayRecord({"g_hat": Array(g_hat)})
    if record["fedspeed-upload"] == "corrected":
        upload = x_local - lam * g_hat  # line 14: x̂_i = x_{i,K} + h_i
        with torch.no_grad():
            for p, value in zip(params, _like(upload, params), strict=True):
                p.copy_(value)
    return reply(message, model_to_arrays(model), **{
        "num-examples": len(data), "train_loss": loss_sum / max(samples, 1), WORK_KEY: work,
        "drift_norm": float(np.linalg.norm(drift))})


def _vector(tensors: Iterable[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors]).numpy()


def _like(vector: np.ndarray, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A flat vector as tensors shaped and typed like `params`."""
    out, offset = [], 0
    for p in params:
        chunk = vector[offset:offset + p.numel()]
        out.append(torch.from_numpy(np.ascontiguousarray(chunk)).reshape(p.shape).to(p.dtype))
        offset += p.numel()
    return out


# ---------------------------------------------------------------------------- registration


class FedSpeedParams(FedAvgParams):
    """Hyperparameters of FedSpeed (see `FedSpeed`)."""

    prox_lambda: float = Field(default=10.0, gt=0)
    rho: float = Field(default=0.1, ge=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    perturb_normalize: bool = True
    perturb_eps: float = Field(
        default=1e-7, ge=0, description="ε in the normalised ascent step ρ·g/(‖g‖ + ε); the "
        "official code's 1e-7")
    server_rule: ServerRule = "paper"
    prox_correction: bool = True


def build(params: FedSpeedParams, context: BuildContext) -> FedSpeed:
    if context.scenario.training.momentum:
        raise ScenarioError("training.momentum: FedSpeed's local solver is plain SGD; set it to 0")
    return FedSpeed(**params.model_dump(), num_nodes=context.num_nodes)


STRATEGIES = (
    StrategyInfo("fedspeed", "FedSpeed: prox-correction + perturbed local gradients",
                 FedSpeedParams, build, client_actions={MESSAGE_TYPE: train_fedspeed}),
)
