"""Run directories: callbacks that write what a run produced, and its plots.

A run directory holds `resolved.yaml` (the scenario after overrides and
defaults), `metrics.jsonl` (one record per round, flushed as it goes),
`summary.json`, `flower.log`, the plot of its main metric (`accuracy.png`, `loss.png`...)
and, simulated, `nodes.csv` (what each device did) and the timeline (`timeline.json`, a
Chrome trace that Perfetto opens, and `timeline.png`). Writing is a callback around the
run, never a branch inside strategies or the grid.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from fedsim.core.schema import Scenario, scenario_to_dict

if TYPE_CHECKING:
    from flwr.app import ArrayRecord


LOCK_FILE = ".lock"
RUN_OUTPUTS = ("resolved.yaml", "metrics.jsonl", "summary.json", "model.npz", "error.txt",
               "checkpoint.npz", "flower.log", "nodes.csv", "timeline.json")
"""What a run writes into its directory (a sweep's `scenario.yaml`/`point.json` are inputs)."""


class RunDirInUse(RuntimeError):
    """Another process is writing this run directory."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` as its only writer for as long as the block runs.

    An exclusive `flock` on `RUN_DIR/.lock`: the kernel drops it when the process dies, so a
    killed run never leaves a stale lock, and a second `fedsim run --resume` (or a sweep
    rerun) on a live run is refused instead of writing beside it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirInUse(f"{run_dir}: another fedsim process is writing this run directory "
                          "(wait for it to finish, or stop it)") from None
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def has_run_outputs(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in RUN_OUTPUTS)


def clear_run_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote (`--overwrite`), leaving a sweep's inputs."""
    for name in RUN_OUTPUTS:
        (run_dir / name).unlink(missing_ok=True)
    for plot in run_dir.glob("*.png"):
        plot.unlink()


class Callback:
    """What happens to a run, for whoever wants to know (writer, progress bar...); each
    method does nothing unless overridden."""

    def on_run_start(self, scenario: Scenario) -> None:
        """The run starts (or resumes)."""

    def on_round_end(self, record: dict[str, Any]) -> None:
        """A round's metrics record (also every record replayed on resume)."""

    def on_devices(self, nodes: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> None:
        """What each simulated device did (per-node records, sampled timeline events), just
        before `on_run_end`."""

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None:
        """The run finished: its summary and final global model."""

    def on_run_failed(self, error: str) -> None:
        """The run stopped on an error (one line); what was written so far stays."""


def to_json(value: Any, indent: int | None = None) -> str:
    """Standard JSON: a NaN or infinite number (a mean over no replies, a metric that blew
    up) is written as null, which every JSON reader takes; Python's NaN/Infinity are not."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=indent, allow_nan=False, default=str)


def write_atomic(path: Path, text: str) -> None:
    """Write a uniquely named temporary file, then rename: a reader never sees half a file,
    and two writers never share a temporary file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_arrays(path: Path, arrays: ArrayRecord) -> None:
    """The final global model as `.npz` (one array per key), written then renamed."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.npz")
    try:
        np.savez(tmp, **{k: a.numpy() for k, a in arrays.items()})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunWriter(Callback):
    """Writes a run directory as the run goes; a failed run leaves `error.txt` saying why
    (the directory is then incomplete: no `summary.json`)."""

    def __init__(self, run_dir: Path, plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots = plots
        self._records: list[dict[str, Any]] = []
        self._name = ""

    def on_run_start(self, scenario: Scenario) -> None:
        self._name = scenario.name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "resolved.yaml",
                     yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False))
        (self.run_dir / "metrics.jsonl").write_text("")

    def on_round_end(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(to_json(record) + "\n")

    def on_devices(self, nodes: list[dict[str, Any]], timeline: list[dict[str, Any]]) -> None:
        write_atomic(self.run_dir / "nodes.csv", table_csv(nodes))
        if timeline:
            write_atomic(self.run_dir / "timeline.json", to_json(chrome_trace(timeline)))
            if self.plots:
                ends = [r["virtual_time_s"] for r in self._records if "virtual_time_s" in r]
                plot_timeline(timeline, self.run_dir / "timeline.png",
                              title=f"{self._name}: timeline", round_ends=ends)

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None:
        if arrays is not None:
            save_arrays(self.run_dir / "model.npz", arrays)
        write_atomic(self.run_dir / "summary.json", to_json(summary, indent=2) + "\n")
        if self.plots:
            plot_run(self._records, self.run_dir, title=summary.get("name", ""))

    def on_run_failed(self, error: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "error.txt", f"incomplete: the run failed: {error}\n")


def plotted_metric(records: list[dict[str, Any]]) -> str | None:
    """The metric a run's plot shows: test accuracy, else loss (tasks without accuracy);
    for a Flower app's own names, the first recorded metric that says accuracy, then loss."""
    names = list(dict.fromkeys(k for r in records for k in r))
    for wanted in ("accuracy", "loss"):
        if wanted in names:
            return wanted
    for hint in ("acc", "loss"):
        for name in names:
            if hint in name.lower():
                return name
    return None


def plot_run(records: list[dict[str, Any]], run_dir: Path, title: str = "") -> Path | None:
    """The run's accuracy (or loss) against round and virtual time (`plotted_metric`), as
    `<metric>.png` in `run_dir`."""
    key = plotted_metric(records)
    rows = [r for r in records if key is not None and key in r]
    if key is None or not rows:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    has_time = all("virtual_time_s" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_time else 1, figsize=(10 if has_time else 5, 3.6),
                             squeeze=False)
    axes[0][0].plot([r["round"] for r in rows], [r[key] for r in rows], marker=".")
    axes[0][0].set_xlabel("round")
    axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))
    if has_time:
        axes[0][1].plot([r["virtual_time_s"] for r in rows], [r[key] for r in rows], marker=".")
        axes[0][1].set_xlabel("virtual time (s)")
    for ax in axes[0]:
        ax.set_ylabel(f"test {key}" if key in ("accuracy", "loss") else key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend (imported when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def table_csv(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV, columns in order of first appearance."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def chrome_trace(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Timeline events as a Chrome trace (Perfetto, chrome://tracing): one process per tier,
    one thread per device, virtual seconds as trace microseconds; a span is a complete
    ("X") event, an instant (start == end) an instant ("i") event."""
    tiers = list(dict.fromkeys(e["tier"] for e in events))
    pid = {tier: i + 1 for i, tier in enumerate(tiers)}
    trace: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid[t], "args": {"name": f"tier {t}"}}
        for t in tiers]
    trace += [{"ph": "M", "name": "thread_name", "pid": pid[tier], "tid": node,
               "args": {"name": f"node {node}"}}
              for tier, node in dict.fromkeys((e["tier"], e["node"]) for e in events)]
    for e in events:
        event = {"name": e["kind"], "cat": e["what"] or e["kind"], "pid": pid[e["tier"]],
                 "tid": e["node"], "ts": e["start_s"] * 1e6,
                 "args": {"round": e["round"], "message_type": e["what"]}}
        if e["end_s"] > e["start_s"]:
            event.update(ph="X", dur=(e["end_s"] - e["start_s"]) * 1e6)
        else:
            event.update(ph="i", s="t")
        trace.append(event)
    return {"traceEvents": trace, "displayTimeUnit": "ms",
            "otherData": {"time": "virtual seconds, written as trace microseconds x 1e6"}}


SPAN_COLOURS = {"downlink": "#9ecae1", "compute": "#3182bd", "uplink": "#fd8d3c",
                "gossip": "#74c476"}
INSTANT_MARKERS = {"arrival": ("|", "black"), "straggler_cut": ("x", "red"),
                   "dropout": ("v", "purple"), "lost": ("*", "grey")}


def plot_timeline(events: list[dict[str, Any]], path: Path, title: str = "",
                  round_ends: list[float] = ()) -> Path:  # type: ignore[assignment]
    """A Gantt chart: virtual time across, the sampled devices (grouped by tier) down;
    spans as bars, instants as markers, the end of each round as a dotted line."""
    plt = pyplot()
    rows = sorted(dict.fromkeys((e["tier"], e["node"]) for e in events))
    y = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.22 * len(rows)))
    for kind, colour in SPAN_COLOURS.items():
        spans = [e for e in events if e["kind"] == kind and e["end_s"] > e["start_s"]]
        if spans:
            ax.barh([y[(e["tier"], e["node"])] for e in spans],
                    [e["end_s"] - e["start_s"] for e in spans],
                    left=[e["start_s"] for e in spans], height=0.7, color=colour, label=kind)
    for kind, (marker, colour) in INSTANT_MARKERS.items():
        points = [e for e in events if e["kind"] == kind]
        if points:
            ax.scatter([e["start_s"] for e in points],
                       [y[(e["tier"], e["node"])] for e in points],
                       marker=marker, color=colour, s=30, zorder=3, label=kind.replace("_", " "))
    for t in round_ends:
        ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [f"{tier} {node}" for tier, node in rows],
                  fontsize=8 if len(rows) <= 40 else 5)
    ax.invert_yaxis()
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("device (tier, partition)")
    ax.set_title(title + ("; dotted: end of each round" if round_ends else ""))
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
