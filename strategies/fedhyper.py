"""FedHyper: hypergradient learning-rate schedulers for federated learning.

Ziyao Wang, Jianyu Wang, Ang Li, "FedHyper: A Universal and Robust Learning Rate Scheduler for
Federated Learning with Hypergradient Descent", ICLR 2024 (arXiv 2310.03156). Official code:
https://github.com/ATP-1010/FedHyper (``src/federated_main.py`` for G, GM and SL,
``src/update.py`` for CL; checked at commit d6a57c5).

Hypergradient descent (Baydin et al. 2018) moves a learning rate along minus the derivative of the
loss with respect to it, which is the inner product of consecutive gradients: agreeing steps grow
the rate, oscillating steps shrink it. FedHyper does this in three places:

- G   (server): the global lr η_g, from consecutive averaged pseudo-gradients Δ^t, Δ^{t-1};
- SL  (server): one local lr for all clients, from the same signal, broadcast in the train config;
- CL  (client): each client's local lr, per local step, plus a term with the previous round's
  global update Δ^{t-1} (sent down with the model) that keeps clients' rates from drifting apart.

All rates are clipped to bands around their initial values: local lrs to [η_l^0/10, 10·η_l^0]
(the paper's γ_β = 10, also the code's); the global lr by default to the official code's
[0.2, 5]·η_g^0 (G) or [0.8, 5]·η_g^0 (GM). The paper's global constant γ_α = 3, a band
[η_g^0/3, 3·η_g^0], is `global_clip_factor=3`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import Field, model_validator

from fedsim.core.client import client_task, reply
from fedsim.core.codec import flatten, model_to_arrays, unflatten
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.training import TrainConfig, local_batches, make_optimizer
from strategies import FEDAVG_DEFAULTS, BuildContext, FedAvgParams, StrategyInfo

Scheduler = Literal["G", "SL", "CL"]
CLForm = Literal["additive", "multiplicative"]

MESSAGE_TYPE = "train.fedhyper"
DELTA_KEY = "global_delta"
"""Content key of Δ^{t-1}, the previous round's averaged pseudo-gradient (sent for CL)."""


def clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def global_band(global_lr: float, clip_factor: float | None, server_momentum: float
                ) -> tuple[float, float]:
    """η_g's default clip band: [η/γ, γ·η], or the official code's ([0.2, 5] G, [0.8, 5] GM)."""
    if clip_factor is not None:
        return global_lr / clip_factor, global_lr * clip_factor
    return (0.8 if server_momentum else 0.2) * global_lr, 5.0 * global_lr


