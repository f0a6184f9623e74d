"""The client pool: workers that execute the ClientApp for many virtual nodes.

Each push is spread evenly over the workers (a round's time is its busiest
worker's), except that a node whose Flower `Context.state` holds anything
(error-feedback memory, control variates, dual variables...) is pinned to the
worker that holds it, so that state stays where it is across rounds. Stateless
nodes (plain FedAvg) go wherever there is room; results do not depend on the
placement, since every job seeds torch with its own key. The driver sends a
worker all of its jobs of a push in one call, and a broadcast payload crosses
to each worker once, not once per node. With `backend.vectorize: G`, a push's train
jobs form groups of G consecutive jobs (in the order the strategy pushed them, within a
group of workers), each group run by one worker as one computation
(`fedsim.core.vectorize`); the groups depend on the scenario only, never on the number of
workers, so results do not either.

`InlinePool` runs the workers in the driver process (tests, debugging);
`RayPool` runs them as Ray actors. Both execute the same `ClientWorker` code, so
a scenario gives the same numbers on either. Workers come in groups
(`fedsim.engine.placement`): a device tier with actors of its own has its jobs run
by its group only, on that group's device.

Start-up: `RayPool` creates its actors without waiting for them, so that they
start while the driver prepares the task's data; the driver then hands the data a task
computes once (`Task.shared_data`: arrays, partition indices) to every worker
(`share_task_data`), so workers never import the dataset libraries. Each worker
pays its first-call costs (torch's optimizer imports `torch._dynamo`) while it
starts, not in round 1.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedsim.core.codec import payload_nbytes
from fedsim.core.device import computing_on, seed_job, usable_device
from fedsim.core.seeding import rng
from fedsim.engine.placement import ActorGroup, Cluster

log = logging.getLogger("fedsim")

INLINE_PAYLOAD_BYTES = 64 * 1024
"""A payload up to this size travels inside each actor call that uses it rather than
through the object store (Ray itself inlines call arguments up to 100 KiB)."""


@dataclass
class Job:
    """One message for one virtual node, as a worker needs it."""

    node_id: int
    partition_id: int
    message_type: str
    message_id: str
    group_id: str
    content_index: int  # into the payload list sent with the batch
    seed: int  # for torch and for downlink noise: keyed by (node, round, job)
    downlink_sigma: float = 0.0
    together: int = -1  # >= 0: the vectorised group (`backend.vectorize`) it trains in


@dataclass
class JobResult:
    """What a worker returns: the reply content or an error, never both."""

    message_id: str
    content: RecordDict | None = None
    error_code: int = 0
    error_reason: str = ""
    stateful: bool = False  # the node's Context.state holds something: pin it to this worker
    traceback: str = ""  # where the client code raised, for the run's log


@dataclass
class WorkerSpec:
    """What every worker needs to serve nodes: the app, the run, the population size."""

    client_app: str  # "module:attribute" of a flwr ClientApp
    run_id: int
    num_partitions: int
    run_config: dict[str, Any] = field(default_factory=dict)
    vectorize: int = 0  # `backend.vectorize`: train jobs in groups of this many (0: one by one)


def load_object(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class ClientWorker:
    """Executes a ClientApp for the nodes mapped to it, keeping their Contexts."""

    def __init__(self, spec: WorkerSpec, device: str = "cpu") -> None:
        import torch

        torch.set_num_threads(1)
        self.spec = spec
        self.device = usable_device(device)
        self.app = load_object(spec.client_app)
        self.contexts: dict[int, Context] = {}
        self._errors_seen: set[str] = set()
        _warm_up()

    def share_task_data(self, data: dict[str, Any]) -> None:
        """Give this process's task the data the driver computed (`Task.shared_data`)."""
        from fedsim.core.client import run_task  # installed by the ClientApp's module

        task = run_task(self.spec.run_config, self.spec.num_partitions)
        if task is not None:  # an app that serves no fedsim task has nothing to share
            task.use_shared_data(data)

    def context(self, node_id: int, partition_id: int) -> Context:
        if node_id not in self.contexts:
            self.contexts[node_id] = Context(
                run_id=self.spec.run_id,
                node_id=node_id,
                node_config={
                    "partition-id": partition_id,
                    "num-partitions": self.spec.num_partitions,
                },
                state=RecordDict(),
                run_config=dict(self.spec.run_config),
            )
        return self.contexts[node_id]

    def run(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        with computing_on(self.device):
            return self._run(jobs, payloads)

    def _run(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        grouped = self._run_groups([job for job in jobs if job.together >= 0], payloads)
        results = []
        for job in jobs:
            if job.message_id in grouped:
                results.append(grouped[job.message_id])
                continue
            message = _message(job, payloads)
            TaskIdentity.node_id = job.node_id
            seed_job(self.device, job.seed)
            context = self.context(job.node_id, job.partition_id)
            try:
                reply = self.app(message, context)
            except Exception as exc:  # a client's crash must not take the round down
                reason = f"{type(exc).__name__}: {exc}"
                if reason not in self._errors_seen:
                    self._errors_seen.add(reason)
                    log.debug("node %d raised %s", job.node_id, reason)  # the driver logs it
                results.append(JobResult(job.message_id, None,
                                         ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason,
                                         stateful=len(context.state) > 0,
                                         traceback=traceback.format_exc()))
                continue
            finally:
                TaskIdentity.node_id = SUPERLINK_NODE_ID
            stateful = len(context.state) > 0
            if reply.has_error():
                results.append(JobResult(job.message_id, None, reply.error.code,
                                         reply.error.reason or "", stateful=stateful))
            else:
                results.append(JobResult(job.message_id, reply.content, stateful=stateful))
        return results

    def _run_groups(self, jobs: list[Job], payloads: list[RecordDict]
                    ) -> dict[str, JobResult]:
        """Vectorised groups' train jobs, each group as one computation
        (`fedsim.core.vectorize`); results by message id."""
        from fedsim.core.client import run_task
        from fedsim.core.vectorize import train_group

        groups: dict[int, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.together, []).append(job)
        results: dict[str, JobResult] = {}
        task = run_task(self.spec.run_config, self.spec.num_partitions) if groups else None
        for group in groups.values():
            try:
                assert task is not None, "vectorised groups train fedsim's tasks (validation)"
                replies = train_group(task, [(_message(job, payloads), job.partition_id,
                                              job.seed) for job in group])
            except Exception as exc:  # the group's clients fail together, each with the error
                reason = f"{type(exc).__name__}: {exc}"
                log.debug("a vectorised group raised %s", reason)  # the driver logs it
                results.update((job.message_id, JobResult(
                    job.message_id, None, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason,
                    traceback=traceback.format_exc())) for job in group)
                continue
            results.update((job.message_id, JobResult(job.message_id, reply.content))
                           for job, reply in zip(group, replies, strict=True))
        return results

    def describe(self) -> dict[str, Any]:
        """What this worker computes on (on Ray, also where it runs)."""
        return {"device": str(self.device)}

    def get_states(self) -> dict[int, tuple[int, RecordDict]]:
        """Each node's (partition id, Context.state) that holds anything (for checkpoints)."""
        return {node: (int(c.node_config["partition-id"]), c.state)
                for node, c in self.contexts.items() if len(c.state) > 0}

    def set_states(self, states: dict[int, tuple[int, RecordDict]]) -> None:
        """Put back node states saved by `get_states` (when resuming a run)."""
        for node, (partition, state) in states.items():
            self.context(node, partition).state = state


def _message(job: Job, payloads: list[RecordDict]) -> Message:
    """The message a job delivers (with its downlink noise, if any)."""
    from fedsim.engine.channel import add_noise

    content = payloads[job.content_index]
    if job.downlink_sigma > 0:
        content = add_noise(content, job.downlink_sigma, rng(job.seed, "downlink-noise"))
    message = Message(content, dst_node_id=job.node_id, message_type=job.message_type,
                      group_id=job.group_id)
    message.metadata.__dict__["_message_id"] = job.message_id
    return message


def _require_a_token() -> None:
    """Make the local Ray cluster this process starts refuse requests without a token.

    Ray's processes listen on every interface (it has no loopback-only mode), so the
    cluster started for a run uses Ray's token authentication with a fresh random token,
    passed to its processes through the environment (before Ray is imported: it reads the
    mode then). A user who set `RAY_AUTH_MODE` themselves keeps their choice; joining a
    cluster (`backend.address`), or a process that imported Ray already, uses its settings.
    """
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _warm_up() -> None:
    """Pay torch's first-call costs now, while the pool starts, rather than in round 1.

    The first call of an optimizer method imports `torch._dynamo` (2-3 s of CPU). No
    random draw is made, so the jobs' results do not change.
    """
    import torch

    weight = torch.zeros(1, requires_grad=True)
    weight.grad = torch.zeros(1)
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    optimizer.step()
    optimizer.zero_grad()


class Pool(Protocol):
    num_workers: int

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]: ...

    def share_task_data(self, data: dict[str, Any]) -> None: ...

    def placement(self) -> list[dict[str, Any]]: ...

    def shutdown(self) -> None: ...


def _split(jobs: list[Job], num_workers: int, pinned: dict[int, int]) -> dict[int, list[Job]]:
    """Jobs per worker: pinned nodes to their worker, the rest evenly, in push order.

    All jobs of one node in a push go to the same worker, in order, and so do all jobs of
    one vectorised group (`Job.together`, set by `_Groups.split`). The split is
    a pure function of its inputs, so it is the same on every run.
    """
    by_node: dict[Any, list[Job]] = {}
    for job in jobs:
        by_node.setdefault(_unit(job), []).append(job)
    load = [0] * num_workers
    worker_of: dict[int, int] = {}
    for node, node_jobs in by_node.items():
        if node in pinned:
            worker_of[node] = pinned[node] % num_workers
            load[worker_of[node]] += len(node_jobs)
    for node, node_jobs in by_node.items():
        if node not in worker_of:
            worker_of[node] = min(range(num_workers), key=load.__getitem__)
            load[worker_of[node]] += len(node_jobs)
    batches: dict[int, list[Job]] = {}
    for job in jobs:
        batches.setdefault(worker_of[_unit(job)], []).append(job)
    return batches


def _unit(job: Job) -> Any:
    """What goes to one worker: a node's jobs, or a vectorised group's."""
    return job.node_id if job.together < 0 else ("together", job.together)


class _Groups:
    """Which workers serve which partitions: group g is workers `start[g]` to
    `start[g] + size[g] - 1`; a partition goes to the group that lists it, else to the
    group that lists none."""

    def __init__(self, groups: list[ActorGroup], vectorize: int = 0) -> None:
        self.vectorize = vectorize
        self.size = [g.num_workers for g in groups]
        self.worker_group = [g.name for g in groups for _ in range(g.num_workers)]
        self.start = [sum(self.size[:g]) for g in range(len(groups))]
        self._of = {p: g for g, group in enumerate(groups) for p in group.partitions or ()}
        self._rest = next((g for g, group in enumerate(groups) if group.partitions is None),
                          None)

    def of(self, partition_id: int) -> int:
        group = self._of.get(partition_id, self._rest)
        if group is None:
            raise ValueError(f"partition {partition_id} belongs to no group of workers")
        return group

    def repin(self, saved: dict[str, Any]) -> dict[int, int]:
        """The worker of each saved node state (`get_states`): where it was pinned if that
        worker serves its partition now, else one of its group's (a resumed run may have
        other workers than the run that saved it)."""
        pinned = {}
        for node, (partition, _) in saved["states"].items():
            g, hint = self.of(partition), saved["pinned"].get(node, 0)
            start, size = self.start[g], self.size[g]
            pinned[node] = hint if start <= hint < start + size else start + hint % size
        return pinned

    def split(self, jobs: list[Job], pinned: dict[int, int]) -> dict[int, list[Job]]:
        """`_split` within each job's group; worker indices over all groups."""
        by_group: dict[int, list[Job]] = {}
        for job in jobs:
            by_group.setdefault(self.of(job.partition_id), []).append(job)
        batches: dict[int, list[Job]] = {}
        together = 0
        for g, group_jobs in by_group.items():
            if self.vectorize:  # G consecutive train jobs, whatever the number of workers
                trains = [i for i, job in enumerate(group_jobs) if job.message_type == "train"]
                for k, i in enumerate(trains):
                    group_jobs[i] = replace(group_jobs[i], together=together + k // self.vectorize)
                together += -(-len(trains) // self.vectorize)
            start, size = self.start[g], self.size[g]
            own = {node: w - start for node, w in pinned.items() if start <= w < start + size}
            for w, batch in _split(group_jobs, size, own).items():
                batches[start + w] = batch
        return batches


def _pin(batches: dict[int, list[Job]], results: list[JobResult], pinned: dict[int, int]
         ) -> None:
    """Pin every node that now keeps state to the worker that ran it."""
    stateful = {r.message_id for r in results if r.stateful}
    for worker, batch in batches.items():
        for job in batch:
            if job.message_id in stateful:
                pinned.setdefault(job.node_id, worker)


def _in_job_order(jobs: list[Job], results: list[JobResult]) -> list[JobResult]:
    by_id = {r.message_id: r for r in results}
    return [by_id[j.message_id] for j in jobs]


def _set_task_identity(run_id: int) -> None:
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 0


class InlinePool:
    """Workers in the driver process: same code path as Ray, easy to debug."""

    def __init__(self, spec: WorkerSpec, groups: list[ActorGroup] | None = None) -> None:
        _set_task_identity(spec.run_id)
        groups = groups or [ActorGroup(1)]
        self._groups = _Groups(groups, spec.vectorize)
        self.workers = [ClientWorker(spec, g.device) for g in groups
                        for _ in range(g.num_workers)]
        self.num_workers = len(self.workers)
        self._pinned: dict[int, int] = {}  # node id -> worker holding its state

    def share_task_data(self, data: dict[str, Any]) -> None:
        for worker in self.workers:
            worker.share_task_data(data)

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        results: list[JobResult] = []
        batches = self._groups.split(jobs, self._pinned)
        for w, batch in sorted(batches.items()):
            results.extend(self.workers[w].run(batch, payloads))
        _pin(batches, results, self._pinned)
        return _in_job_order(jobs, results)

    def get_states(self) -> dict[str, Any]:
        """Every node's Context.state and the worker it is pinned to (for checkpoints)."""
        states: dict[int, Any] = {}
        for worker in self.workers:
            states.update(worker.get_states())
        return {"pinned": dict(self._pinned), "states": states}

    def set_states(self, saved: dict[str, Any]) -> None:
        self._pinned = self._groups.repin(saved)
        for node, state in saved["states"].items():
            self.workers[self._pinned[node]].set_states({node: state})

    def placement(self) -> list[dict[str, Any]]:
        """Each worker's group and `describe()` (for the run's summary)."""
        return [{"group": g, **w.describe()} for w, g in zip(
            self.workers, self._groups.worker_group, strict=True)]

    def shutdown(self) -> None:
        self.workers.clear()


class RayPool:
    """Workers as Ray actors in groups (`fedsim.engine.placement`); a crashed actor is
    replaced.

    The actors are created without waiting for them: they import and warm up while the
    driver prepares the task's data; the first call that needs them waits (`ready()`).
    `plan` decides the groups from the cluster joined (`address`) or started here; every
    actor gets `runtime_env` (what Ray ships to the nodes: modules, pip packages).
    """

    def __init__(self, spec: WorkerSpec, plan: Callable[[Cluster], list[ActorGroup]],
                 address: str | None = None, runtime_env: dict[str, Any] | None = None
                 ) -> None:
        if address is None and "ray" not in sys.modules:
            _require_a_token()  # Ray reads its authentication mode when it is imported
        import ray

        _set_task_identity(spec.run_id)
        # Ray starts workers at nice 15: on a busy machine the actors doing all the
        # training would get a fraction of a core. Only a cluster started here is affected.
        os.environ.setdefault("RAY_worker_niceness", "0")
        if not ray.is_initialized():
            sigterm = signal.getsignal(signal.SIGTERM)
            with warnings.catch_warnings():  # Ray's notice that it hides GPUs from actors
                warnings.simplefilter("ignore", FutureWarning)  # that ask for none: we want it
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, num_cpus=None if address else os.cpu_count())
            if sigterm is not None:  # ray.init installs its own; the driver's stays the app's
                signal.signal(signal.SIGTERM, sigterm)
        self._ray = ray
        self._spec = spec
        # the cluster's totals, not what is free this instant: a run just ended frees its
        # actors' resources a moment after they are killed
        groups = plan(Cluster(ray.cluster_resources(),
                              [n["Resources"] for n in ray.nodes() if n["Alive"]]))
        self._groups = _Groups(groups, spec.vectorize)
        remote = ray.remote(_RayWorker)
        runtime_env = _uploaded(runtime_env) if runtime_env else None
        self._actor_classes = [remote.options(**g.options, runtime_env=runtime_env)
                               for g in groups for _ in range(g.num_workers)]
        self._devices = [g.device for g in groups for _ in range(g.num_workers)]
        self.num_workers = len(self._actor_classes)
        self._pinned: dict[int, int] = {}  # node id -> actor holding its state
        self._task_data: Any = None  # object ref of the shared task data
        self.actors = [self._start_actor(w) for w in range(self.num_workers)]
        self._starting = [a.describe.remote() for a in self.actors]
        self._described: list[Any] = list(self._starting)  # refs, then what they returned

    def ready(self) -> None:
        """Wait until every actor has started (raises if one could not)."""
        if self._starting:
            self._ray.get(self._starting)
            self._starting = []

    def placement(self) -> list[dict[str, Any]]:
        """Each actor's group and `describe()`: the Ray node it runs on, its resources."""
        ray, out = self._ray, []
        for w, (group, described) in enumerate(zip(self._groups.worker_group,
                                                   self._described, strict=True)):
            try:
                self._described[w] = described = (ray.get(described)
                                                  if isinstance(described, ray.ObjectRef)
                                                  else described)
            except ray.exceptions.RayError as exc:
                described = {"error": type(exc).__name__}
            out.append({"group": group, **described})
        return out

    def share_task_data(self, data: dict[str, Any]) -> None:
        """Send `data` once to the object store; every actor (restarted ones too) loads it."""
        self._task_data = self._ray.put(data)
        for actor in self.actors:  # an actor runs one caller's calls in order: before any job
            actor.share_task_data.remote(self._task_data)

    def _start_actor(self, w: int) -> Any:
        actor = self._actor_classes[w].remote(self._spec, self._devices[w])
        if self._task_data is not None:
            actor.share_task_data.remote(self._task_data)
        return actor

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        self.ready()
        ray = self._ray
        batches = self._groups.split(jobs, self._pinned)
        users: dict[int, set[int]] = {}
        for w, batch in batches.items():
            for job in batch:
                users.setdefault(job.content_index, set()).add(w)
        # a large broadcast goes to the object store once; a small one (the size Ray passes
        # inline with a call anyway) and any other payload travel with the call that uses
        # them: no store round trip for a tiny model, and no actor deserialises other
        # actors' messages
        shared = {i: ray.put(payloads[i]) for i, used_by in users.items()
                  if len(used_by) > 1 and payload_nbytes(payloads[i]) > INLINE_PAYLOAD_BYTES}
        futures = {}
        for w, batch in batches.items():
            indices = sorted({job.content_index for job in batch})
            local = {index: n for n, index in enumerate(indices)}
            own = [replace(job, content_index=local[job.content_index]) for job in batch]
            futures[w] = self.actors[w].run.remote(
                own, *(shared.get(i, payloads[i]) for i in indices))
        try:  # one wait for every actor's batch
            parts = dict(zip(futures, ray.get(list(futures.values())), strict=True))
        except ray.exceptions.RayActorError:
            parts = {}  # an actor died: find which below, one batch at a time
        results: list[JobResult] = []
        for w, future in futures.items():
            try:
                results.extend(parts[w] if w in parts else ray.get(future))
            except ray.exceptions.RayActorError as exc:
                log.warning("worker %d died (%s); restarting it", w, type(exc).__name__)
                self.actors[w] = self._start_actor(w)
                self._described[w] = self.actors[w].describe.remote()
                self._pinned = {n: a for n, a in self._pinned.items() if a != w}  # state lost
                reason = f"worker process died: {type(exc).__name__}"
                results.extend(JobResult(j.message_id, None, ErrorCode.UNKNOWN, reason)
                               for j in batches[w])
        _pin(batches, results, self._pinned)
        return _in_job_order(jobs, results)

    def get_states(self) -> dict[str, Any]:
        """Every node's Context.state and the actor it is pinned to (for checkpoints)."""
        self.ready()
        states: dict[int, Any] = {}
        for part in self._ray.get([a.get_states.remote() for a in self.actors]):
            states.update(part)
        return {"pinned": dict(self._pinned), "states": states}

    def set_states(self, saved: dict[str, Any]) -> None:
        self.ready()
        self._pinned = self._groups.repin(saved)
        by_actor: dict[int, dict[int, Any]] = {}
        for node, state in saved["states"].items():
            by_actor.setdefault(self._pinned[node], {})[node] = state
        self._ray.get([self.actors[w].set_states.remote(s) for w, s in by_actor.items()])

    def kill_worker(self, index: int) -> None:
        """Kill one actor without restarting it (fault-injection hook for tests)."""
        self.ready()
        self._ray.kill(self.actors[index], no_restart=True)

    def shutdown(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors.clear()


def _uploaded(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """`runtime_env` with its local folders uploaded to the cluster, as URIs.

    Ray uploads local `py_modules` and `working_dir` only for the runtime_env given to
    `ray.init`, which holds for every later run of the process; an actor's own runtime_env
    must name URIs. This is what `ray.init` does with them (Ray's own functions, of the Ray
    that flwr[simulation] pins), so each run ships its own modules.
    """
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    with tempfile.TemporaryDirectory(prefix="fedsim-runtime-env-") as scratch:
        runtime_env = upload_py_modules_if_needed(dict(runtime_env), include_gitignore=True,
                                                  scratch_dir=scratch, logger=log)
        runtime_env = upload_working_dir_if_needed(runtime_env, include_gitignore=True,
                                                   scratch_dir=scratch, logger=log)
    runtime_env.pop("excludes", None)  # used by the upload; as ray.init drops it
    return runtime_env


class _RayWorker(ClientWorker):
    """`ClientWorker` with payloads passed as separate (object-store) arguments."""

    def __init__(self, spec: WorkerSpec, device: str) -> None:
        _set_task_identity(spec.run_id)
        super().__init__(spec, device)

    def describe(self) -> dict[str, Any]:
        import ray

        context = ray.get_runtime_context()
        return {**super().describe(), "pid": os.getpid(), "node_id": context.get_node_id(),
                "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
                "resources": context.get_assigned_resources()}

    def run(self, jobs: list[Job], *payloads: RecordDict) -> list[JobResult]:  # type: ignore[override]
        return super().run(jobs, list(payloads))


def make_pool(kind: str, spec: WorkerSpec,
              plan: Callable[[Cluster | None], list[ActorGroup]] = lambda _: [ActorGroup(1)],
              address: str | None = None, runtime_env: dict[str, Any] | None = None) -> Pool:
    """Inline workers (`plan(None)`) or Ray actors (`plan(cluster)`)."""
    if kind == "inline":
        return InlinePool(spec, plan(None))
    return RayPool(spec, plan, address, runtime_env)


def error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)
