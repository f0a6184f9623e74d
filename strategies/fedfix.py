"""FedFix-Δt, asynchronous FedAvg and FedBuff-c: time-driven aggregation of stale updates.

Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with
Asynchronous and Heterogeneous Clients Updates", JMLR 24(110), 2023 (arXiv 2206.10189).
Reference code: ``Accenture/Labs-Federated-Learning`` branch ``asynchronous_FL``.
Specification: ``shared/algorithms/part-a.md`` section 1.

Every scheme is the one server update

    θ^{n+1} = θ^n + η_g · Σ_{i ∈ R_n} d_i · Δ_i(θ^{ρ_i(n)}),   Δ_i = θ_i^K − θ^{ρ_i(n)}

where R_n are the clients aggregated at server step n, Δ_i the K-step local update a
client computed on the (possibly stale) model θ^{ρ_i(n)} it last received, and d_i a fixed
design weight. The schemes differ only in *when* the server steps and *who* is in R_n:

- FedFix-Δt: a step every Δt seconds with every client that has finished; finishers idle
  until the tick, then restart on the new model.
- asynchronous FedAvg: a step at each arrival with that client alone (ties in client order).
- FedBuff-c: a step once c clients have returned; the paper's form waits for c *distinct*
  clients (finishers idle until aggregated), Meta's original restarts each client at once and
  its buffer may hold several updates of one client.

Weights (p_i: client importance, τ_i: client i's expected job time, c: buffer size):

| scheme        | `identical` | `weight` (debiased: E[ω_i] ∝ p_i)    |
|---------------|-------------|--------------------------------------|
| FedFix-Δt     | 1           | p_i ⌈τ_i / Δt⌉                       |
| Async, FedBuff| 1 / c       | p_i τ_i Σ_j (1/τ_j) / c              |

The buffered `weight` is exact for Async and for Meta's FedBuff (client i contributes at
rate 1/τ_i, steps happen at rate Σ_j (1/τ_j) / c); for the paper's FedBuff with c > 1 it is
an approximation (waiting changes the rates; the paper's experiments use `identical`).

τ_i is the device's EXPECTED job time in simulation: the work of one job (local steps ×
batch size, or epochs × shard size, in samples) / speed × mean straggling slowdown, plus the
downlink and uplink time of the model's bytes (dropouts are not counted). On a deployed grid
(no device model) or with `job_times="measured"`, τ_i is the mean of the client's measured
push-to-reply times so far (a client not yet back counts the time since its job started).

The client returns Δ_i (not its model), so channel noise hits the update. Staleness
n − ρ_i(n) of each contribution is reported per step as `staleness_mean`/`staleness_max`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.clock import RESOLUTION_S, Clock, clock_for
from fedsim.core.codec import flatten, model_to_arrays, unflatten
from fedsim.core.keys import WORK_KEY
from fedsim.core.schema import GilbertElliottStraggling, IidStraggling, Scenario
from fedsim.core.training import TrainConfig, local_sgd
from fedsim.engine.channel import payload_nbytes, transfer_time
from fedsim.engine.grid import NODE_ID_OFFSET
from strategies import BuildContext, StrategyInfo

MESSAGE_TYPE = "train.fedfix"
Weighting = Literal["identical", "weight"]
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


# --------------------------------------------------------------------------- client half

def train_fedfix(message: Message, context: Context) -> Message:
    """Local SGD from the received model; replies Δ = θ^K − θ (fresh momentum every job)."""
    task, partition = client_task(context)
    received = message.content["arrays"]
    model = task.model_with(received)
    data = task.train_data(partition)
    samples, loss = local_sgd(model, task, data, TrainConfig.from_record(message.content["config"]))
    delta = flatten(model_to_arrays(model)) - flatten(received)
    return reply(message, unflatten(delta, received),
                 **{"num-examples": len(data), "train_loss": loss, WORK_KEY: samples})


# --------------------------------------------------------------------------- server half

@dataclass
class _Job:
    message_id: str
    version: int  # ρ_i: the server step whose model the client trains on
    started: float


@dataclass
class _Server:
    """Server state: the model, its version, every client's job and its measured times."""

    theta: np.ndarray
    like: ArrayRecord
    version: int = 0
    jobs: dict[int, _Job] = field(default_factory=dict)  # node -> job in flight
    durations: dict[int, list[float]] = field(default_factory=dict)
    started_at: dict[int, float] = field(default_factory=dict)  # node -> last job start

    def arrays(self) -> ArrayRecord:
        return unflatten(self.theta, self.like)


