"""FedFix-Δt, asynchronous FedAvg and FedBuff-c: time-driven aggregation of stale updates.

Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated Optimization with
Asynchronous and Heterogeneous Clients Updates", JMLR 24(110), 2023 (arXiv 2206.10189).
Official code: ``Accenture/Labs-Federated-Learning`` (branch ``asynchronous_FL``).
FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (arXiv 2106.06639).

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

τ_i is the device's EXPECTED job time in simulation, asked of the device population
(`DevicePopulation.expected_job_time`, the same time model the simulated grid draws job times
from): the work of one job (local steps × batch size, or epochs × shard size, in samples) /
speed × the straggling model's mean slowdown, plus the downlink and uplink time of the model's
bytes (dropouts are not counted). On a deployed grid (no device model) or with
`job_times="measured"`, τ_i is the mean of the client's measured push-to-reply times so far (a
client not yet back counts the time since its job started).

The client returns Δ_i (not its model), so channel noise hits the update. Staleness
n − ρ_i(n) of each contribution is reported per step as `staleness_mean`/`staleness_max`.

Choices of this implementation that the official code may not share (it has not been checked
against them line by line): time is the simulator's (virtual on SimGrid, wall clock when
deployed), clients are Flower nodes restarted by messages, τ_i comes from the device model or
from measurements as above, and `rounds` counts server steps (`fedsim.core.loop`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.clock import RESOLUTION_S, Clock
from fedsim.core.codec import (
    array_from_numpy,
    array_to_numpy,
    arrays_nbytes,
    flatten,
    model_to_arrays,
    unflatten,
)
from fedsim.core.keys import WORK_KEY
from fedsim.core.loop import OwnLoop, StepOutcome
from fedsim.core.services import GridServices, services_for
from fedsim.core.training import TrainConfig, local_sgd
from strategies import BuildContext, StrategyInfo

MESSAGE_TYPE = "train.fedfix"
Weighting = Literal["identical", "weight"]


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

# Clients are known by their partition (client index i), never by node id: ids are opaque
# (random 64-bit on a SuperLink) and the grid services' partition map translates.

@dataclass
class _Job:
    message_id: str
    version: int  # ρ_i: the server step whose model the client trains on
    started: float


@dataclass
class _Server:
    """Server state: the model (flat), its version, every client's job and measured times."""

    theta: np.ndarray
    version: int = 0
    jobs: dict[int, _Job] = field(default_factory=dict)  # partition -> job in flight
    durations: dict[int, list[float]] = field(default_factory=dict)  # partition -> times
    started_at: dict[int, float] = field(default_factory=dict)  # partition -> last job start


@dataclass
class _Arrival:
    partition: int  # the client, booked when its reply arrived
    reply: Message
    version: int


@dataclass
class _PlainArrival:
    """An `_Arrival` as plain data, for checkpoints: the reply's source, arrays and metrics."""

    partition: int
    source: int  # the node id the reply came from (opaque; kept so the rebuilt reply has it)
    version: int
    arrays: dict[str, np.ndarray]
    metrics: dict[str, Any]

    @classmethod
    def of(cls, arrival: _Arrival) -> _PlainArrival:
        content = arrival.reply.content
        return cls(arrival.partition, int(arrival.reply.metadata.src_node_id), arrival.version,
                   {k: array_to_numpy(a) for k, a in content["arrays"].items()},
                   dict(content["metrics"]))

    def arrival(self) -> _Arrival:
        """The arrival with its reply rebuilt (source node, arrays, metrics)."""
        instruction = Message(RecordDict(), self.source, MESSAGE_TYPE)
        content = RecordDict({
            "metrics": MetricRecord(self.metrics),
            "arrays": ArrayRecord({k: array_from_numpy(v) for k, v in self.arrays.items()})})
        return _Arrival(self.partition, Message(content, reply_to=instruction), self.version)


