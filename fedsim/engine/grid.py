"""SimGrid: a Flower `Grid` whose messages travel in virtual time.

Any Flower Message-API strategy talks to a `Grid`; this one delivers its
messages to simulated devices. A pushed message goes through

    downlink transfer -> compute on the device -> uplink transfer

and its reply becomes visible to `pull_messages` only once the virtual clock
has reached the reply's arrival time. Compute time is the work the client
reports (`WORK_KEY`, in samples, else `num-examples`) divided by the device's
speed and multiplied by its straggling slowdown, never measured wall time,
so virtual time is deterministic. `send_and_receive(timeout=T)` treats T as a
deadline in virtual seconds, capped by the scenario's `deadline_s` whatever
the strategy passes: later replies are dropped and counted as stragglers.
Nothing here sleeps or polls.

A message lost on a link, a device that drops out, or a trace device that goes
offline mid-job comes back as a Flower error reply at the moment the server would
learn of it, so strategies count it as a failure and a round without a deadline
still ends. Uploads over a shared uplink (`LinkSpec.shared`) split its bandwidth:
their arrivals are set once every job of a push is known (`SharedUplink`).
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.core.clock import RESOLUTION_S, Clock
from fedsim.core.codec import payload_nbytes
from fedsim.core.keys import DROPPED_OUT, LOST_ON_DOWNLINK, LOST_ON_UPLINK, WORK_KEY
from fedsim.core.schema import ChannelSpec
from fedsim.core.seeding import int_seeds, rng
from fedsim.core.services import PartitionMap
from fedsim.engine.channel import SharedUplink, add_noise, is_lost
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.ledger import (
    COLUMN,
    COLUMNS,
    NodeLedger,
    Timeline,
    node_rows,
    tier_labels,
    tier_summary,
    timeline_rows,
    timeline_sample,
)
from fedsim.engine.pool import Job, JobResult, Pool, error_reply

SENT, COMPLETED, STRAGGLED, FAILED, DROPPED = (COLUMN[c] for c in (
    "sent", "completed", "straggled", "failed", "dropped"))
BYTES_UP, BYTES_DOWN, COMPUTE_S, TRANSFER_S, EXAMPLES = (COLUMN[c] for c in (
    "bytes_up", "bytes_down", "compute_s", "transfer_s", "examples"))

EVAL_COST = 1 / 3
"""Cost of evaluating one sample relative to training on it (forward pass only)."""




def random_node_ids(seed: int, n: int) -> np.ndarray:
    """n distinct node ids drawn like a SuperLink's: random 64-bit integers, from the seed.

    Nothing may read a partition from an id (ids above 2^63 included), so every test of a
    strategy on SimGrid checks that it treats ids as opaque.
    """
    draw = rng(seed, "node-ids")
    ids = np.unique(draw.integers(2, 2**64, size=n, dtype=np.uint64, endpoint=False))
    while ids.size < n:  # a collision among 2^64 values: draw the missing ones again
        more = draw.integers(2, 2**64, size=n - ids.size, dtype=np.uint64, endpoint=False)
        ids = np.unique(np.concatenate([ids, more]))
    return draw.permutation(ids)  # unique() sorted them; ids carry no order either


@dataclass
class RoundStats:
    """What happened on the grid between two `end_round` calls."""

    sent: int = 0
    replies: int = 0
    failures: int = 0
    stragglers: int = 0
    executed: int = 0  # jobs that reached a client's code
    client_errors: int = 0  # of those, jobs whose client code raised
    first_client_error: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    by_node: dict[int, list[float]] = field(default_factory=dict)  # node -> `COLUMNS` values

    def node(self, node: int) -> list[float]:
        """The node's counters this round (`fedsim.engine.ledger.COLUMNS`)."""
        counters = self.by_node.get(node)
        if counters is None:
            counters = self.by_node[node] = [0.0] * len(COLUMNS)
        return counters

    def as_metrics(self) -> dict[str, int]:
        return {"sent": self.sent, "replies": self.replies, "failures": self.failures,
                "stragglers": self.stragglers, "client_errors": self.client_errors,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}


@dataclass
class _InFlight:
    order: int
    arrival: float
    reply: Message
    node: int
    round: int  # the availability round the job was sent in
    examples: float  # `num-examples` of a train reply (its FedAvg weight), else 0


