"""Sim-to-real: a deployed run measures each node's jobs and writes them as a trace.

On real devices the server times every job from push to reply (wall clock) and the
ClientApp reports how long its handler computed (`COMPUTE_S_KEY`, measured on the device
by `measure_compute`). Per node, the trace (`fedsim.traces`, in the run directory) gets
its speed, the samples it processed over the seconds it computed, and the rest of a job's
time, push to reply minus compute (transfer, the SuperNode's polling, starting the
ClientApp, loading the node's data), as a fixed latency split between downlink and uplink.
A scenario that names the run directory in `clients.trace` replays those devices, e.g. with
more local epochs.
Bandwidth is left unlimited: on one machine a job's overhead does not grow with its bytes.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.core.client import client_task
from fedsim.core.keys import COMPUTE_S_KEY, WORK_KEY
from fedsim.core.services import PartitionMap
from fedsim.engine.traces import TraceDevice
from fedsim.traces import DEPLOYED_TRACE, write_trace

JOBS_FILE = "jobs.jsonl"
"""Every measured job of a deployed run, one JSON object a line, in its run directory."""
POLL_S = 0.1
"""Seconds between two pulls while the server waits for replies (Flower's grid waits 3 s,
which would round every measured job up to a multiple of 3 s)."""


def measure_compute(message: Message, context: Context, call_next: ClientAppCallable
                    ) -> Message:
    """A ClientApp mod: a deployed train or evaluate reply carries the seconds its handler
    took (`COMPUTE_S_KEY`) in its first metric record. The node's data is loaded before the
    clock starts: a deployed ClientApp process loads it for every message, a fixed cost
    that does not grow with the work. A simulated run (its run config holds the scenario
    itself) is left alone: its time is virtual."""
    deployed = "scenario-json" not in context.run_config
    if not deployed or message.metadata.message_type.split(".")[0] not in ("train", "evaluate"):
        return call_next(message, context)
    task, partition = client_task(context)
    task.train_data(partition)
    start = time.perf_counter()
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    for record in reply.content.metric_records.values():
        record[COMPUTE_S_KEY] = time.perf_counter() - start
        break
    return reply


@dataclass
class _Job:
    node: int
    kind: str
    pushed: float


class MeasuredGrid(Grid):
    """A Flower grid that times every job: push to reply, and the reply's reported compute."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self._pending: dict[str, _Job] = {}
        self.jobs: list[dict[str, Any]] = []

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        now = time.monotonic()
        for message, mid in zip(messages, ids, strict=True):
            self._pending[mid] = _Job(message.metadata.dst_node_id,
                                      message.metadata.message_type, now)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        now = time.monotonic()
        for reply in replies:
            job = self._pending.pop(reply.metadata.reply_to_message_id, None)
            if job is None or reply.has_error():
                continue
            metrics = {k: v for r in reply.content.metric_records.values() for k, v in r.items()}
            if COMPUTE_S_KEY in metrics:
                self.jobs.append({"node": job.node, "kind": job.kind,
                                  "total_s": now - job.pushed,
                                  "compute_s": float(metrics[COMPUTE_S_KEY]),
                                  "work": float(metrics.get(WORK_KEY, 0.0))})
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull every `POLL_S` until every reply is in or `timeout` passed."""
        pending = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (end is None or time.monotonic() < end):
            got = list(self.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if pending:
                time.sleep(POLL_S)
        return replies

    def write(self, out_dir: Path, partitions: PartitionMap) -> None:
        """`jobs.jsonl` (every measured job) and the per-node trace, in `out_dir`."""
        with (out_dir / JOBS_FILE).open("w", encoding="utf-8") as out:
            for job in self.jobs:
                partition = partitions.partition_of(job["node"])
                out.write(json.dumps({**job, "partition": partition}) + "\n")
        devices = trace_from_jobs(self.jobs, partitions)
        if devices:
            write_trace(devices, out_dir / DEPLOYED_TRACE)


def trace_from_jobs(jobs: list[dict[str, Any]], partitions: PartitionMap) -> list[TraceDevice]:
    """One device per node that trained: samples over seconds computed, and the median of
    its jobs' other seconds as a latency, half each way. Named by partition id."""
    devices = []
    for node in sorted({j["node"] for j in jobs}, key=partitions.partition_of):
        mine = [j for j in jobs if j["node"] == node and j["kind"].startswith("train")]
        compute = sum(j["compute_s"] for j in mine)
        work = sum(j["work"] for j in mine)
        if not mine or compute <= 0 or work <= 0:
            continue
        overhead = statistics.median(max(0.0, j["total_s"] - j["compute_s"]) for j in mine)
        devices.append(TraceDevice(str(partitions.partition_of(node)), speed_sps=work / compute,
                                   up_latency_s=overhead / 2, down_latency_s=overhead / 2))
    return devices