class EventDrivenFedAvg(OwnLoop, FedAvg):
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
    services : GridServices | None (default None: asked of the grid at start)
        The grid's partition map and clock (`fedsim.core.services`); run context, not state.
    """

    # The loop's state at the end of a server step (`fedsim.core.loop`); the restarts a
    # step owes wait in `_owed` while it is recorded, so a checkpoint taken then is whole.
    state_fields = ("_server", "_num_nodes", "_idle", "_owed", "_arrivals", "_buffer")

    def __init__(self, weighting: Weighting = "weight", server_lr: float = 1.0,
                 importance: Sequence[float] | None = None,
                 expected_job_times: Sequence[float] | None = None,
                 time_budget_s: float | None = None,
                 services: GridServices | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.services = services  # as built; `prepare` falls back to asking the grid
        self.weighting = weighting
        self.server_lr = server_lr
        self.importance = None if importance is None else np.asarray(importance, float)
        self.expected_job_times = (None if expected_job_times is None
                                   else np.asarray(expected_job_times, float))
        self.time_budget_s = math.inf if time_budget_s is None else time_budget_s
        self._server: _Server | None = None
        self._num_nodes = 0
        self._idle: set[int] = set()
        self._owed: list[int] = []  # clients the last step restarts once it is recorded
        self._arrivals: list[_Arrival] = []  # FedBuff: arrived, not yet in the buffer
        self._buffer: list[_Arrival] = []  # FedBuff: in the buffer, not yet aggregated
        # (i, ρ_i) of the contributions being aggregated, in the order of the replies
        self._step_contributions: list[tuple[int, int]] = []
        self._services: GridServices | None = None  # this run's (`prepare`)
        self._clock: Clock | None = None
        self._like = ArrayRecord()

    def encode_field(self, name: str, value: Any) -> Any:
        if name == "_idle":
            return sorted(value)
        if name in ("_arrivals", "_buffer"):
            return [_PlainArrival.of(a) for a in value]
        return value

    def decode_field(self, name: str, value: Any) -> Any:
        if name == "_idle":
            return set(value)
        if name in ("_arrivals", "_buffer"):
            return [a.arrival() for a in value]
        return value

    # ------------------------------------------------------------ weights

    def p(self, partition: int) -> float:
        if self.importance is None:
            return 1.0 / self._num_nodes
        return float(self.importance[partition] / self.importance.sum())

    def job_time(self, partition: int) -> float:
        """τ_i: expected if known, else the mean measured time (see the module docstring)."""
        if self.expected_job_times is not None:
            return float(self.expected_job_times[partition])
        assert self._server is not None and self._clock is not None
        measured = self._server.durations.get(partition)
        if measured:
            return float(np.mean(measured))
        started = self._server.started_at.get(partition, 0.0)
        return max(self._clock.now() - started, RESOLUTION_S)

    def design_weight(self, partition: int) -> float:
        """d_i of the scheme (overridden by each scheme)."""
        raise NotImplementedError

    # ------------------------------------------------------------ aggregation

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One server step θ ← θ + η_g Σ d_i Δ_i over `replies` (the step's R_n).

        Each reply's client i is the one booked at its arrival (`_step`), not read again from
        the reply's node id: a restored reply's node may no longer be in the partition map.
        """
        server = self._server
        assert server is not None
        replies = list(replies)
        step = np.zeros_like(server.theta)
        staleness, losses, examples = [], [], []
        for message, (partition, version) in zip(replies, self._step_contributions,
                                                  strict=True):
            step += self.design_weight(partition) * flatten(message.content["arrays"])
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
        return unflatten(server.theta, self._like), MetricRecord(out)

    # ------------------------------------------------------------ the event loop

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        self._services = services_for(grid, self.services)
        self._clock = self._services.clock()
        self._config = config
        self._grid = grid
        self._like = initial_arrays  # the model's keys, shapes and dtypes

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        """θ⁰ and a job owed to every online client (pushed by `launch`)."""
        assert self._services is not None
        self._server = _Server(flatten(initial_arrays).copy())
        self._step_contributions = []
        self._num_nodes = (len(self.expected_job_times)
                           if self.expected_job_times is not None
                           else len(self.importance) if self.importance is not None
                           else self._services.partitions.num_partitions)
        self._idle = set()
        self._owed = sorted(self._online())

    def launch(self) -> None:
        """Push the jobs owed: every node's first job, or the restarts of the restored step."""
        self._restart_owed()

    def after_step(self, n: int) -> None:
        self._restart_owed()

    def _online(self) -> set[int]:
        """The partitions of the online nodes."""
        assert self._services is not None
        return self._services.partitions.online(self._grid.get_node_ids())

    def _restart(self, partitions: Iterable[int]) -> None:
        """Send the current model to these clients now (offline ones idle until next step)."""
        server, clock, services = self._server, self._clock, self._services
        assert server is not None and clock is not None and services is not None
        online = self._online()
        messages, starting = [], []
        for partition in sorted(set(partitions) | self._idle):
            if partition not in online:
                self._idle.add(partition)
                continue
            self._idle.discard(partition)
            content = RecordDict({"arrays": unflatten(server.theta, self._like),
                                  "config": self._config})
            messages.append(Message(content, services.partitions.node_of(partition),
                                    MESSAGE_TYPE, group_id=str(server.version)))
            starting.append(partition)
        ids = self._grid.push_messages(messages) if messages else []
        now = clock.now()
        for partition, message_id in zip(starting, ids, strict=True):
            server.jobs[partition] = _Job(message_id, server.version, now)
            server.started_at[partition] = now

    def _restart_owed(self) -> None:
        owed, self._owed = self._owed, []
        if owed:
            self._restart(owed)

    def _in_flight(self) -> list[str]:
        assert self._server is not None
        return [job.message_id for job in self._server.jobs.values()]

    def _arrive(self, replies: Iterable[Message]) -> tuple[list[_Arrival], list[int]]:
        """Book replies in client (partition) order: (successful arrivals, clients whose
        job failed)."""
        server, clock, services = self._server, self._clock, self._services
        assert server is not None and clock is not None and services is not None
        booked = sorted(((services.partitions.partition_of(m.metadata.src_node_id), m)
                         for m in replies), key=lambda pair: pair[0])
        arrivals, failed = [], []
        for partition, message in booked:
            job = server.jobs.pop(partition)
            if message.has_error():
                failed.append(partition)
                continue
            server.durations.setdefault(partition, []).append(clock.now() - job.started)
            arrivals.append(_Arrival(partition, message, job.version))
        return arrivals, failed

    def _step(self, arrivals: Sequence[_Arrival], restart: Sequence[int] = ()) -> StepOutcome:
        """Aggregate these contributions as the next server step; the `restart` clients are
        owed a job on the new model, pushed once the step is recorded (`after_step`)."""
        self._owed = list(restart)
        server = self._server
        assert server is not None
        self._step_contributions = [(a.partition, a.version) for a in arrivals]
        arrays, metrics = self.aggregate_train(server.version + 1, [a.reply for a in arrivals])
        assert arrays is not None
        return arrays, metrics


