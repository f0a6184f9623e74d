"""Comparison reports over runs: tables (mean +- std over seeds) and curves with bands.

Runs are grouped by their sweep point (the overrides without the seed), or by
scenario name and strategy for runs made outside a sweep. For each group the
report gives final and best accuracy (or loss, for tasks without accuracy),
and the rounds, virtual seconds and bytes needed to reach a target accuracy.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.results import read_metrics, table_csv, to_json


@dataclass
class RunData:
    run_dir: Path
    group: str
    seed: int
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in ("point.json", "summary.json", "error.txt"))


def collect(paths: list[Path]) -> list[RunData]:
    """Every run under `paths` (run directories, or folders that contain them)."""
    dirs: list[Path] = []
    for path in paths:
        if _is_run(path):
            dirs.append(path)
        else:
            dirs.extend(sorted(p.parent for p in path.rglob("*")
                               if p.name in ("point.json", "summary.json") and p.is_file()))
    runs, seen = [], set()
    for run_dir in dirs:
        if run_dir in seen:
            continue
        seen.add(run_dir)
        runs.append(_load(run_dir))
    return runs


def _load(run_dir: Path) -> RunData:
    """A run directory's data; one whose files cannot be read is a run with that error."""
    try:
        return _read(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # truncated, edited, binary...
        reason = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        return RunData(run_dir, str(run_dir), 0, error=f"unreadable run directory ({reason})")


def _read(run_dir: Path) -> RunData:
    point_file, summary_file = run_dir / "point.json", run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    overrides: dict[str, Any] = {}
    if point_file.is_file():
        point = json.loads(point_file.read_text())
        group, seed, overrides = point["label"], int(point["seed"]), point.get("overrides", {})
    else:
        group, seed = f"{summary.get('name')}/{summary.get('strategy')}", summary.get("seed", 0)
    error_file = run_dir / "error.txt"
    if not summary_file.is_file():
        error = error_file.read_text().strip() if error_file.is_file() else "did not finish"
        return RunData(run_dir, group, seed, error=error, overrides=overrides)
    return RunData(run_dir, group, seed, read_metrics(run_dir), overrides=overrides)


def display_names(runs: list[RunData]) -> dict[str, str]:
    """Short names for legends and tables: `fedau, noise_sigma=0.01` rather than the full point.

    A mapping with a `name` shows as that name, a dotted key as its last part; the full
    label is kept for every group if the short ones would collide.
    """
    def short(run: RunData) -> str:
        parts = []
        for key, value in run.overrides.items():
            if isinstance(value, dict) and "name" in value:
                parts.append(str(value["name"]))
            elif key.endswith(".name"):
                parts.append(str(value))
            else:
                parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
        return ", ".join(parts) or run.group

    names = {r.group: short(r) for r in runs}
    return names if len(set(names.values())) == len(names) else {g: g for g in names}


def _metric(runs: list[RunData]) -> str:
    return "accuracy" if any("accuracy" in r for run in runs for r in run.records) else "loss"


def _to_target(records: list[dict[str, Any]], key: str, target: float) -> dict[str, float]:
    """Round, virtual time and cumulative bytes when `key` first reaches `target`."""
    sent = 0
    for record in records:
        sent += record.get("bytes_up", 0) + record.get("bytes_down", 0)
        if record.get(key, -math.inf) >= target:
            return {"rounds": record["round"], "virtual_s": record.get("virtual_time_s", math.nan),
                    "bytes": sent}
    return {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize(runs: list[RunData], target: float | None = None) -> list[dict[str, Any]]:
    """One row per group: mean/std over seeds, time to target, failures and their errors."""
    key = _metric(runs)
    better = max if key == "accuracy" else min
    rows = []
    for group in sorted({r.group for r in runs}):
        members = [r for r in runs if r.group == group]
        ok = [r for r in members if r.error is None and any(key in x for x in r.records)]
        finals = [[x[key] for x in r.records if key in x][-1] for r in ok]
        bests = [better(x[key] for x in r.records if key in x) for r in ok]
        row: dict[str, Any] = {"group": group, "seeds": len(ok),
                               "failed": len(members) - len(ok), "metric": key}
        row[f"final_{key}_mean"], row[f"final_{key}_std"] = _mean_std(finals)
        row[f"best_{key}_mean"], row[f"best_{key}_std"] = _mean_std(bests)
        if target is not None and key == "accuracy":
            hits = [h for r in ok if (h := _to_target(r.records, key, target))]
            row["reached_target"] = len(hits)
            for what in ("rounds", "virtual_s", "bytes"):
                row[f"{what}_to_target_mean"] = _mean_std([h[what] for h in hits])[0]
        errors = sorted({r.error.splitlines()[-1] for r in members if r.error})
        row["errors"] = "; ".join(errors)
        rows.append(row)
    return rows


def plot_curves(runs: list[RunData], out_dir: Path) -> list[Path]:
    """The metric against round, virtual time and bytes: mean line, +-std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = _metric(runs)
    names = display_names(runs)
    axes_spec = [("round", "round"), ("virtual_time_s", "virtual time (s)"),
                 ("bytes", "bytes sent (up + down)")]
    paths = []
    for x_key, x_label in axes_spec:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        drawn = False
        for group in sorted({r.group for r in runs}):
            curves = [_curve(r.records, key, x_key) for r in runs
                      if r.group == group and r.error is None]
            curves = [c for c in curves if c is not None]
            if not curves:
                continue
            length = min(len(c[0]) for c in curves)
            xs = np.mean([c[0][:length] for c in curves], axis=0)
            ys = np.array([c[1][:length] for c in curves])
            mean, std = ys.mean(axis=0), ys.std(axis=0)
            ax.plot(xs, mean, label=_legend(names[group]))
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{key}_vs_{x_key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


LEGEND_CHARS = 60
"""A longer point name would squeeze the plot to nothing; the tables keep it whole."""


def _legend(name: str) -> str:
    return name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "…"


def _curve(records: list[dict[str, Any]], key: str, x_key: str
           ) -> tuple[np.ndarray, np.ndarray] | None:
    rows = [r for r in records if key in r]
    if not rows or (x_key == "virtual_time_s" and "virtual_time_s" not in rows[0]):
        return None
    if x_key == "bytes":
        sent = np.cumsum([r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in records])
        by_round = {r["round"]: s for r, s in zip(records, sent, strict=True)}
        xs = np.array([by_round[r["round"]] for r in rows], dtype=float)
    else:
        xs = np.array([r[x_key] for r in rows], dtype=float)
    return xs, np.array([r[key] for r in rows], dtype=float)


def _cell(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4g}"


def _display_rows(rows: list[dict[str, Any]], names: dict[str, str]
                  ) -> tuple[list[str], list[list[str]]]:
    key = rows[0]["metric"] if rows else "accuracy"
    header = ["point", "seeds", "failed", f"final {key}", f"best {key}"]
    with_target = any("reached_target" in r for r in rows)
    if with_target:
        header += ["reached target", "rounds to target", "virtual s to target", "bytes to target"]
    body = []
    for row in rows:
        line = [names.get(row["group"], row["group"]), str(row["seeds"]), str(row["failed"]),
                _cell(row, f"final_{key}"), _cell(row, f"best_{key}")]
        if with_target:
            line += [f"{row['reached_target']}/{row['seeds']}",
                     *(_cell(row, f"{w}_to_target") for w in ("rounds", "virtual_s", "bytes"))]
        body.append(line)
    return header, body


def write_report(runs: list[RunData], out_dir: Path, target: float | None = None
                 ) -> dict[str, Path]:
    """report.md, report.html, table.csv, table.json and the curve PNGs in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs, target)
    plots = plot_curves(runs, out_dir)
    header, body = _display_rows(rows, display_names(runs))
    failures = [(r.group, r.seed, r.error) for r in runs if r.error]
    md = ["# Comparison report", "", f"{len(runs)} runs, {len(rows)} points"
          + (f", target accuracy {target}" if target else ""), "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(line) + " |" for line in body]
    md += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    if failures:
        md += ["", "## Failed runs", ""]
        md += [f"- {g} (seed {s}): {e.splitlines()[-1]}" for g, s, e in failures if e]
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html",
             "csv": out_dir / "table.csv", "json": out_dir / "table.json"}
    paths["md"].write_text("\n".join(md) + "\n")
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>"
                    for line in body)
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    fails = "".join(f"<li>{html.escape(g)} (seed {s}): {html.escape(e.splitlines()[-1])}</li>"
                    for g, s, e in failures if e)
    paths["html"].write_text(
        "<!doctype html><meta charset='utf-8'><title>fedsim report</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border:1px solid #ccc}"
        "table{border-collapse:collapse}</style><h1>Comparison report</h1>"
        f"<table><tr>{heads}</tr>{cells}</table>"
        + "".join(f"<p><img src='{p.name}'></p>" for p in plots)
        + (f"<h2>Failed runs</h2><ul>{fails}</ul>" if fails else ""))
    paths["csv"].write_text(table_csv(rows))
    paths["json"].write_text(to_json(rows, indent=2) + "\n")
    return paths
