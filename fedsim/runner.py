"""Build a run from a scenario and drive the strategy on a grid.

`simulate` builds the simulated world (task, devices, client pool, SimGrid);
`execute` is what simulation and deployment share: it builds the strategy,
calls its `start()` on whatever grid it is given, and turns every round into
a metrics record for the callbacks (results writer, progress bar...).
`run_app` runs a Flower app nobody wrote for fedsim (the scenario's `app`) on the
simulated world instead, and records its rounds the same way.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy, strategy_utils
from flwr.supercore.run import Run

from fedsim import checkpoint as ckpt
from fedsim.checks import build_checked, local_gpus, prepare_data, ray_runtime_env
from fedsim.core.codec import arrays_to_model, flatten
from fedsim.core.imports import installed_object
from fedsim.core.keys import COMPUTE_S_KEY, WORK_KEY
from fedsim.core.schema import Scenario, scenario_to_dict
from fedsim.core.seeding import int_seed
from fedsim.core.services import GridServices
from fedsim.core.task import Task
from fedsim.core.training import TrainConfig
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.grid import SimGrid
from fedsim.engine.placement import ActorGroup, Cluster, plan_groups
from fedsim.engine.pool import WorkerSpec, make_pool
from fedsim.engine.services import SimServices
from fedsim.results import Callback
from strategies import BuildContext

RUN_ID = 1
CLIENT_APP = "fedsim.apps:client_app"


class RunStalled(RuntimeError):
    """The strategy waits for more nodes than are online; in virtual time none will come."""


class Diverged(RuntimeError):
    """The global model or loss became NaN/Inf; the message names the round and strategy."""


class ClientsFailed(RuntimeError):
    """Every job of a round that reached a client raised in client code: nothing was learnt,
    and going on would only repeat it (a bug, not a lossy world)."""


class AppFailed(RuntimeError):
    """A Flower app's ServerApp raised in its own code (the traceback is in the run's log)."""


log = logging.getLogger("fedsim.run")


@dataclass
class RunResult:
    scenario: Scenario
    records: list[dict[str, Any]] = field(default_factory=list)
    arrays: ArrayRecord | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # SimGrid's per-node records
    timeline: list[dict[str, Any]] = field(default_factory=list)  # its sampled events


def run_config(scenario: Scenario) -> dict[str, Any]:
    """The Flower run config that lets a ClientApp rebuild the task."""
    return {"scenario-json": json.dumps(scenario_to_dict(scenario))}


def simulate(scenario: Scenario, callbacks: Sequence[Callback] = (),
             log_file: Path | None = None, run_dir: Path | None = None,
             resume: bool = False, client_app: str = CLIENT_APP) -> RunResult:
    """Run a scenario on simulated devices in virtual time.

    With `run_dir`, a checkpoint is written there every `checkpoint.every` rounds;
    with `resume`, the run continues from the checkpoint in `run_dir`.
    `client_app` ("module:attribute") replaces the project's ClientApp (fault tests);
    a scenario with an `app` runs that app's two halves instead (`run_app`).
    """
    torch.set_num_threads(1)  # the same float results whatever the backend
    checkpoint = ckpt.load(run_dir) if resume and run_dir is not None else None
    backend, app = scenario.backend, scenario.app
    spec = (WorkerSpec(client_app, RUN_ID, scenario.clients.count, run_config(scenario),
                       backend.vectorize)
            if app is None else
            WorkerSpec(app.client, RUN_ID, scenario.clients.count, dict(app.run_config)))
    def plan(cluster: Cluster | None) -> list[ActorGroup]:
        return plan_groups(backend, scenario.clients, scenario.seed, cluster, local_gpus())

    checkpointer = (ckpt.Checkpointer(run_dir, scenario.checkpoint.every)
                    if run_dir is not None and scenario.checkpoint.every else None)
    # The data is prepared in a thread while Ray starts (mostly waiting on its processes)
    # and while the actors import and warm up; `ray.init` stays on the main thread.
    with ThreadPoolExecutor(1, thread_name_prefix="fedsim-data") as executor:
        prepared = executor.submit(prepare_data, scenario)
        pool = make_pool(backend.kind, spec, plan, backend.address, ray_runtime_env(scenario))
    try:
        task, devices = prepared.result()
        grid = SimGrid(_ErrorLog(pool), devices, scenario.channel, scenario.seed,  # type: ignore[arg-type]
                       Run.create_empty(RUN_ID), deadline_s=scenario.deadline_s,
                       timeline_nodes=scenario.output.timeline_nodes, **_work_rule(scenario))
        if task is None:  # a Flower app: its ClientApp loads its own data
            with _waiting_in_virtual_time(grid), flower_log_to(log_file):
                return run_app(scenario, grid, callbacks)
        pool.share_task_data(task.shared_data())  # workers do not load or partition data
        with _waiting_in_virtual_time(grid), flower_log_to(log_file):
            return execute(scenario, grid, task, SimServices(grid), callbacks,
                           timeout=scenario.deadline_s, devices=devices,
                           checkpointer=checkpointer, resume_from=checkpoint)
    finally:
        pool.shutdown()


def execute(scenario: Scenario, grid: Grid, task: Task, services: GridServices,
            callbacks: Sequence[Callback] = (), timeout: float | None = None,
            devices: DevicePopulation | None = None,
            checkpointer: ckpt.Checkpointer | None = None,
            resume_from: ckpt.Checkpoint | None = None) -> RunResult:
    """Run the scenario's strategy on `grid` (simulated or deployed) with its `services`.

    `timeout` is how long a round waits for replies in the grid's own time: the scenario's
    `deadline_s` in virtual seconds on SimGrid, `deploy.reply_timeout_s` on real devices
    (None: wait for every reply).
    """
    seed_server_generators(scenario)
    arrays, num_rounds, offset = task.initial_arrays(), scenario.rounds, 0
    if resume_from is not None:  # refused before anything is written or restored
        if resume_from.scenario != scenario_to_dict(scenario):
            raise ckpt.CheckpointError("the checkpoint was written for a different scenario "
                                       "(resume with the run directory's resolved.yaml)")
        ckpt.check_arrays(resume_from, arrays)
    for callback in callbacks:
        callback.on_run_start(scenario)
    strategy = build_checked(
        scenario, BuildContext(scenario, services.partitions.num_partitions, task, devices,
                               services),
        checkpointing=bool(checkpointer or resume_from))
    recorder = _RoundRecorder(scenario, grid, task, strategy, callbacks, checkpointer)
    if resume_from is not None:
        arrays = _restore(resume_from, grid, strategy, recorder, callbacks)
    own_loop = type(strategy).start is not Strategy.start
    if own_loop:  # it records each step itself, and resumes after its restored step
        driven: Strategy = strategy
        strategy.on_train_metrics = recorder.trained  # type: ignore[attr-defined]
        evaluate_fn = recorder.end_of_round
    else:  # Flower's loop counts rounds from 1: a resumed run goes on at offset + 1
        offset = resume_from.round if resume_from is not None else 0
        num_rounds = scenario.rounds - offset
        loop = _FlowerLoop(strategy, recorder, offset, scenario.evaluation.federated_every,
                           last_round=scenario.rounds or 0)
        driven, evaluate_fn = loop, loop.end_of_round
    with _reported_to(callbacks):
        final = _drive(driven, grid, arrays, num_rounds, timeout, evaluate_fn, scenario)
    return _finished(recorder.result(final), callbacks)


def seed_server_generators(scenario: Scenario) -> None:
    """Seed the server process's global generators from the scenario: Flower samples nodes
    with `random`, its DP wrappers draw noise from NumPy's, a Flower app builds its initial
    model from torch's. A run (and a resumed one, which restores them) is then the same
    whatever ran in the process before."""
    random.seed(int_seed(scenario.seed, "node-sampling"))
    np.random.seed(int_seed(scenario.seed, "server-app") % 2**32)
    torch.manual_seed(int_seed(scenario.seed, "server-app"))


def run_app(scenario: Scenario, grid: SimGrid, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run the scenario's Flower app: its ServerApp's main on `grid`, with the app's run config.

    What the app does not tell the simulator comes from the grid and from Flower's loop:
    every `Strategy.start` the app calls is observed (`_observing_flower_loops`), so each
    round is recorded and ends on the grid (availability moves on) as in a scenario's own
    run; the grid caps every wait at `deadline_s`. Python's, NumPy's and torch's global
    generators are seeded from the scenario first: the app's initial model and Flower's
    node sampling are the same on every run of the scenario.
    """
    app = scenario.app
    if app is None:
        raise ValueError("run_app needs a scenario with an app")
    server_app: ServerApp = installed_object(app.server, "app.server")
    seed_server_generators(scenario)
    for callback in callbacks:
        callback.on_run_start(scenario)
    recorder = _RoundRecorder(scenario, grid, None, None, callbacks)
    context = Context(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict(), run_config=dict(app.run_config))
    with _reported_to(callbacks), _observing_flower_loops(recorder):
        try:
            server_app(grid, context)
        except (RunStalled, ClientsFailed, Diverged):  # the simulator's own verdicts
            raise
        except Exception as exc:
            log.exception("the ServerApp %s raised", app.server)
            raise AppFailed(f"the app's ServerApp ({app.server}) raised "
                            f"{type(exc).__name__}: {exc} (traceback in the run's "
                            "flower.log)") from exc
    return _finished(recorder.result(recorder.arrays), callbacks)


