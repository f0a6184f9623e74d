"""What each simulated device did over a run: a per-node ledger and a sampled timeline.

`SimGrid` books every job's fate here as it happens (sent, then exactly one of completed,
straggled, failed, dropped, or still in flight when the run ended), with its bytes and
virtual seconds, so a run can answer "which devices does this strategy leave behind?".
Both are plain data (numpy arrays, lists of tuples): a checkpoint holds them as they are.

The timeline keeps the events of at most `timeline_nodes` devices, chosen evenly within
each tier (every tier keeps at least one), so a run of 100k devices stays small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FATES = ("completed", "straggled", "failed", "dropped")
"""What became of a job the server sent (failed: lost on a link or client code raised;
dropped: the device dropped out). A job with none of them by the last recorded round was
still in flight then (async strategies keep jobs running across rounds)."""

COLUMNS = ("sent", *FATES, "bytes_up", "bytes_down", "compute_s", "transfer_s", "examples",
           "rounds_online", "rounds_with_job")
"""A node's counters: `examples` is the `num-examples` of its train replies the server
received (their FedAvg weight); `rounds_online`/`rounds_with_job` count the availability
rounds in which it was online, and was sent at least one job."""
COLUMN = {name: i for i, name in enumerate(COLUMNS)}
INTEGER_COLUMNS = frozenset(COLUMNS) - {"compute_s", "transfer_s", "examples"}


@dataclass
class NodeLedger:
    """Run totals per node (row: partition, column: `COLUMNS`) over the closed rounds, so
    that they add up to the round records; `rounds`: availability rounds closed."""

    counts: np.ndarray
    rounds: int = 0

    @classmethod
    def empty(cls, n: int) -> NodeLedger:
        return cls(np.zeros((n, len(COLUMNS))))

    def close_round(self, by_node: dict[int, list[float]], online: np.ndarray,
                    with_job: list[int]) -> None:
        """Add a round's per-node counters (node -> one value per column)."""
        if by_node:
            np.add.at(self.counts, np.fromiter(by_node, dtype=np.int64, count=len(by_node)),
                      np.array(list(by_node.values())))
        self.counts[:, COLUMN["rounds_online"]] += online
        self.counts[with_job, COLUMN["rounds_with_job"]] += 1
        self.rounds += 1

    def column(self, name: str) -> np.ndarray:
        return self.counts[:, COLUMN[name]]


def timeline_sample(tier_of: np.ndarray, max_nodes: int) -> np.ndarray:
    """Boolean mask of the nodes whose events the timeline keeps: all when they fit, else
    evenly spaced members of each tier, in proportion to its size and at least one."""
    n = len(tier_of)
    if max_nodes >= n:
        return np.ones(n, dtype=bool)
    mask = np.zeros(n, dtype=bool)
    if max_nodes <= 0:
        return mask
    for t in np.unique(tier_of):
        members = np.flatnonzero(tier_of == t)
        k = max(1, round(max_nodes * len(members) / n))
        mask[members[np.linspace(0, len(members) - 1, k).round().astype(int)]] = True
    return mask


@dataclass
class Timeline:
    """Events of the sampled nodes: (kind, node, round, start_s, end_s, what) in virtual
    seconds; an instant has end_s == start_s; `what` is the message type ("" for gossip)."""

    watched: np.ndarray
    events: list[tuple[str, int, int, float, float, str]] = field(default_factory=list)

    def add(self, kind: str, node: int, round_: int, start: float, end: float,
            what: str = "") -> None:
        if self.watched[node]:
            self.events.append((kind, node, round_, float(start), float(end), what))


def node_rows(ledger: NodeLedger, tier_of: np.ndarray, tier_names: list[str]
              ) -> list[dict[str, Any]]:
    """One row per node that was sent anything or gossiped (partition order); `in_flight`:
    jobs sent whose fate was not known by the last recorded round."""
    counts = ledger.counts
    took_part = np.flatnonzero(counts[:, [COLUMN[c] for c in ("sent", "bytes_up",
                                                              "bytes_down")]].any(axis=1))
    rows = []
    for node in took_part.tolist():
        row: dict[str, Any] = {"node": node, "tier": tier_names[int(tier_of[node])]}
        row.update({name: int(v) if name in INTEGER_COLUMNS else float(v)
                    for name, v in zip(COLUMNS, counts[node].tolist(), strict=True)})
        row["in_flight"] = row["sent"] - sum(row[fate] for fate in FATES)
        rows.append(row)
    return rows


def timeline_rows(timeline: Timeline, tier_of: np.ndarray, tier_names: list[str]
                  ) -> list[dict[str, Any]]:
    """The timeline's events as records, each with its node's tier."""
    return [{"kind": kind, "node": node, "tier": tier_names[int(tier_of[node])],
             "round": round_, "start_s": start, "end_s": end, "what": what}
            for kind, node, round_, start, end, what in timeline.events]


def tier_summary(ledger: NodeLedger, tier_of: np.ndarray, tier_names: list[str]
                 ) -> dict[str, dict[str, Any]]:
    """Per tier: participation vs availability (shares of the tier's node-rounds), the
    rates of each fate among the jobs sent, bytes, and its share of the received train
    replies' examples (FedAvg's aggregation weight)."""
    total_examples = float(ledger.column("examples").sum())
    out = {}
    for t, name in enumerate(tier_names):
        members = tier_of == t
        totals = {c: float(ledger.column(c)[members].sum()) for c in COLUMNS}
        node_rounds = ledger.rounds * int(members.sum())
        summary: dict[str, Any] = {
            "nodes": int(members.sum()),
            "availability": _share(totals["rounds_online"], node_rounds),
            "participation": _share(totals["rounds_with_job"], node_rounds),
            "sent": int(totals["sent"])}
        for fate in FATES:
            summary[f"{fate}_rate"] = _share(totals[fate], totals["sent"])
        summary["bytes_up"] = int(totals["bytes_up"])
        summary["bytes_down"] = int(totals["bytes_down"])
        summary["compute_s"] = totals["compute_s"]
        summary["examples_share"] = _share(totals["examples"], total_examples)
        out[name] = summary
    return out


def _share(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


def tier_labels(names: list[str]) -> list[str]:
    """The tiers' names, made unique (`name#index`) where two tiers share one."""
    return [name if names.count(name) == 1 else f"{name}#{t}" for t, name in enumerate(names)]