@dataclass
class _Arrival:
    node: int
    reply: Message
    version: int


class EventDrivenFedAvg(FedAvg):
    """Base of the time-driven schemes: θ ← θ + η_g Σ d_i Δ_i at times the subclass picks.

    Parameters
    ----------
    weighting : "identical" | "weight" (default "weight")
        Design weights d_i, see the module docstring.
    server_lr : float (default 1.0)
        η_g.
    importance : Sequence[float] | None (default None: uniform)
        p_i per partition (normalised here).
    expected_job_times : Sequence[float] | None (default None: measured online)
        τ_i per partition, in seconds.
    time_budget_s : float | None (default None)
        Stop at the first step that would happen after this time (besides `num_rounds`).
    """

    def __init__(self, weighting: Weighting = "weight", server_lr: float = 1.0,
                 importance: Sequence[float] | None = None,
                 expected_job_times: Sequence[float] | None = None,
                 time_budget_s: float | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.weighting = weighting
        self.server_lr = server_lr
        self.importance = None if importance is None else np.asarray(importance, float)
        self.expected_job_times = (None if expected_job_times is None
                                   else np.asarray(expected_job_times, float))
        self.time_budget_s = math.inf if time_budget_s is None else time_budget_s
        self._server: _Server | None = None
        self._clock: Clock | None = None
        self._num_nodes = 0
        self._step_versions: list[int] = []
        self._idle: set[int] = set()
        self._result = Result()
        self._owed: list[int] = []  # clients the last step restarts once it is recorded
        self._arrivals: list[_Arrival] = []  # FedBuff: arrived, not yet in the buffer
        self._buffer: list[_Arrival] = []  # FedBuff: in the buffer, not yet aggregated
        self._resumed = False

    resumes_own_loop = True  # `start()` continues from a restored server (fedsim.checkpoint)
    _LOOP_STATE = ("_server", "_step_versions", "_num_nodes", "_idle", "_result", "_owed",
                   "_arrivals", "_buffer")

    def checkpoint_state(self) -> dict[str, Any]:
        """The event loop's state at the end of a server step (taken while it is recorded)."""
        return copy.deepcopy({key: getattr(self, key) for key in self._LOOP_STATE})

    def restore_state(self, state: dict[str, Any]) -> None:
        vars(self).update(copy.deepcopy(state))
        self._resumed = True

    # ------------------------------------------------------------ weights

    def p(self, node: int) -> float:
        if self.importance is None:
            return 1.0 / self._num_nodes
        return float(self.importance[node] / self.importance.sum())

    def job_time(self, node: int) -> float:
        """τ_i: expected if known, else the mean measured time (see the module docstring)."""
        if self.expected_job_times is not None:
            return float(self.expected_job_times[node])
        assert self._server is not None and self._clock is not None
        measured = self._server.durations.get(node)
        if measured:
            return float(np.mean(measured))
        started = self._server.started_at.get(node, 0.0)
        return max(self._clock.now() - started, RESOLUTION_S)

    def design_weight(self, node: int) -> float:
        """d_i of the scheme (overridden by each scheme)."""
        raise NotImplementedError

    # ------------------------------------------------------------ aggregation

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One server step θ ← θ + η_g Σ d_i Δ_i over `replies` (the step's R_n)."""
        server = self._server
        assert server is not None
        replies = list(replies)
        step = np.zeros_like(server.theta)
        staleness, losses, examples = [], [], []
        for message, version in zip(replies, self._step_versions, strict=True):
            node = _partition(message.metadata.src_node_id)
            step += self.design_weight(node) * flatten(message.content["arrays"])
            staleness.append(server.version - version)
            metrics = message.content["metrics"]
            losses.append(float(metrics["train_loss"]))
            examples.append(float(metrics["num-examples"]))
        server.theta = server.theta + self.server_lr * step
        server.version += 1
        out: dict[str, float] = {"clients": float(len(replies))}
        if replies:
            out |= {"train_loss": float(np.average(losses, weights=examples)),
                    "num-examples": float(sum(examples)),
                    "staleness_mean": float(np.mean(staleness)),
                    "staleness_max": float(np.max(staleness))}
        return server.arrays(), MetricRecord(out)

    # ------------------------------------------------------------ the event loop

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Push a job to every node, then step as the scheme says; `num_rounds` = server steps.

        After a checkpoint restore it goes on from the restored step: the restarts that step
        owed, then the scheme's loop with the jobs, arrivals and buffer as they were.
        """
        self._clock = clock_for(grid)
        self._config = train_config or ConfigRecord()
        self._grid = grid
        self._evaluate_fn = evaluate_fn
        if self._resumed:
            self._resumed = False
            self._restart_owed()
        else:
            self._server = _Server(flatten(initial_arrays).copy(), initial_arrays)
            self._step_versions = []
            self._result = Result(arrays=initial_arrays)
            nodes = list(grid.get_node_ids())
            self._num_nodes = (len(self.expected_job_times)
                               if self.expected_job_times is not None
                               else len(self.importance) if self.importance is not None
                               else len(nodes))
            self._idle = set()
            if evaluate_fn:
                evaluate_fn(0, initial_arrays)
            self._restart([_partition(n) for n in nodes])
        self.run_schedule(num_rounds)
        self._result.arrays = self._server.arrays()
        return self._result

    def run_schedule(self, num_rounds: int) -> None:
        """The scheme's loop of server steps (overridden by each scheme)."""
        raise NotImplementedError

    def _restart(self, partitions: Iterable[int]) -> None:
        """Send the current model to these clients now (offline ones idle until next step)."""
        server, clock = self._server, self._clock
        assert server is not None and clock is not None
        online = {_partition(n) for n in self._grid.get_node_ids()}
        messages, starting = [], []
        for node in sorted(set(partitions) | self._idle):
            if node not in online:
                self._idle.add(node)
                continue
            self._idle.discard(node)
            content = RecordDict({"arrays": server.arrays(), "config": self._config})
            messages.append(Message(content, node + NODE_ID_OFFSET, MESSAGE_TYPE,
                                    group_id=str(server.version)))
            starting.append(node)
        ids = self._grid.push_messages(messages) if messages else []
        now = clock.now()
        for node, message_id in zip(starting, ids, strict=True):
            server.jobs[node] = _Job(message_id, server.version, now)
            server.started_at[node] = now

    def _restart_owed(self) -> None:
        owed, self._owed = self._owed, []
        if owed:
            self._restart(owed)

    def _in_flight(self) -> list[str]:
        assert self._server is not None
        return [job.message_id for job in self._server.jobs.values()]

    def _arrive(self, replies: Iterable[Message]) -> tuple[list[_Arrival], list[int]]:
        """Book replies in client order: (successful arrivals, nodes whose job failed)."""
        server, clock = self._server, self._clock
        assert server is not None and clock is not None
        arrivals, failed = [], []
        for message in sorted(replies, key=lambda m: m.metadata.src_node_id):
            node = _partition(message.metadata.src_node_id)
            job = server.jobs.pop(node)
            if message.has_error():
                failed.append(node)
                continue
            server.durations.setdefault(node, []).append(clock.now() - job.started)
            arrivals.append(_Arrival(node, message, job.version))
        return arrivals, failed

    def _step(self, arrivals: Sequence[_Arrival], restart: Sequence[int] = ()) -> None:
        """Aggregate these contributions as the next server step, record it, then restart
        the `restart` clients on the new model.

        The restarts wait in `_owed` while the step is recorded, so that a checkpoint taken
        then holds a loop state the resumed run can go on from.
        """
        self._owed = list(restart)
        server = self._server
        assert server is not None
        self._step_versions = [a.version for a in arrivals]
        arrays, metrics = self.aggregate_train(server.version + 1, [a.reply for a in arrivals])
        if metrics is not None:
            self._result.train_metrics_clientapp[server.version] = metrics
        if self._evaluate_fn:
            evaluated = self._evaluate_fn(server.version, arrays)
            if evaluated is not None:
                self._result.evaluate_metrics_serverapp[server.version] = evaluated
        self._restart_owed()


class FedFix(EventDrivenFedAvg):
    """FedFix-Δt (Fraboni et al., JMLR 2023): aggregate every Δt seconds whoever has finished.

    Parameters (besides `EventDrivenFedAvg`'s)
    ----------
    period_s : float (default 0.5)
        Δt, the aggregation period in (virtual or wall) seconds.
    ceil_factor : bool (default True)
        `weight` uses d_i = p_i ⌈τ_i/Δt⌉; False drops the factor (d_i = p_i), which biases the
        fixed point toward fast clients (kept for the spec's failure test).
    """

    def __init__(self, period_s: float = 0.5, ceil_factor: bool = True, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.period_s = period_s
        self.ceil_factor = ceil_factor

    def design_weight(self, node: int) -> float:
        if self.weighting == "identical":
            return 1.0
        periods = math.ceil(self.job_time(node) / self.period_s - RESOLUTION_S)
        return self.p(node) * (max(periods, 1) if self.ceil_factor else 1)

    def run_schedule(self, num_rounds: int) -> None:
        assert self._server is not None and self._clock is not None
        while self._server.version < num_rounds:
            tick = (self._server.version + 1) * self.period_s
            if tick > self.time_budget_s + RESOLUTION_S:
                return
            finished, failed = self._arrive(
                self._clock.collect_until(self._grid, self._in_flight(), tick))
            self._step(finished, restart=[a.node for a in finished] + failed)


class FedBuff(EventDrivenFedAvg):
    """FedBuff-c as in Fraboni et al. (JMLR 2023), or Nguyen et al.'s original (AISTATS 2022).

    Parameters (besides `EventDrivenFedAvg`'s)
    ----------
    buffer_size : int (default 2)
        c, the contributions per server step.
    restart : "after_aggregation" | "immediately" (default "after_aggregation")
        The paper's form: c distinct clients, finishers wait to be aggregated and then restart
        on the new model. "immediately": Meta's original, a finisher restarts at once on the
        current model and the buffer may hold several updates of one client.
    """

    def __init__(self, buffer_size: int = 2,
                 restart: Literal["after_aggregation", "immediately"] = "after_aggregation",
                 **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.buffer_size = buffer_size
        self.restart = restart

    def design_weight(self, node: int) -> float:
        if self.weighting == "identical":
            return 1.0 / self.buffer_size
        rate = sum(1.0 / self.job_time(j) for j in range(self._num_nodes))
        return self.p(node) * self.job_time(node) * rate / self.buffer_size

    def run_schedule(self, num_rounds: int) -> None:
        assert self._server is not None and self._clock is not None
        while self._server.version < num_rounds:
            if not self._arrivals:
                replies = self._clock.wait_for_replies(self._grid, self._in_flight(),
                                                       until=self.time_budget_s)
                if not replies:
                    return  # time budget reached, or nothing in flight (all offline)
                self._arrivals, failed = self._arrive(replies)
                self._restart(failed)
            arrival = self._arrivals.pop(0)  # one at a time, in client order (ties)
            self._buffer.append(arrival)
            restart = [arrival.node] if self.restart == "immediately" else []
            if len(self._buffer) == self.buffer_size:
                buffer, self._buffer = self._buffer, []
                if self.restart == "after_aggregation":
                    restart = [a.node for a in buffer]
                self._step(buffer, restart)
            elif restart:
                self._restart(restart)


class AsyncFedAvg(FedBuff):
    """Asynchronous FedAvg (as in Fraboni et al., JMLR 2023): a server step per arrival.

    FedBuff with c = 1: each returning client is aggregated alone (d_i = 1 `identical`,
    p_i τ_i Σ_j 1/τ_j `weight`) and restarts at once on the new model; simultaneous arrivals
    are aggregated one at a time in client-index order.
    """

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(buffer_size=1, **kwargs)


def _partition(node_id: int) -> int:
    return int(node_id) - NODE_ID_OFFSET


# --------------------------------------------------------------------------- expected job times

def expected_job_times(scenario: Scenario, ctx: BuildContext) -> list[float] | None:
    """τ_i = downlink + work / speed × E[slowdown] + uplink, from the device model."""
    from fedsim.engine.tasks import make_task
    from fedsim.runner import initial_arrays

    devices = ctx.devices
    if devices is None:
        return None
    task = make_task(scenario)
    nbytes = payload_nbytes(RecordDict({"arrays": initial_arrays(task, scenario.seed)}))
    config = TrainConfig.from_spec(scenario.training)
    times = []
    for node in range(devices.n):
        tier = devices.tiers[int(devices.tier_of[node])]
        work = _samples_per_job(len(task.train_data(node)), config)
        compute = work / devices.speed[node] * _mean_slowdown(tier.straggling)
        links = (transfer_time(devices.downlink(node, scenario.channel.downlink), nbytes)
                 + transfer_time(devices.uplink(node, scenario.channel.uplink), nbytes))
        times.append(float(compute + links))
    return times


def _samples_per_job(n: int, config: TrainConfig) -> int:
    """Samples local SGD processes in one job (the batches of `local_batches`)."""
    if n == 0:
        return 0
    size = min(config.batch_size, n)
    epoch = [size] * (n // size) + ([n % size] if n % size else [])
    if not config.local_steps:
        return config.local_epochs * n
    full, rest = divmod(config.local_steps, len(epoch))
    return full * n + sum(epoch[:rest])


def _mean_slowdown(straggling: object) -> float:
    if isinstance(straggling, IidStraggling):
        return 1 + straggling.p * (straggling.slowdown - 1)
    if isinstance(straggling, GilbertElliottStraggling):
        bad = straggling.p_enter / (straggling.p_enter + straggling.p_exit)
        return 1 + bad * (straggling.slowdown - 1)
    return 1.0


# --------------------------------------------------------------------------- registration

class _CommonParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weighting: Weighting = "weight"
    server_lr: float = Field(default=1.0, gt=0)
    importance: Literal["uniform", "samples"] = Field(
        default="uniform", description="p_i: uniform, or proportional to the shard size")
    job_times: Literal["expected", "measured"] = Field(
        default="expected", description="τ_i from the device model, or measured online")
    time_budget_s: float | None = Field(default=None, gt=0)


class FedFixParams(_CommonParams):
    period_s: float = Field(default=0.5, gt=0, description="Δt")
    ceil_factor: bool = True


class FedBuffParams(_CommonParams):
    buffer_size: int = Field(default=2, ge=1, description="c")
    restart: Literal["after_aggregation", "immediately"] = "after_aggregation"


def _common(params: _CommonParams, ctx: BuildContext) -> dict:
    importance = None
    if params.importance == "samples":
        from fedsim.engine.tasks import make_task

        task = make_task(ctx.scenario)
        importance = [len(task.train_data(i)) for i in range(ctx.num_nodes)]
    times = (expected_job_times(ctx.scenario, ctx) if params.job_times == "expected" else None)
    return {"weighting": params.weighting, "server_lr": params.server_lr,
            "importance": importance, "expected_job_times": times,
            "time_budget_s": params.time_budget_s}


def _build_fedfix(params: FedFixParams, ctx: BuildContext) -> FedFix:
    return FedFix(period_s=params.period_s, ceil_factor=params.ceil_factor,
                  **_common(params, ctx))


def _build_fedbuff(params: FedBuffParams, ctx: BuildContext) -> FedBuff:
    return FedBuff(buffer_size=params.buffer_size, restart=params.restart,
                   **_common(params, ctx))


def _build_async(params: _CommonParams, ctx: BuildContext) -> AsyncFedAvg:
    return AsyncFedAvg(**_common(params, ctx))


_CLIENT = {MESSAGE_TYPE: train_fedfix}
STRATEGIES = (
    StrategyInfo("fedfix", "FedFix-Δt: aggregate finished clients every Δt, debiased weights",
                 FedFixParams, _build_fedfix, _CLIENT),
    StrategyInfo("async_fedavg", "asynchronous FedAvg: one server step per arriving client",
                 _CommonParams, _build_async, _CLIENT),
    StrategyInfo("fedbuff", "FedBuff-c: a server step once c client updates are buffered",
                 FedBuffParams, _build_fedbuff, _CLIENT),
)