class FedHyper(FedAvg):
    """FedHyper (Wang, Wang, Li, ICLR 2024): FedAvg with hypergradient lr schedulers.

    Δ^t = w^t − avg_m w_m^{t,K} is the averaged pseudo-gradient (weighted by `weighted_by_key`, as
    in FedAvg). With t the 0-based round:

    - G:  η_g^t = clip(η_g^{t-1} + β_g·⟨Δ^t, Δ^{t-1}⟩, global bounds);  w^{t+1} = w^t − η_g^t·Δ^t.
      The current Δ^t sets the same round's η_g (Baydin's ordering); η_g stays put in round 0.
    - GM (`server_momentum` μ > 0, the code's FedHyper-GM with μ = 0.9):
      m^t = Δ^t + μ·m^{t-1};  η_g^t = clip(η_g^{t-1} + β_g·⟨Δ^t, m^{t-1}⟩);
      w^{t+1} = w^t − Δ^t − (η_g^t − 1)·m^t.
    - SL: A^t = A^{t-1} + β_sl·⟨Δ^t, Δ^{t-1}⟩;  η_l^{t+1} = clip(η_l^0·(1 + A^t), local bounds),
      sent as the next round's train `lr`. The rate PERSISTS across rounds: the released script
      resets every client's lr to η_l^0 each round, so its SL does nothing; that bug is not
      reproduced here.
    - CL: per local step k, on the client (see `train_fedhyper`). `cl_form="additive"` (default)
      is the paper's Eq. 20 (a hypergradient step plus a (1/K)-scaled global term; the exact algebra
      is reconstructed from reviews of the paper, not from its method section):
      η^k = clip(η^{k-1} + β_l·[⟨g^k, g^{k-1}⟩ + s·⟨g^k, Δ^{t-1}⟩], local bounds), s = 1/K, the
      local product being absent at k = 0. `cl_form="multiplicative"` is the official code's:
      with δ^{(j)} = w^{(j+1)} − w^{(j)} the change made by local step j (j = 0..K−1) and
      D = −Δ^{t-1}, after each step j ≥ 1
      η ← clip(η·min(cap, 1 + β_l·[⟨δ^{(j)}, δ^{(j-1)}⟩ + s·⟨δ^{(j)}, D⟩]), local bounds),
      s = 0.1/S (S clients this round), with δ^{(0)} replaced by D at j = 1. There is no update
      after step 0, so steps 0 and 1 both run at the round's lr. Both forms restart each round
      from the round's local lr.

    Schedulers combine freely (`schedulers=["G", "CL"]` is the paper's Fig. 7; GM + CL is the
    code's FedHyper-FULL). The server state (η_g, Δ^{t-1}, m, A, η_l) lives on the instance.

    Raw inner products depend on the parameter scale, so β = 1 (the code's) can saturate a clip
    band in one step on a real model; lower β_* to make the schedules gradual.

    Deviations from the official code: β_g, β_sl, β_l are settings (the code's rules are β = 1);
    SL persists (above); S is the number of clients sampled this round (the code's
    num_users·frac); the local optimizer is plain SGD (the code defaults to Adam, whose steps
    make the hypergradient mean something else); the bands scale with η_g^0 and η_l^0 (the code
    fixes η_g^0 = 1). The code's CL restarts its "no update after the first step" at every
    local epoch (its step counter is reset inside the epoch loop); here only the round's first
    step is skipped, so runs of several local epochs differ from it after the first epoch.

    Parameters
    ----------
    schedulers : list of "G" | "SL" | "CL" (default: ["G"])
        Which learning rates are adapted. An empty list is FedAvg.
    global_lr : float (default: 1.0)
        η_g^0, the initial (and, without G, the fixed) server learning rate.
    beta_g : float (default: 1.0)
        Hyper learning rate of G (the code uses the raw product, i.e. 1).
    global_clip_factor : float or None (default: None)
        γ_α: η_g stays in [η_g^0/γ_α, γ_α·η_g^0] (the paper's γ_α = 3). None: the official
        code's band, [0.2, 5]·η_g^0 for G and [0.8, 5]·η_g^0 for GM.
    global_lr_bounds : (float, float) or None (default: None)
        Explicit clip band for η_g; overrides `global_clip_factor`.
    server_momentum : float (default: 0.0)
        μ of the GM variant; 0 is plain G.
    beta_sl : float (default: 1.0)
        Hyper learning rate of SL's accumulator.
    beta_l : float (default: 1.0)
        Hyper learning rate of CL.
    local_clip_factor : float (default: 10.0)
        γ_β: local lrs stay in [η_l^0/γ_β, γ_β·η_l^0] unless `local_lr_bounds` is given.
    local_lr_bounds : (float, float) or None (default: None)
        Explicit clip band for SL and CL local lrs.
    cl_form : "additive" | "multiplicative" (default: "additive")
        The paper's additive per-step rule, or the reference code's multiplicative one.
    cl_global_term : bool (default: True)
        Include CL's term in Δ^{t-1}; without it, Δ^{t-1} is not sent.
    cl_global_scale : float or None (default: None)
        Scale s of CL's global term; None: 1/K (additive) or 0.1/S (multiplicative).
    cl_growth_cap : float (default: 1.1)
        Largest per-step lr multiplier of the multiplicative form.
    **fedavg
        Flower's FedAvg arguments (fraction_train, min_train_nodes, weighted_by_key...);
        the min_* counts default to 1.
    """

    def __init__(self, schedulers: Iterable[Scheduler] = ("G",), global_lr: float = 1.0,
                 beta_g: float = 1.0, global_clip_factor: float | None = None,
                 global_lr_bounds: tuple[float, float] | None = None,
                 server_momentum: float = 0.0, beta_sl: float = 1.0, beta_l: float = 1.0,
                 local_clip_factor: float = 10.0,
                 local_lr_bounds: tuple[float, float] | None = None,
                 cl_form: CLForm = "additive", cl_global_term: bool = True,
                 cl_global_scale: float | None = None, cl_growth_cap: float = 1.1,
                 **fedavg: Any) -> None:
        super().__init__(**{**FEDAVG_DEFAULTS, **fedavg})
        self.schedulers = frozenset(schedulers)
        self.beta_g, self.beta_sl, self.beta_l = beta_g, beta_sl, beta_l
        self.global_lr_bounds = global_lr_bounds or global_band(global_lr, global_clip_factor,
                                                                server_momentum)
        self.local_clip_factor = local_clip_factor
        self.local_lr_bounds = local_lr_bounds
        self.server_momentum = server_momentum
        self.cl_form, self.cl_global_term = cl_form, cl_global_term
        self.cl_global_scale, self.cl_growth_cap = cl_global_scale, cl_growth_cap
        # server state
        self.eta_g = global_lr
        self.local_lr: float | None = None  # η_l of the coming round (SL), set from the config
        self.local_lr0: float | None = None
        self.sl_accumulator = 0.0
        self.prev_delta: np.ndarray | None = None
        self.momentum: np.ndarray | None = None
        self.current_arrays: ArrayRecord | None = None
        self.sent_local_lr = 0.0  # the lr this round's clients were sent (a metric)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling; SL's lr in the config; for CL, Δ^{t-1} and the CL settings."""
        self.current_arrays = arrays
        if self.local_lr0 is None:
            self.local_lr0 = float(config["lr"])  # type: ignore[arg-type]
            self.local_lr = self.local_lr0
            if self.local_lr_bounds is None:
                self.local_lr_bounds = (self.local_lr0 / self.local_clip_factor,
                                        self.local_lr0 * self.local_clip_factor)
        config = ConfigRecord(dict(config))  # the caller's record is reused every round
        if "SL" in self.schedulers:
            config["lr"] = self.local_lr
        self.sent_local_lr = float(config["lr"])  # type: ignore[arg-type]
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if "CL" not in self.schedulers or not messages:
            return messages
        content = messages[0].content  # one RecordDict shared by all messages
        content["config"] = self.cl_config(config, num_sampled=len(messages))
        if self.cl_global_term:
            previous = self.prev_delta if self.prev_delta is not None else flatten(arrays) * 0.0
            content[DELTA_KEY] = _as_float64_record(previous)
        return [Message(content=content, message_type=MESSAGE_TYPE,
                        dst_node_id=m.metadata.dst_node_id) for m in messages]

    def cl_config(self, config: ConfigRecord, num_sampled: int) -> ConfigRecord:
        """The train config plus what CL's clients need (band, β_l, form, S)."""
        if self.local_lr_bounds is None:  # not configured yet: derive from this config's lr
            lr0 = float(config["lr"])  # type: ignore[arg-type]
            self.local_lr_bounds = (lr0 / self.local_clip_factor, lr0 * self.local_clip_factor)
        return ConfigRecord({
            **dict(config), "fedhyper-cl-form": self.cl_form, "fedhyper-beta-l": self.beta_l,
            "fedhyper-lr-min": self.local_lr_bounds[0], "fedhyper-lr-max": self.local_lr_bounds[1],
            "fedhyper-growth-cap": self.cl_growth_cap, "fedhyper-num-sampled": num_sampled,
            **({} if self.cl_global_scale is None
               else {"fedhyper-global-scale": self.cl_global_scale}),
        })

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average (FedAvg), then the G/GM step and the SL update."""
        average, metrics = super().aggregate_train(server_round, replies)
        if average is None or self.current_arrays is None:
            return average, metrics
        delta = flatten(self.current_arrays) - flatten(average)
        previous = self.prev_delta if self.prev_delta is not None else np.zeros_like(delta)
        momentum = self.momentum if self.momentum is not None else np.zeros_like(delta)
        if "G" in self.schedulers:
            signal = momentum if self.server_momentum else previous
            self.eta_g = clip(self.eta_g + self.beta_g * float(delta @ signal),
                              self.global_lr_bounds)
        direction = delta
        if self.server_momentum:
            self.momentum = direction = delta + self.server_momentum * momentum
        # w^{t+1} = w^t − Δ − (η_g − 1)·d = average − (η_g − 1)·d; untouched (bit for bit) at 1
        if self.eta_g != 1.0:
            average = unflatten(flatten(average) - (self.eta_g - 1.0) * direction, average)
        if "SL" in self.schedulers:
            assert self.local_lr0 is not None and self.local_lr_bounds is not None
            self.sl_accumulator += self.beta_sl * float(delta @ previous)
            self.local_lr = clip(self.local_lr0 * (1.0 + self.sl_accumulator),
                                 self.local_lr_bounds)
        self.prev_delta = delta
        metrics = MetricRecord({**(dict(metrics) if metrics else {}), "eta_g": self.eta_g,
                                "server_local_lr": self.sent_local_lr})
        return average, metrics


def _as_float64_record(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"delta": Array(np.ascontiguousarray(vector, dtype=np.float64))})


# ---------------------------------------------------------------------------- client half (CL)


def additive_local_lr(lr: float, grad: np.ndarray, prev_grad: np.ndarray | None,
                      global_delta: np.ndarray | None, beta: float, global_scale: float,
                      bounds: tuple[float, float]) -> float:
    """Paper's CL step (Eq. 20): lr + β[⟨g^k, g^{k-1}⟩ + s⟨g^k, Δ^{t-1}⟩], clipped.

    ⟨g^k, Δ^{t-1}⟩ > 0 means the last global step went the way this client now descends.
    """
    signal = float(grad @ prev_grad) if prev_grad is not None else 0.0
    if global_delta is not None:
        signal += global_scale * float(grad @ global_delta)
    return clip(lr + beta * signal, bounds)


def multiplicative_local_lr(lr: float, change: np.ndarray, prev_change: np.ndarray | None,
                            global_change: np.ndarray | None, beta: float, global_scale: float,
                            growth_cap: float, bounds: tuple[float, float]) -> float:
    """Official code's CL update after step j ≥ 1: lr·min(cap, 1 + β[⟨δ_j, δ_{j-1}⟩ + s⟨δ_j, D⟩]).

    Clipped to `bounds`. δ are parameter changes and D = −Δ^{t-1} the global model's last
    (raw, averaged) change; at j = 1 `prev_change` is None and D takes δ_0's place.
    """
    before = prev_change if prev_change is not None else global_change
    signal = float(change @ before) if before is not None else 0.0
    if global_change is not None:
        signal += global_scale * float(change @ global_change)
    return clip(lr * min(growth_cap, 1.0 + beta * signal), bounds)


def _vector(tensors: Iterable[torch.Tensor]) -> np.ndarray:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors]).numpy()


def train_fedhyper(message: Message, context: Context) -> Message:
    """FedHyper-CL's client: plain local SGD with a per-step lr.

    Additive form: the lr is updated before every step from the current gradient. Multiplicative
    form (official code): updated after every step but the first, from the change just made.
    """
    task, partition = client_task(context)
    content = message.content
    model = task.model_with(content["arrays"])
    config_record = content["config"]
    config = TrainConfig.from_record(config_record)
    data = task.train_data(partition)
    bounds = (float(config_record["fedhyper-lr-min"]),  # type: ignore[arg-type]
              float(config_record["fedhyper-lr-max"]))  # type: ignore[arg-type]
    beta = float(config_record["fedhyper-beta-l"])  # type: ignore[arg-type]
    form = str(config_record["fedhyper-cl-form"])
    steps = config.local_steps or config.local_epochs * math.ceil(
        len(data) / max(min(config.batch_size, len(data)), 1))
    if "fedhyper-global-scale" in config_record:
        scale = float(config_record["fedhyper-global-scale"])  # type: ignore[arg-type]
    elif form == "additive":
        scale = 1.0 / max(steps, 1)
    else:
        scale = 0.1 / int(config_record["fedhyper-num-sampled"])  # type: ignore[arg-type]
    delta = flatten(content[DELTA_KEY]) if DELTA_KEY in content.array_records else None

    model.train()
    optimizer = make_optimizer(model, config)
    params = list(model.parameters())
    lr, lrs, previous = config.lr, [], None
    samples, loss_sum = 0, 0.0
    for step, (x, y) in enumerate(local_batches(data, config)):
        optimizer.zero_grad()
        loss = task.loss(model, x, y)
        loss.backward()
        if form == "additive":
            grad = _vector(p.grad for p in params)  # type: ignore[misc]
            lr = additive_local_lr(lr, grad, previous, delta, beta, scale, bounds)
            previous = grad
        # multiplicative: no update after step 0, so steps 0 and 1 both run at the round's lr
        before = _vector(params) if form == "multiplicative" and step > 0 else None
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        lrs.append(lr)
        if before is not None:
            change = _vector(params) - before  # δ^{(step)}; compared with D at step 1
            lr = multiplicative_local_lr(lr, change, previous, None if delta is None else -delta,
                                         beta, scale, float(config_record["fedhyper-growth-cap"]),
                                         bounds)
            previous = change
        samples += len(x)
        loss_sum += loss.item() * len(x)
    return reply(message, model_to_arrays(model), **{
        "num-examples": len(data), "train_loss": loss_sum / max(samples, 1), WORK_KEY: samples,
        "local_lr_mean": float(np.mean(lrs)) if lrs else config.lr,
        "local_lr_last": lrs[-1] if lrs else config.lr})


# ---------------------------------------------------------------------------- registration


class FedHyperParams(FedAvgParams):
    """Hyperparameters of FedHyper (see `FedHyper`); defaults follow the official code."""

    schedulers: list[Scheduler] = Field(default_factory=lambda: ["G"])
    global_lr: float = Field(default=1.0, gt=0)
    beta_g: float = Field(default=1.0, ge=0)
    global_clip_factor: float | None = Field(
        default=None, ge=1, description="band [η_g^0/γ, γ·η_g^0] (paper: 3); None: the official "
        "code's [0.2, 5]·η_g^0 (G) or [0.8, 5]·η_g^0 (GM)")
    global_lr_bounds: tuple[float, float] | None = None
    server_momentum: float = Field(default=0.0, ge=0, lt=1)
    beta_sl: float = Field(default=1.0, ge=0)
    beta_l: float = Field(default=1.0, ge=0)
    local_clip_factor: float = Field(default=10.0, ge=1)
    local_lr_bounds: tuple[float, float] | None = None
    cl_form: CLForm = "additive"
    cl_global_term: bool = True
    cl_global_scale: float | None = Field(default=None, ge=0)
    cl_growth_cap: float = Field(default=1.1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> FedHyperParams:
        if len(set(self.schedulers)) != len(self.schedulers):
            raise ValueError("schedulers: each of G, SL, CL at most once")
        for name in ("global_lr_bounds", "local_lr_bounds"):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] <= bounds[1]:
                raise ValueError(f"{name}: need 0 < low <= high, got {list(bounds)}")
        return self


def build(params: FedHyperParams, context: BuildContext) -> FedHyper:
    if "CL" in params.schedulers and context.scenario.training.momentum:
        raise ScenarioError("strategy.params.schedulers: FedHyper-CL adapts a plain-SGD lr; "
                            "set training.momentum to 0")
    return FedHyper(**params.model_dump())


STRATEGIES = (
    StrategyInfo("fedhyper", "FedHyper: hypergradient schedulers of the global and local lr",
                 FedHyperParams, build, client_actions={MESSAGE_TYPE: train_fedhyper}),
)