class FedFix(EventDrivenFedAvg):
    """FedFix-Δt (Fraboni et al., JMLR 2023): aggregate every Δt seconds whoever has finished.

    Parameters (besides `EventDrivenFedAvg`'s)
    ----------
    period_s : float (default 0.5)
        Δt, the aggregation period in (virtual or wall) seconds.
    ceil_factor : bool (default True)
        `weight` uses d_i = p_i ⌈τ_i/Δt⌉; False drops the factor (d_i = p_i), which biases the
        fixed point toward fast clients (kept to show that bias).
    """

    def __init__(self, period_s: float = 0.5, ceil_factor: bool = True, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.period_s = period_s
        self.ceil_factor = ceil_factor

    def design_weight(self, partition: int) -> float:
        if self.weighting == "identical":
            return 1.0
        periods = math.ceil(self.job_time(partition) / self.period_s - RESOLUTION_S)
        return self.p(partition) * (max(periods, 1) if self.ceil_factor else 1)

    def step(self, n: int) -> StepOutcome | None:
        """Step n at time n·Δt with every client that has finished by then."""
        assert self._clock is not None
        tick = n * self.period_s
        if tick > self.time_budget_s + RESOLUTION_S:
            return None
        finished, failed = self._arrive(
            self._clock.collect_until(self._grid, self._in_flight(), tick))
        return self._step(finished, restart=[a.partition for a in finished] + failed)


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

    def design_weight(self, partition: int) -> float:
        if self.weighting == "identical":
            return 1.0 / self.buffer_size
        rate = sum(1.0 / self.job_time(j) for j in range(self._num_nodes))
        return self.p(partition) * self.job_time(partition) * rate / self.buffer_size

    def step(self, n: int) -> StepOutcome | None:
        """Take arrivals one at a time (ties in client order) until the buffer holds c."""
        assert self._clock is not None
        while True:
            if not self._arrivals:
                replies = self._clock.wait_for_replies(self._grid, self._in_flight(),
                                                       until=self.time_budget_s)
                if not replies:
                    return None  # time budget reached, or nothing in flight (all offline)
                self._arrivals, failed = self._arrive(replies)
                self._restart(failed)
            arrival = self._arrivals.pop(0)
            self._buffer.append(arrival)
            restart = [arrival.partition] if self.restart == "immediately" else []
            if len(self._buffer) == self.buffer_size:
                buffer, self._buffer = self._buffer, []
                if self.restart == "after_aggregation":
                    restart = [a.partition for a in buffer]
                return self._step(buffer, restart)
            if restart:
                self._restart(restart)


class AsyncFedAvg(FedBuff):
    """Asynchronous FedAvg (as in Fraboni et al., JMLR 2023): a server step per arrival.

    FedBuff with c = 1: each returning client is aggregated alone (d_i = 1 `identical`,
    p_i τ_i Σ_j 1/τ_j `weight`) and restarts at once on the new model; simultaneous arrivals
    are aggregated one at a time in client-index order.
    """

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(buffer_size=1, **kwargs)


# --------------------------------------------------------------------------- expected job times

def expected_job_times(ctx: BuildContext) -> list[float] | None:
    """τ_i per partition from the device population's time model (device i holds partition
    i); None on a deployed grid (no devices), where τ_i is measured instead."""
    devices = ctx.devices
    if devices is None:
        return None
    with torch.random.fork_rng(devices=[]):  # only the model's size matters here
        nbytes = arrays_nbytes(model_to_arrays(ctx.task.make_model()))
    config = TrainConfig.from_spec(ctx.scenario.training)
    return [devices.expected_job_time(
                partition, ctx.scenario.channel,
                work=_samples_per_job(len(ctx.task.train_data(partition)), config),
                bytes_down=nbytes, bytes_up=nbytes)
            for partition in range(devices.n)]


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
    """Per partition: p_i (shard sizes for `samples`) and τ_i (expected on a simulated grid;
    measured when asked or when deployed, where no device model exists)."""
    importance = None
    if params.importance == "samples":
        importance = [len(ctx.task.train_data(p)) for p in range(ctx.num_nodes)]
    times = expected_job_times(ctx) if params.job_times == "expected" else None
    return {"weighting": params.weighting, "server_lr": params.server_lr,
            "importance": importance, "expected_job_times": times,
            "time_budget_s": params.time_budget_s, "services": ctx.services}


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