@contextlib.contextmanager
def _reported_to(callbacks: Sequence[Callback]) -> Iterator[None]:
    """A run that fails tells the callbacks why: its directory says it is incomplete."""
    try:
        yield
    except Exception as exc:
        for callback in callbacks:
            callback.on_run_failed(f"{type(exc).__name__}: {exc}")
        raise


def _finished(run: RunResult, callbacks: Sequence[Callback]) -> RunResult:
    for callback in callbacks:
        if run.nodes:
            callback.on_devices(run.nodes, run.timeline)
        callback.on_run_end(run.summary, run.arrays)
    return run


def _work_rule(scenario: Scenario) -> dict[str, Any]:
    """How SimGrid reads a job's work from a foreign app's replies (`app.work`)."""
    if scenario.app is None:
        return {}
    work = scenario.app.work
    epochs = scenario.app.run_config[work.epochs_key] if work.epochs_key else 1
    return {"work_metric": work.metric or WORK_KEY, "train_epochs": float(epochs)}


@contextlib.contextmanager
def _observing_flower_loops(recorder: _RoundRecorder) -> Iterator[None]:
    """While a foreign app runs, run Flower's loop (`Strategy.start`) on a `_FlowerLoop`.

    A foreign app builds and starts its strategy itself; Flower's loop is the one place
    where the strategy's aggregated metrics and the end of each round can be seen. For the
    length of the run, in this process only, that loop runs on a `_FlowerLoop` around the
    app's strategy, exactly as it does for a scenario's own strategy: every call still
    reaches the app's strategy and its `evaluate_fn`, and the app gets the `Result` Flower
    would give it. A second `start` goes on counting rounds where the first stopped.
    """
    flower_start = Strategy.start
    signature = inspect.signature(flower_start)

    def observed_start(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        loop = _FlowerLoop(call.arguments["self"], recorder, offset=recorder.last_round,
                           federated_every=1, last_round=0,
                           evaluate_fn=call.arguments["evaluate_fn"])
        call.arguments.update(self=loop, evaluate_fn=loop.end_of_round)
        return flower_start(*call.args, **call.kwargs)

    Strategy.start = observed_start  # type: ignore[method-assign]
    try:
        yield
    finally:
        Strategy.start = flower_start  # type: ignore[method-assign]


def _drive(strategy: Strategy, grid: Grid, arrays: ArrayRecord, num_rounds: int,
           timeout: float | None, evaluate_fn: Any, scenario: Scenario) -> ArrayRecord:
    """Run the strategy's loop for `num_rounds`; the final global arrays."""
    if num_rounds <= 0:
        return arrays  # killed after the last round's checkpoint
    result = strategy.start(
        grid, arrays, num_rounds=num_rounds,
        timeout=timeout,  # type: ignore[arg-type]  # None: wait for all
        train_config=TrainConfig.from_spec(scenario.training).to_record(),
        evaluate_config=ConfigRecord(), evaluate_fn=evaluate_fn)
    return result.arrays if result.arrays is not None else arrays


def _restore(checkpoint: ckpt.Checkpoint, grid: Grid, strategy: Strategy,
             recorder: _RoundRecorder, callbacks: Sequence[Callback]) -> ArrayRecord:
    """Put back the state of the checkpoint's round; returns its global arrays."""
    ckpt.restore_strategy(strategy, checkpoint.strategy)
    grid.restore_state(checkpoint.grid)
    grid.restore_client_states(checkpoint.clients)
    ckpt.set_random_state(checkpoint.random)
    recorder.resume(checkpoint.records)
    for record in checkpoint.records:  # rewrite metrics.jsonl, move progress bars
        for callback in callbacks:
            callback.on_round_end(record)
    log.info("resumed from the checkpoint of round %d", checkpoint.round)
    return checkpoint.arrays


class _FlowerLoop(Strategy):
    """The scenario's strategy as Flower's own round loop drives it.

    Every call goes to the strategy unchanged, except that rounds are shifted by
    `offset` (a resumed run goes on at offset + 1), federated evaluation is asked for
    only every `federated_every` rounds and in `last_round`, and the aggregated metrics
    are handed to the recorder. Works for any Flower strategy, built-in or ours.
    A foreign app's own `evaluate_fn` runs first at the end of each round; what it
    returns is recorded and goes back to Flower's loop.
    """

    def __init__(self, strategy: Strategy, recorder: _RoundRecorder, offset: int,
                 federated_every: int, last_round: int,
                 evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
                 ) -> None:
        self.strategy, self.recorder, self.offset = strategy, recorder, offset
        self.federated_every, self.last_round = federated_every, last_round
        self.evaluate_fn = evaluate_fn

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round + self.offset, replies)
        self.recorder.trained(server_round + self.offset, metrics)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        every = self.federated_every
        if not every or (server_round % every and server_round != self.last_round):
            return []
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = list(replies)
        metrics = self.strategy.aggregate_evaluate(server_round + self.offset, replies)
        self.recorder.evaluated(metrics, replies)
        return metrics

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`; a resumed run recorded its round `offset` before it stopped."""
        own = self.evaluate_fn(server_round, arrays) if self.evaluate_fn else None
        if server_round == 0 and self.offset:
            return own
        self.recorder.evaluated_on_server(own)
        evaluated = self.recorder.end_of_round(server_round + self.offset, arrays)
        return own if self.evaluate_fn else evaluated


class _ErrorLog:
    """The pool, plus one line in the run's log for each distinct client error."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._seen: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def execute(self, jobs: list[Any], payloads: list[Any]) -> list[Any]:
        results = self._pool.execute(jobs, payloads)
        for job, result in zip(jobs, results, strict=True):
            if result.content is None and result.error_reason not in self._seen:
                self._seen.add(result.error_reason)
                log.warning("partition %d (node %d) failed: %s (logged once per distinct "
                            "error)%s", job.partition_id, job.node_id, result.error_reason,
                            f"\n{result.traceback}" if result.traceback else "")
        return results


class _RoundRecorder:
    """Turns each round into one metrics record, and ends the round on the grid.

    A strategy's loop calls `evaluate_fn` (`end_of_round`) once before the first
    round and after every round; the aggregated metrics reach `trained` and
    `evaluated` before that, from `_FlowerLoop` or from a strategy's own loop
    (its `on_train_metrics` hook). At the end of a round the simulated grid moves
    availability on (`SimGrid.end_round`) and the checkpoint is taken.
    """

    def __init__(self, scenario: Scenario, grid: Grid, task: Task | None,
                 strategy: Strategy | None, callbacks: Sequence[Callback],
                 checkpointer: ckpt.Checkpointer | None = None) -> None:
        """`task` None: a Flower app, which evaluates on its own (`evaluated_on_server`)."""
        self.scenario, self.grid, self.task, self.callbacks = scenario, grid, task, callbacks
        self.strategy, self.checkpointer = strategy, checkpointer
        self.records: list[dict[str, Any]] = []
        self.arrays: ArrayRecord | None = None  # the global model at the last round's end
        self._train: dict[str, float] = {}
        self._federated: dict[str, float] = {}
        self._on_server: dict[str, float] = {}
        self._federated_by_tier: dict[str, dict[str, float]] = {}  # the last evaluation's
        self._started = time.perf_counter()
        self.first_client_error = ""
        if task is not None:
            self._model = task.make_model()
            self._test = task.test_data(None)
            self._validation = task.validation_data()

    def trained(self, server_round: int, metrics: MetricRecord | None) -> None:
        """The round's aggregated train metrics (called before its `end_of_round`)."""
        self._train = _floats(metrics)

    def evaluated(self, metrics: MetricRecord | None, replies: Sequence[Message] = ()) -> None:
        """The round's aggregated federated-evaluation metrics; on SimGrid, `replies` give
        each tier's own (examples-weighted) means."""
        self._federated = _floats(metrics)
        if isinstance(self.grid, SimGrid) and replies:
            self._federated_by_tier = _by_tier(self.grid, replies)

    def evaluated_on_server(self, metrics: MetricRecord | None) -> None:
        """What a foreign app's own `evaluate_fn` returned for the round."""
        self._on_server = _floats(metrics)

    @property
    def last_round(self) -> int:
        return int(self.records[-1]["round"]) if self.records else 0

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        self.arrays = arrays
        record: dict[str, Any] = {"round": server_round}
        if isinstance(self.grid, SimGrid):
            record["virtual_time_s"] = float(self.grid.now)
            if server_round > 0:
                stats = self.grid.end_round()
                self.first_client_error = self.first_client_error or stats.first_client_error
                if stats.executed and stats.client_errors == stats.executed:
                    raise ClientsFailed(
                        f"round {server_round}: all {stats.executed} client jobs raised in "
                        f"client code; first error: {stats.first_client_error} (full "
                        "traceback in the run's flower.log)")
                record.update(stats.as_metrics())
        record["wall_time_s"] = round(time.perf_counter() - self._started, 4)
        every = self.scenario.evaluation.centralized_every
        evaluated: dict[str, float] = {}
        if self.task is not None and every and (server_round % every == 0
                                                or server_round == self.scenario.rounds):
            model = arrays_to_model(self._model, arrays)
            evaluated = self.task.evaluate(model, self._test)
            record.update(evaluated)
            if self._validation is not None:
                record.update({f"val_{k}": v for k, v in
                               self.task.evaluate(model, self._validation).items()})
        record.update(_named_for_the_record(self._on_server, taken=record))
        record.update(_named_for_the_record(self._train, taken=record))
        record.update({f"federated_{k}": v for k, v in self._federated.items()})
        self._train, self._federated, self._on_server = {}, {}, {}
        self._check_finite(server_round, arrays, record)
        self.records.append(record)
        for callback in self.callbacks:
            callback.on_round_end(record)
        if self.checkpointer is not None and self.checkpointer.due(server_round):
            self.checkpointer.save(server_round, scenario_to_dict(self.scenario), arrays,
                                   self.strategy, self.grid, self.records)
        return MetricRecord(evaluated) if evaluated else None

    def resume(self, records: list[dict[str, Any]]) -> None:
        self.records = [dict(r) for r in records]
        if records:  # wall time goes on from where the killed run stopped
            self._started -= float(records[-1].get("wall_time_s") or 0.0)

    def _check_finite(self, server_round: int, arrays: ArrayRecord | None,
                      record: dict[str, Any]) -> None:
        """Stop on NaN/Inf in the aggregated model or in any loss, naming round and strategy."""
        what = ""
        if arrays is not None and not np.isfinite(flatten(arrays)).all():
            what = "the aggregated model has NaN/Inf values"
        else:
            bad = {k: v for k, v in record.items()
                   if "loss" in k and isinstance(v, float) and not math.isfinite(v)}
            if bad:
                what = f"the loss is not finite ({', '.join(f'{k}={v}' for k, v in bad.items())})"
        if what:
            last = self.records[-1]["round"] if self.records else "none"
            raise Diverged(f"round {server_round}: {what}; strategy "
                           f"{self.scenario.algorithm!r} diverged (last finite round: {last})")

    def result(self, arrays: ArrayRecord | None) -> RunResult:
        """The run's records, final arrays and summary; on SimGrid its per-node records
        and timeline."""
        run = RunResult(self.scenario, self.records, arrays, self.summary())
        if isinstance(self.grid, SimGrid):
            run.nodes, run.timeline = self.grid.node_records(), self.grid.timeline_records()
        return run

    def summary(self) -> dict[str, Any]:
        last = self.records[-1] if self.records else {}
        accuracies = [r["accuracy"] for r in self.records if "accuracy" in r]
        out: dict[str, Any] = {
            "name": self.scenario.name, "strategy": self.scenario.algorithm,
            "seed": self.scenario.seed, "rounds": last.get("round", 0),
            "wall_time_s": last.get("wall_time_s"),
        }
        if "virtual_time_s" in last:
            out["virtual_time_s"] = last["virtual_time_s"]
        for key in ("bytes_up", "bytes_down", "stragglers", "failures", "client_errors"):
            if any(key in r for r in self.records):  # a real grid keeps no such counters
                out[f"total_{key}"] = sum(r.get(key, 0) for r in self.records)
        for key in ("accuracy", "loss"):
            if key in last:
                out[f"final_{key}"] = last[key]
        if accuracies:
            out["best_accuracy"] = max(accuracies)
        out.update(best_on_validation(self.records))
        if self.first_client_error:
            out["first_client_error"] = self.first_client_error
        if isinstance(self.grid, SimGrid):
            out["tiers"] = self.grid.tier_records()
            for tier, metrics in self._federated_by_tier.items():
                out["tiers"][tier].update({f"federated_{k}": v for k, v in metrics.items()})
            out["actors"] = self.grid.pool.placement()  # where each worker ran, on what device
            out["devices"] = sorted({a["device"] for a in out["actors"] if "device" in a})
        return out


def _by_tier(grid: SimGrid, replies: Sequence[Message]) -> dict[str, dict[str, float]]:
    """Each tier's examples-weighted mean of every metric its nodes' replies carry."""
    partitions = grid.partition_map()
    sums: dict[str, dict[str, float]] = {}
    weights: dict[str, float] = {}
    for reply in replies:
        if reply.has_error():
            continue
        metrics = {k: float(v) for record in reply.content.metric_records.values()
                   for k, v in record.items() if isinstance(v, int | float)}
        weight = metrics.get("num-examples", 1.0)
        node = partitions.partition_of(reply.metadata.src_node_id)
        tier = grid.tier_names[int(grid.devices.tier_of[node])]
        weights[tier] = weights.get(tier, 0.0) + weight
        tier_sums = sums.setdefault(tier, {})
        for key, value in metrics.items():
            if key not in NOT_RECORDED:
                tier_sums[key] = tier_sums.get(key, 0.0) + weight * value
    return {tier: {k: v / weights[tier] for k, v in tier_sums.items()} if weights[tier] else {}
            for tier, tier_sums in sums.items()}


def best_on_validation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose model does best on the validation set (accuracy, else loss; the
    first on a tie), with its test value: a "best" the test set did not choose."""
    key = "accuracy" if any("val_accuracy" in r for r in records) else "loss"
    rows = [r for r in records if f"val_{key}" in r and key in r]
    if not rows:
        return {}
    sign = 1 if key == "accuracy" else -1
    best = max(rows, key=lambda r: sign * r[f"val_{key}"])
    return {"best_round": best["round"], f"best_val_{key}": best[f"val_{key}"],
            f"test_{key}_at_best": best[key]}


NOT_RECORDED = ("num-examples", WORK_KEY, COMPUTE_S_KEY)
"""Reply metrics that only weigh or time a reply: aggregated, they mean nothing."""


def _named_for_the_record(metrics: dict[str, float], taken: dict[str, Any]) -> dict[str, float]:
    """A strategy's aggregated metrics under their own names (`train_loss`, `eta_g`,
    `consensus_distance`...); one whose name the record already uses (the grid's counters,
    centralized `loss`/`accuracy`) is kept as `strategy_<name>`."""
    return {f"strategy_{k}" if k in taken else k: v for k, v in metrics.items()
            if k not in NOT_RECORDED}


def _floats(metrics: MetricRecord | None) -> dict[str, float]:
    if metrics is None:
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


@contextlib.contextmanager
def flower_log_to(path: Path | None) -> Iterator[None]:
    """Send Flower's (chatty) INFO logging to the run's log file, not the terminal."""
    logger = logging.getLogger("flwr")
    saved = logger.handlers[:]
    handler: logging.Handler = logging.FileHandler(path) if path else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers = [handler]
    log.addHandler(handler)  # fedsim's own run messages (client errors, resume) go there too
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = True
        handler.close()
        logger.handlers = saved


MAX_IDLE_ROUNDS = 1000
"""Availability rounds the server may wait in a row for enough nodes before giving up."""


@contextlib.contextmanager
def _waiting_in_virtual_time(grid: SimGrid) -> Iterator[None]:
    """Make Flower's wait for more online nodes pass in virtual time.

    Flower's node sampling sleeps one wall-clock second while too few nodes are
    online. Here each such sleep advances the virtual clock by that second and
    availability by one round, so a server facing Bernoulli or cyclic
    availability waits as it would on real devices. A wait that cannot end (a
    minimum above what is ever online) stops with a message naming the fix.
    """
    waited, sent_before = 0, grid.messages_pushed

    def idle(seconds: float) -> None:
        nonlocal waited, sent_before
        waited = 1 if grid.messages_pushed != sent_before else waited + 1  # consecutive waits
        sent_before = grid.messages_pushed
        if waited > MAX_IDLE_ROUNDS:
            raise RunStalled(
                f"the strategy waited {MAX_IDLE_ROUNDS} availability rounds for more online "
                "nodes than ever come online; lower the strategy's min_available_nodes / "
                "min_train_nodes / min_evaluate_nodes (strategy.params, or in the app's "
                "ServerApp), or make more devices available")
        grid.idle(seconds)

    saved = strategy_utils.sleep
    strategy_utils.sleep = idle  # type: ignore[assignment]
    try:
        yield
    finally:
        strategy_utils.sleep = saved  # type: ignore[assignment]