class SimGrid(Grid):
    """A Flower Grid over simulated devices and links, in virtual time."""

    def __init__(self, pool: Pool, devices: DevicePopulation, channel: ChannelSpec,
                 seed: int, run: Run, deadline_s: float | None = None,
                 work_metric: str = WORK_KEY, train_epochs: float = 1.0,
                 timeline_nodes: int = 0) -> None:
        """`work_metric` is the reply metric holding a job's samples of work; a reply
        without it did `num-examples` x `train_epochs` (training) or x `EVAL_COST`.
        `timeline_nodes`: how many devices' events the timeline keeps (0: none)."""
        self.pool = pool
        self.devices = devices
        self.channel = channel
        self.seed = seed
        self.deadline_s = deadline_s
        self._work = (work_metric, train_epochs)
        self._run = run
        self.node_ids = random_node_ids(seed, devices.n)  # node i holds partition i
        self._partition_of = {int(node): i for i, node in enumerate(self.node_ids)}
        self.now = 0.0
        self.round = 0
        self.stats = RoundStats()
        self._in_flight: dict[str, _InFlight] = {}
        self._pushed = 0
        self._id_prefix = uuid.uuid4().hex  # message ids: this prefix and the push count
        self._jobs_this_round: dict[int, int] = {}
        self._online: tuple[tuple[int, float], np.ndarray] | None = None  # (round, now), who
        self._cells: dict[int, SharedUplink] = {}  # tier with its own uplink (-1: the channel's)
        self.ledger = NodeLedger.empty(devices.n)
        self.timeline = Timeline(timeline_sample(devices.tier_of, timeline_nodes))
        self.tier_names = tier_labels([tier.name for tier in devices.tiers])

    # ------------------------------------------------------------ Grid API

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Nodes online in the current round, in partition order."""
        return self.node_ids[self._online_now()].tolist()  # vectorised: 100k nodes in ~1 ms

    def _online_now(self) -> np.ndarray:
        """Who is online in the current availability round (drawn once per round) and, for
        trace devices, at the current virtual time."""
        when = (self.round, self.now if self.devices.trace else 0.0)
        if self._online is None or self._online[0] != when:
            self._online = (when, self.devices.available(*when))
        return self._online[1]

    def partition_map(self) -> PartitionMap:
        """Which partition each node holds (the simulator knows it without asking)."""
        return PartitionMap(self._partition_of, self.devices.n)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver messages to their devices now; replies arrive later in virtual time."""
        messages = list(messages)
        for cell in self._cells.values():
            cell.settle(self.now)
        jobs: list[Job] = []
        payloads: list[RecordDict] = []
        payload_index: dict[int, int] = {}
        executed: list[_Dispatch] = []
        for message in messages:
            dispatch = self._dispatch(message)
            if dispatch.lost:
                reply = error_reply(message, LOST_ON_DOWNLINK, "message lost on the downlink")
                self.timeline.add("lost", dispatch.node, self.round, dispatch.start,
                                  dispatch.start, message.metadata.message_type)
                self._hold(dispatch, dispatch.start, reply)
                continue
            if id(message.content) not in payload_index:
                payload_index[id(message.content)] = len(payloads)
                payloads.append(message.content)
            executed.append(dispatch)
        keys = [d.key for d in executed]  # every job's seed at once: ~15x faster than one by one
        seeds = int_seeds(self.seed, "job", *([key[i] for key in keys] for i in range(3)))
        for dispatch, seed in zip(executed, seeds, strict=True):
            metadata = dispatch.message.metadata
            jobs.append(Job(
                node_id=metadata.dst_node_id, partition_id=dispatch.node,
                message_type=metadata.message_type, message_id=metadata.message_id,
                group_id=metadata.group_id,
                content_index=payload_index[id(dispatch.message.content)],
                seed=seed, downlink_sigma=dispatch.downlink_sigma,
            ))
        results = self.pool.execute(jobs, payloads) if jobs else []
        self.stats.executed += len(results)
        for result in results:
            if result.error_code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION:
                self.stats.client_errors += 1
                self.stats.first_client_error = (self.stats.first_client_error
                                                 or result.error_reason)
        for dispatch, result in zip(executed, results, strict=True):
            self._complete(dispatch, result)
        self._share_uplinks()
        return [m.metadata.message_id for m in messages]

    def _dispatch(self, message: Message) -> _Dispatch:
        """Give the message an id, count its bytes, time its downlink, draw its loss."""
        # unique like the SuperLink's ids, but a counter: uuid4() cost ~10 us per message
        message.metadata.__dict__["_message_id"] = f"{self._id_prefix}-{self._pushed + 1}"
        node = self._partition_of.get(message.metadata.dst_node_id)
        if node is None:
            raise ValueError(f"message for unknown node id {message.metadata.dst_node_id}")
        job_no = self._jobs_this_round.get(node, 0)
        self._jobs_this_round[node] = job_no + 1
        key = (node, self.round, job_no)
        downlink = self.devices.downlink(node, self.channel.downlink)
        nbytes = payload_nbytes(message.content)
        down_s = self.devices.job_time(node, self.channel, bytes_down=nbytes).down
        self.stats.sent += 1
        self.stats.bytes_down += nbytes
        counters = self.stats.node(node)
        counters[SENT] += 1
        counters[BYTES_DOWN] += nbytes
        counters[TRANSFER_S] += down_s
        self.timeline.add("downlink", node, self.round, self.now, self.now + down_s,
                          message.metadata.message_type)
        self._pushed += 1
        return _Dispatch(
            message=message, node=node, key=key, order=self._pushed, sent=self.now,
            start=self.now + down_s,
            lost=downlink.erasure_p > 0  # a generator costs ~50 us: only build one if used
            and is_lost(downlink, rng(self.seed, "downlink-loss", *key)),
            downlink_sigma=downlink.noise_sigma,
        )

    def _complete(self, dispatch: _Dispatch, result: JobResult) -> None:
        """Turn a worker's result into a reply that arrives after compute and uplink."""
        message, node, key = dispatch.message, dispatch.node, dispatch.key
        kind = message.metadata.message_type
        if result.content is None:
            self._hold(dispatch, dispatch.start,
                       error_reply(message, result.error_code, result.error_reason))
            return
        work = _reported_work(result.content, message.metadata.message_type, *self._work)
        nbytes = payload_nbytes(result.content)
        timing = self.devices.job_time(node, self.channel, work=work, bytes_up=nbytes,
                                       slowdown=self.devices.slowdown(*key))
        dropped_at = self.devices.dropout_at(*key)
        uplink = self.devices.uplink(node, self.channel.uplink)
        offline = self.devices.offline_during(  # trace devices' uplinks are never shared
            node, dispatch.sent, dispatch.start + timing.compute + timing.up)
        if dropped_at is not None or offline is not None:
            gone = min(dispatch.start + dropped_at * timing.compute
                       if dropped_at is not None else math.inf,
                       offline if offline is not None else math.inf)
            self.stats.node(node)[COMPUTE_S] += max(0.0, gone - dispatch.start)
            self.timeline.add("compute", node, self.round, dispatch.start, gone, kind)
            self.timeline.add("dropout", node, self.round, gone, gone, kind)
            why = "device dropped out" if offline is None else "device went offline"
            self._hold(dispatch, gone, error_reply(message, DROPPED_OUT, why))
            return
        self.stats.bytes_up += nbytes
        counters = self.stats.node(node)
        counters[BYTES_UP] += nbytes
        counters[COMPUTE_S] += timing.compute
        counters[TRANSFER_S] += timing.up
        computed = dispatch.start + timing.compute
        arrival = computed + timing.up
        if uplink.shared:
            tier = int(self.devices.tier_of[node])
            cell_key = tier if self.devices.tiers[tier].uplink is not None else -1
            cell = self._cells.get(cell_key)
            if cell is None:
                cell = self._cells[cell_key] = SharedUplink(uplink)
            cell.add(message.metadata.message_id, computed, nbytes)
        self.timeline.add("compute", node, self.round, dispatch.start, computed, kind)
        self.timeline.add("uplink", node, self.round, computed, arrival, kind)
        if uplink.erasure_p > 0 and is_lost(uplink, rng(self.seed, "uplink-loss", *key)):
            reply = error_reply(message, LOST_ON_UPLINK, "message lost on the uplink")
        else:
            noisy = result.content if uplink.noise_sigma == 0 else add_noise(
                result.content, uplink.noise_sigma, rng(self.seed, "uplink-noise", *key))
            reply = Message(noisy, reply_to=message)
        examples = (_reported(result.content, "num-examples") or 0.0
                    if kind.startswith("train") else 0.0)
        self._hold(dispatch, arrival, reply, examples)

    def _share_uplinks(self) -> None:
        """Set the arrivals of the replies still on a shared uplink: they slowed each other
        down, and the jobs just pushed may slow them further."""
        for cell in self._cells.values():
            for mid, arrival in cell.finish_times().items():
                if mid in self._in_flight:  # else the server stopped waiting for it
                    self._in_flight[mid].arrival = arrival

    def _hold(self, dispatch: _Dispatch, arrival: float, reply: Message,
              examples: float = 0.0) -> None:
        self._in_flight[dispatch.message.metadata.message_id] = _InFlight(
            dispatch.order, arrival, reply, dispatch.node, dispatch.key[1], examples)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Replies that have arrived by the current virtual time, in arrival order."""
        arrived = [(f.arrival, f.order, mid) for mid in message_ids
                   if (f := self._in_flight.get(mid)) is not None and f.arrival <= self.now]
        return [self._take(mid) for _, _, mid in sorted(arrived)]

    def _take(self, message_id: str) -> Message:
        flight = self._in_flight.pop(message_id)
        reply, node = flight.reply, flight.node
        counters = self.stats.node(node)
        if reply.has_error():
            self.stats.failures += 1
            counters[DROPPED if reply.error.code == DROPPED_OUT else FAILED] += 1
        else:
            self.stats.replies += 1
            counters[COMPLETED] += 1
            counters[EXAMPLES] += flight.examples
            self.timeline.add("arrival", node, flight.round, flight.arrival, flight.arrival,
                              reply.metadata.message_type)
        return reply

    def _cut(self, message_ids: Iterable[str]) -> None:
        """The server stops waiting for these replies: stragglers, booked at `now`."""
        for mid in message_ids:
            flight = self._in_flight.pop(mid)
            self.stats.stragglers += 1
            self.stats.node(flight.node)[STRAGGLED] += 1
            self.timeline.add("straggler_cut", flight.node, flight.round, self.now, self.now,
                              flight.reply.metadata.message_type)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Push, advance the clock to the last arrival (or the deadline), pull.

        Replies come back in the order the messages were given, so that a
        strategy's floating-point aggregation does not depend on timing.
        Replies later than the deadline (`timeout` or the scenario's `deadline_s`,
        the sooner) are discarded and counted as stragglers.
        """
        ids = self.push_messages(messages)
        if not ids:
            return []
        limits = [t for t in (timeout, self.deadline_s) if t is not None]
        deadline = self.now + min(limits) if limits else math.inf
        arrivals = [self._in_flight[mid].arrival for mid in ids]
        on_time = [a for a in arrivals if a <= deadline]
        self.now = max(self.now, deadline if len(on_time) < len(arrivals) else max(arrivals))
        replies = [self._take(mid) for mid in ids if self._in_flight[mid].arrival <= self.now]
        self._cut([mid for mid in ids if mid in self._in_flight])
        return replies

    # ------------------------------------------------------------ virtual clock

    def next_arrival(self, message_ids: Iterable[str]) -> float | None:
        """Virtual time of the earliest pending reply among `message_ids`, if any."""
        times = [f.arrival for mid in message_ids if (f := self._in_flight.get(mid))]
        return min(times) if times else None

    def count_stragglers(self, message_ids: Iterable[str]) -> None:
        """Replies a strategy stopped waiting for (outside `send_and_receive`); they will
        never be pulled."""
        self._cut(message_ids)

    def record_exchanges(self, duration: float, bytes_by_node: dict[int, tuple[int, int]]
                         ) -> None:
        """Node-to-node exchanges (gossip) took `duration` virtual seconds and moved
        `bytes_by_node` (node -> (up, down)); counted in the round's stats."""
        for node, (up, down) in bytes_by_node.items():
            self.stats.bytes_up += up
            self.stats.bytes_down += down
            counters = self.stats.node(node)
            counters[BYTES_UP] += up
            counters[BYTES_DOWN] += down
            counters[TRANSFER_S] += duration
            self.timeline.add("gossip", node, self.round, self.now, self.now + duration)
        self.advance_to(self.now + duration)

    def checkpoint_state(self) -> dict[str, Any]:
        """What the grid needs to go on after a restart: clock, availability round,
        counters and replies in flight (the nodes' own states: `client_states`)."""
        return copy.deepcopy({
            "now": self.now, "round": self.round, "stats": self.stats,
            "in_flight": self._in_flight, "pushed": self._pushed,
            "jobs_this_round": self._jobs_this_round, "ledger": self.ledger,
            "timeline": self.timeline, "cells": self._cells})

    def restore_state(self, state: dict[str, Any]) -> None:
        """Put back what `checkpoint_state` returned."""
        state = copy.deepcopy(state)
        self.now, self.round, self.stats = state["now"], state["round"], state["stats"]
        self._in_flight, self._pushed = state["in_flight"], state["pushed"]
        self._jobs_this_round = state["jobs_this_round"]
        self.ledger, self.timeline = state["ledger"], state["timeline"]
        self._cells = state.get("cells", {})

    def client_states(self) -> Any:
        """Every node's Flower `Context.state` that holds anything, from the pool."""
        return self.pool.get_states()

    def restore_client_states(self, states: Any) -> None:
        self.pool.set_states(states)

    def clock(self) -> VirtualClock:
        """The grid's virtual clock, for strategies that act on time (`SimServices.clock`)."""
        return VirtualClock(self)

    def advance_to(self, t: float) -> None:
        """Move the virtual clock forward (never backward)."""
        self.now = max(self.now, t)

    @property
    def messages_pushed(self) -> int:
        return self._pushed

    def idle(self, seconds: float) -> None:
        """The server waits: time passes and availability moves on, nothing is sent."""
        self.now += seconds
        self._next_availability_round({})

    def end_round(self) -> RoundStats:
        """Close the current round's bookkeeping; availability moves to the next round."""
        stats, self.stats = self.stats, RoundStats()
        self._next_availability_round(stats.by_node)
        return stats

    def _next_availability_round(self, by_node: dict[int, list[float]]) -> None:
        """Book the closed round's per-node counters, who was online and who was sent a
        job, then move on."""
        self.ledger.close_round(by_node, self._online_now(), list(self._jobs_this_round))
        self.round += 1
        self._jobs_this_round = {}

    def node_records(self) -> list[dict[str, Any]]:
        """One row per node that took part in the recorded rounds: its tier, its jobs'
        fates, bytes, seconds."""
        return node_rows(self.ledger, self.devices.tier_of, self.tier_names)

    def timeline_records(self) -> list[dict[str, Any]]:
        """The sampled nodes' events, each with its node's tier."""
        return timeline_rows(self.timeline, self.devices.tier_of, self.tier_names)

    def tier_records(self) -> dict[str, dict[str, Any]]:
        """Per tier: participation vs availability, fate rates, bytes, weight share."""
        return tier_summary(self.ledger, self.devices.tier_of, self.tier_names)


