"""Run directories: callbacks that write what a run produced, and its plots.

A run directory holds `resolved.yaml` (the scenario after overrides and
defaults), `metrics.jsonl` (one record per round, flushed as it goes),
`summary.json`, `flower.log` and `accuracy.png`. Writing is a callback
around the run, never a branch inside strategies or the grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from fedsim.core.schema import Scenario, scenario_to_dict

if TYPE_CHECKING:
    from flwr.app import ArrayRecord


class Callback(Protocol):
    def on_run_start(self, scenario: Scenario) -> None: ...

    def on_round_end(self, record: dict[str, Any]) -> None: ...

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None: ...


def write_atomic(path: Path, text: str) -> None:
    """Write then rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunWriter:
    """Writes a run directory as the run goes."""

    def __init__(self, run_dir: Path, plots: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plots = plots
        self._records: list[dict[str, Any]] = []

    def on_run_start(self, scenario: Scenario) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "resolved.yaml",
                     yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False))
        (self.run_dir / "metrics.jsonl").write_text("")

    def on_round_end(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None:
        write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if self.plots:
            plot_run(self._records, self.run_dir / "accuracy.png", title=summary.get("name", ""))


def plot_run(records: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Accuracy (or loss, for tasks without accuracy) against round and virtual time."""
    key = "accuracy" if any("accuracy" in r for r in records) else "loss"
    rows = [r for r in records if key in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_time = all("virtual_time_s" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if has_time else 1, figsize=(10 if has_time else 5, 3.6),
                             squeeze=False)
    axes[0][0].plot([r["round"] for r in rows], [r[key] for r in rows], marker=".")
    axes[0][0].set_xlabel("round")
    if has_time:
        axes[0][1].plot([r["virtual_time_s"] for r in rows], [r[key] for r in rows], marker=".")
        axes[0][1].set_xlabel("virtual time (s)")
    for ax in axes[0]:
        ax.set_ylabel(f"test {key}")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
