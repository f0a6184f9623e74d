"""The client pool: workers that execute the ClientApp for many virtual nodes.

A worker hosts a fixed subset of the virtual nodes (node index modulo the
number of workers), so each node's data shard and its Flower `Context.state`
(error-feedback memory, control variates, dual variables...) stay where they
are across rounds. The driver sends a worker all of its jobs of a push in one
call, and a broadcast payload crosses to each worker once, not once per node.

`InlinePool` runs the workers in the driver process (tests, debugging);
`RayPool` runs them as Ray actors. Both execute the same `ClientWorker` code, so
a scenario gives the same numbers on either.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedsim.seeding import rng

log = logging.getLogger("fedsim")


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


@dataclass
class JobResult:
    """What a worker returns: the reply content or an error, never both."""

    message_id: str
    content: RecordDict | None = None
    error_code: int = 0
    error_reason: str = ""


@dataclass
class WorkerSpec:
    """What every worker needs to serve nodes: the app, the run, the population size."""

    client_app: str  # "module:attribute" of a flwr ClientApp
    run_id: int
    num_partitions: int
    run_config: dict[str, Any] = field(default_factory=dict)


def load_object(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class ClientWorker:
    """Executes a ClientApp for the nodes mapped to it, keeping their Contexts."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        torch.set_num_threads(1)
        self.spec = spec
        self.app = load_object(spec.client_app)
        self.contexts: dict[int, Context] = {}
        self._errors_seen: set[str] = set()

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
        import torch

        from fedsim.channel import add_noise

        results = []
        for job in jobs:
            content = payloads[job.content_index]
            if job.downlink_sigma > 0:
                content = add_noise(content, job.downlink_sigma, rng(job.seed, "downlink-noise"))
            message = Message(content, dst_node_id=job.node_id, message_type=job.message_type,
                              group_id=job.group_id)
            message.metadata.__dict__["_message_id"] = job.message_id
            TaskIdentity.node_id = job.node_id
            torch.manual_seed(job.seed)
            try:
                reply = self.app(message, self.context(job.node_id, job.partition_id))
            except Exception as exc:  # a client's crash must not take the round down
                reason = f"{type(exc).__name__}: {exc}"
                if reason not in self._errors_seen:
                    self._errors_seen.add(reason)
                    log.warning("node %d raised %s", job.node_id, reason)
                results.append(JobResult(job.message_id, None,
                                         ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason))
                continue
            finally:
                TaskIdentity.node_id = SUPERLINK_NODE_ID
            if reply.has_error():
                results.append(JobResult(job.message_id, None, reply.error.code,
                                         reply.error.reason or ""))
            else:
                results.append(JobResult(job.message_id, reply.content))
        return results

    def ping(self) -> int:
        return os.getpid()


class Pool(Protocol):
    num_workers: int

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]: ...

    def shutdown(self) -> None: ...


def _split(jobs: list[Job], num_workers: int) -> dict[int, list[Job]]:
    batches: dict[int, list[Job]] = {}
    for job in jobs:
        batches.setdefault(job.partition_id % num_workers, []).append(job)
    return batches


def _in_job_order(jobs: list[Job], results: list[JobResult]) -> list[JobResult]:
    by_id = {r.message_id: r for r in results}
    return [by_id[j.message_id] for j in jobs]


def _set_task_identity(run_id: int) -> None:
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    TaskIdentity.task_id = 0


class InlinePool:
    """Workers in the driver process: same code path as Ray, easy to debug."""

    def __init__(self, spec: WorkerSpec, num_workers: int = 1) -> None:
        _set_task_identity(spec.run_id)
        self.num_workers = num_workers
        self.workers = [ClientWorker(spec) for _ in range(num_workers)]

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        results: list[JobResult] = []
        for w, batch in sorted(_split(jobs, self.num_workers).items()):
            results.extend(self.workers[w].run(batch, payloads))
        return _in_job_order(jobs, results)

    def shutdown(self) -> None:
        self.workers.clear()


class RayPool:
    """Workers as Ray actors, one CPU each by default; a crashed actor is replaced."""

    def __init__(self, spec: WorkerSpec, num_workers: int, actor_cpus: float = 1.0,
                 address: str | None = None) -> None:
        import ray

        _set_task_identity(spec.run_id)
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, num_cpus=None if address else os.cpu_count())
        self._ray = ray
        self._spec = spec
        self._actor_class = ray.remote(num_cpus=actor_cpus)(_RayWorker)
        self.num_workers = num_workers
        self.actors = [self._start_actor() for _ in range(num_workers)]
        ray.get([a.ping.remote() for a in self.actors])

    def _start_actor(self) -> Any:
        return self._actor_class.remote(self._spec)

    def execute(self, jobs: list[Job], payloads: list[RecordDict]) -> list[JobResult]:
        ray = self._ray
        batches = _split(jobs, self.num_workers)
        payload_refs = [ray.put(p) for p in payloads]
        futures = {w: self.actors[w].run.remote(batch, *payload_refs)
                   for w, batch in batches.items()}
        results: list[JobResult] = []
        for w, future in futures.items():
            try:
                results.extend(ray.get(future))
            except ray.exceptions.RayActorError as exc:
                log.warning("worker %d died (%s); restarting it", w, type(exc).__name__)
                self.actors[w] = self._start_actor()
                reason = f"worker process died: {type(exc).__name__}"
                results.extend(JobResult(j.message_id, None, ErrorCode.UNKNOWN, reason)
                               for j in batches[w])
        return _in_job_order(jobs, results)

    def kill_worker(self, index: int) -> None:
        """Kill one actor without restarting it (fault-injection hook for tests)."""
        self._ray.kill(self.actors[index], no_restart=True)

    def shutdown(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors.clear()


class _RayWorker(ClientWorker):
    """`ClientWorker` with payloads passed as separate (object-store) arguments."""

    def __init__(self, spec: WorkerSpec) -> None:
        _set_task_identity(spec.run_id)
        super().__init__(spec)

    def run(self, jobs: list[Job], *payloads: RecordDict) -> list[JobResult]:  # type: ignore[override]
        return super().run(jobs, list(payloads))


def make_pool(kind: str, spec: WorkerSpec, num_workers: int | None = None,
              actor_cpus: float = 1.0, address: str | None = None) -> Pool:
    if kind == "inline":
        return InlinePool(spec, num_workers or 1)
    return RayPool(spec, num_workers or os.cpu_count() or 1, actor_cpus=actor_cpus,
                   address=address)


def error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)