@dataclass
class _Dispatch:
    message: Message
    node: int
    key: tuple[int, int, int]  # (node, round, job number in round): keys every random draw
    order: int
    sent: float  # virtual time the server pushed it
    start: float  # virtual time the device has the message
    lost: bool
    downlink_sigma: float


def _reported(content: RecordDict, metric: str) -> float | None:
    """The value of `metric` in the reply's first metric record that has it.

    Reads the records directly: `RecordDict.metric_records` builds a checked copy of
    the dict on every access, which cost more than the rest of a reply's bookkeeping."""
    for record in content.values():
        if isinstance(record, MetricRecord) and metric in record:
            return float(record[metric])  # type: ignore[arg-type]
    return None


def _reported_work(content: RecordDict, message_type: str, metric: str, epochs: float) -> float:
    """Samples of work the client reports in `metric`, else `num-examples` x `epochs`;
    evaluation costs `EVAL_COST` per sample."""
    work = _reported(content, metric)
    if work is not None:
        return work
    examples = _reported(content, "num-examples")
    if examples is not None:
        scale = EVAL_COST if message_type.startswith("evaluate") else epochs
        return examples * scale
    return 0.0


class VirtualClock(Clock):
    """The virtual clock of a `SimGrid`: waiting is a jump to the next event."""

    def __init__(self, grid: SimGrid) -> None:
        self.grid = grid

    def now(self) -> float:
        return float(self.grid.now)

    def wait_until(self, t: float) -> None:
        self.grid.advance_to(t)

    def collect_until(self, grid: Grid, message_ids: Sequence[str], t: float) -> list[Message]:
        self.wait_until(t)
        replies = self.grid.pull_messages(message_ids)
        return replies + self._ties(message_ids, t)

    def wait_for_replies(self, grid: Grid, message_ids: Sequence[str],
                         until: float = math.inf) -> list[Message]:
        first = self.grid.next_arrival(message_ids)
        if first is None or first > until + RESOLUTION_S:
            if math.isfinite(until):
                self.wait_until(until)
            return []
        self.wait_until(first)
        return self.grid.pull_messages(message_ids) + self._ties(message_ids, first)

    def _ties(self, message_ids: Sequence[str], t: float) -> list[Message]:
        """Replies arriving within `RESOLUTION_S` after `t` (float rounding of a tie)."""
        replies: list[Message] = []
        while (nxt := self.grid.next_arrival(message_ids)) is not None and nxt <= t + RESOLUTION_S:
            self.grid.advance_to(nxt)
            replies += self.grid.pull_messages(message_ids)
        return replies
