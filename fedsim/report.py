"""Comparison reports over runs: tables (mean ± std over seeds) and curves with bands.

Runs are grouped by what they simulated: a hash of the resolved scenario without the keys
that do not change the experiment (`NOT_COMPARED`: seed, name, output, backend, checkpoint),
so two configs that share a name and strategy stay apart, and runs that differ only in
backend are seeds of one group. The keys whose values differ between groups are shown as
columns. For each group the report gives the final and best value of one metric (`--metric`,
default accuracy, else loss), "best" chosen on the validation set where the runs have one,
and the rounds, virtual seconds and bytes to reach a target, with how many seeds reached it.

One std convention everywhere: the sample standard deviation over seeds (ddof = 1; 0 for a
single seed), in tables and in the curves' bands.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedsim.results import pyplot, read_metrics, table_csv, to_json

NOT_COMPARED = ("seed", "name", "output", "backend", "checkpoint")
"""Top-level scenario keys that do not change what a run simulates (backend: the same numbers
whatever it is), so runs that differ only there are seeds of one group."""

STD = "sample std over seeds (ddof=1)"
HIGHER_IS_BETTER = ("acc", "auc", "f1", "precision", "recall")
"""A metric whose name contains one of these is better when higher; any other when lower."""
CURVE_POINTS = 200
"""Points of the common grid virtual-time and bytes curves are averaged on."""
TIER_FIELDS = ("availability", "participation", "straggled_rate", "dropped_rate",
               "failed_rate", "examples_share")


@dataclass
class RunData:
    run_dir: Path
    group: str
    seed: int
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # flattened, without NOT_COMPARED
    summary: dict[str, Any] = field(default_factory=dict)


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


def _sweep_file(paths: list[Path], name: str) -> Path | None:
    """A file the sweep a report is made of wrote beside its `runs/`, if any."""
    for path in paths:
        for candidate in (path / name, path.parent / name):
            if candidate.is_file():
                return candidate
    return None


def sweep_target(paths: list[Path]) -> float | None:
    """The `target_accuracy` of the sweep a report is made of (its `sweep.yaml`), if any."""
    found = _sweep_file(paths, "sweep.yaml")
    target = (yaml.safe_load(found.read_text()) or {}).get("target_accuracy") if found else None
    return None if target is None else float(target)


def sweep_tuning(paths: list[Path]) -> list[dict[str, Any]]:
    """The sweep's tuning choices (`tuning.json`, written by `fedsim sweep` with `tune`)."""
    found = _sweep_file(paths, "tuning.json")
    return json.loads(found.read_text()) if found else []


def _load(run_dir: Path) -> RunData:
    """A run directory's data; one whose files cannot be read is a run with that error."""
    try:
        return _read(run_dir)
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        return RunData(run_dir, str(run_dir), 0, error=f"unreadable run directory ({reason})")


def flatten_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A scenario mapping as dotted keys; lists as JSON text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not prefix and key in NOT_COMPARED:
            continue
        if isinstance(value, dict) and value:
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def _config_group(config: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    return f"{config.get('strategy.name', config.get('app.server', '?'))}@{digest.hexdigest()[:10]}"


def _read(run_dir: Path) -> RunData:
    point_file, summary_file = run_dir / "point.json", run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    overrides: dict[str, Any] = {}
    group, seed = f"{summary.get('name')}/{summary.get('strategy')}", summary.get("seed", 0)
    if point_file.is_file():
        point = json.loads(point_file.read_text())
        group, seed, overrides = point["label"], int(point["seed"]), point.get("overrides", {})
    config: dict[str, Any] = {}
    for name in ("resolved.yaml", "scenario.yaml"):  # the sweep's, before the run starts
        if (run_dir / name).is_file():
            config = flatten_config(yaml.safe_load((run_dir / name).read_text()))
            group = _config_group(config)
            break
    error_file = run_dir / "error.txt"
    if not summary_file.is_file():
        error = error_file.read_text().strip() if error_file.is_file() else "did not finish"
        return RunData(run_dir, group, seed, error=error, overrides=overrides, config=config)
    return RunData(run_dir, group, seed, read_metrics(run_dir), overrides=overrides,
                   config=config, summary=summary)


def differing_keys(runs: list[RunData]) -> list[str]:
    """Config keys whose values differ between groups (the report's config columns)."""
    configs = {r.group: r.config for r in runs if r.config}
    keys = sorted({k for c in configs.values() for k in c})
    return [k for k in keys
            if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1]


def display_names(runs: list[RunData]) -> dict[str, str]:
    """Short names for legends and tables: `fedau, noise_sigma=0.01` rather than the full point.

    A sweep point shows its overrides (a mapping with a `name` as that name, a dotted key as
    its last part); other runs their differing config keys. The full group is kept for every
    group if the short ones would collide.
    """
    differ = differing_keys(runs)

    def short(run: RunData) -> str:
        parts = []
        items = run.overrides.items() if run.overrides else (
            (k, run.config[k]) for k in differ if k in run.config)
        for key, value in items:
            if isinstance(value, dict) and "name" in value:
                parts.append(str(value["name"]))
            elif key.endswith(".name"):
                parts.append(str(value))
            else:
                parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
        return ", ".join(parts) or str(run.summary.get("name") or run.group)

    names = {r.group: short(r) for r in runs}
    return names if len(set(names.values())) == len(names) else {g: g for g in names}


def default_metric(runs: list[RunData]) -> str:
    return "accuracy" if any("accuracy" in r for run in runs for r in run.records) else "loss"


def higher_is_better(metric: str) -> bool:
    return any(hint in metric.lower() for hint in HIGHER_IS_BETTER)


def _reached(value: float, target: float, metric: str) -> bool:
    return value >= target if higher_is_better(metric) else value <= target


def _to_target(records: list[dict[str, Any]], key: str, target: float) -> dict[str, float]:
    """Round, virtual time and cumulative bytes when `key` first reaches `target`."""
    sent = 0
    for record in records:
        sent += record.get("bytes_up", 0) + record.get("bytes_down", 0)
        value = record.get(key)
        if isinstance(value, int | float) and _reached(value, target, key):
            return {"rounds": record["round"], "virtual_s": record.get("virtual_time_s", math.nan),
                    "bytes": sent}
    return {}


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value) of `values`."""
    if not values:
        return math.nan, math.nan
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _best(records: list[dict[str, Any]], key: str) -> tuple[float, bool]:
    """The run's best `key` and whether it was chosen on validation: the test value of the
    round best on `val_<key>` when recorded (first on a tie), else the best over rounds."""
    sign = 1 if higher_is_better(key) else -1
    validated = [r for r in records if f"val_{key}" in r and key in r]
    if validated:
        return max(validated, key=lambda r: sign * r[f"val_{key}"])[key], True
    return sign * max(sign * r[key] for r in records if key in r), False


def summarize(runs: list[RunData], target: float | None = None,
              metric: str | None = None) -> list[dict[str, Any]]:
    """One row per group: mean/std over seeds, to-target with how many seeds reached it,
    failures and their errors, the differing config keys."""
    key = metric or default_metric(runs)
    differ = differing_keys(runs)
    names = display_names(runs)
    rows = []
    for group in sorted({r.group for r in runs}):
        members = [r for r in runs if r.group == group]
        ok = [r for r in members if r.error is None and any(key in x for x in r.records)]
        finals = [[x[key] for x in r.records if key in x][-1] for r in ok]
        bests = [_best(r.records, key) for r in ok]
        config = next((r.config for r in members if r.config), {})
        row: dict[str, Any] = {"group": group, "point": names[group], "seeds": len(ok),
                               "failed": len(members) - len(ok), "metric": key, "std": STD}
        row.update({k: config.get(k) for k in differ})
        row[f"final_{key}_mean"], row[f"final_{key}_std"] = _mean_std(finals)
        row[f"best_{key}_mean"], row[f"best_{key}_std"] = _mean_std([b for b, _ in bests])
        row["best_chosen_on"] = ("validation" if bests and all(v for _, v in bests)
                                 else "test (optimistic)" if bests else "")
        if target is not None:
            hits = [h for r in ok if (h := _to_target(r.records, key, target))]
            row["target"], row["reached_target"] = target, len(hits)
            row["evaluated_every"] = config.get("evaluation.centralized_every")
            for what in ("rounds", "virtual_s", "bytes"):
                row[f"{what}_to_target_mean"], row[f"{what}_to_target_std"] = _mean_std(
                    [h[what] for h in hits])
        errors = sorted({r.error.splitlines()[-1] for r in members if r.error})
        row["errors"] = "; ".join(errors)
        rows.append(row)
    return rows


def tier_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per group and device tier: the tier summary's rates, mean over the group's seeds."""
    names = display_names(runs)
    rows = []
    for group in sorted({r.group for r in runs}):
        summaries = [r.summary.get("tiers", {}) for r in runs
                     if r.group == group and r.error is None]
        for tier in dict.fromkeys(t for s in summaries for t in s):
            row: dict[str, Any] = {"group": group, "point": names[group], "tier": tier}
            for name in (*TIER_FIELDS, "federated_accuracy"):
                values = [s[tier][name] for s in summaries if isinstance(
                    s.get(tier, {}).get(name), int | float)]
                if values:
                    row[name] = float(np.mean(values))
            rows.append(row)
    return rows


# ---------------------------------------------------------------- curves


def _x_values(records: list[dict[str, Any]], rows: list[dict[str, Any]], x_key: str
              ) -> np.ndarray | None:
    if x_key == "bytes":
        sent = np.cumsum([r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in records])
        by_round = {r["round"]: s for r, s in zip(records, sent, strict=True)}
        return np.array([by_round[r["round"]] for r in rows], dtype=float) / 1e6
    if not all(x_key in r for r in rows):
        return None
    return np.array([r[x_key] for r in rows], dtype=float)


def _curve(records: list[dict[str, Any]], key: str, x_key: str
           ) -> tuple[np.ndarray, np.ndarray] | None:
    rows = [r for r in records if key in r]
    xs = _x_values(records, rows, x_key) if rows else None
    return None if xs is None else (xs, np.array([r[key] for r in rows], dtype=float))


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]], by_round: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, mean and sample std over seeds. Rounds: at the rounds every seed recorded.
    Time and bytes: each seed's curve as a step function (its last value carried forward)
    on a common grid from 0 to the earliest end of any seed."""
    if by_round:
        common = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))
        xs = np.array(common, dtype=float)
        ys = np.array([[y[list(x).index(v)] for v in common] for x, y in curves])
    else:
        end = min(float(x[-1]) for x, _ in curves)
        xs = np.linspace(0.0, end, CURVE_POINTS) if end > 0 else np.array([0.0])
        ys = np.array([y[np.maximum(np.searchsorted(x, xs, side="right") - 1, 0)]
                       for x, y in curves])
    std = ys.std(axis=0, ddof=1) if len(ys) > 1 else np.zeros(len(xs))
    return xs, ys.mean(axis=0), std


AXES = (("round", "round"), ("virtual_time_s", "virtual time (s)"),
        ("bytes", "data sent, up + down (MB)"))


def plot_curves(runs: list[RunData], out_dir: Path, metric: str | None = None) -> list[Path]:
    """The metric against round, virtual time and bytes: mean line, ± sample-std band."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    key = metric or default_metric(runs)
    names = display_names(runs)
    paths = []
    for x_key, x_label in AXES:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        drawn = False
        for group in sorted({r.group for r in runs}):
            curves = [_curve(r.records, key, x_key) for r in runs
                      if r.group == group and r.error is None]
            curves = [c for c in curves if c is not None]
            if not curves:
                continue
            xs, mean, std = mean_curve(curves, by_round=x_key == "round")
            ax.plot(xs, mean, label=_legend(f"{names[group]} (n={len(curves)})"))
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        if x_key == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="both", style="plain", useOffset=False)
        ax.set_xlabel(x_label)
        ax.set_ylabel(f"test {key}" if key in ("accuracy", "loss") else key)
        ax.set_title(f"{key} vs {x_label.split(' (')[0]}: mean ± {STD}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        fig.tight_layout()
        path = out_dir / f"{key}_vs_{x_key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_tiers(rows: list[dict[str, Any]], out_dir: Path) -> Path | None:
    """Per device tier and group: participation (filled) against availability (hatched), and
    the tier's share of the aggregated examples: which devices a strategy leaves behind."""
    if not rows:
        return None
    plt = pyplot()
    tiers = list(dict.fromkeys(r["tier"] for r in rows))
    groups = list(dict.fromkeys(r["point"] for r in rows))
    width = 0.8 / len(groups)
    fig, (left, right) = plt.subplots(1, 2, figsize=(4 + 2.2 * len(tiers), 3.8))
    for g, point in enumerate(groups):
        at = np.arange(len(tiers)) + (g - (len(groups) - 1) / 2) * width
        by_tier = {r["tier"]: r for r in rows if r["point"] == point}
        values = {name: [by_tier.get(t, {}).get(name, 0.0) for t in tiers]
                  for name in ("participation", "availability", "examples_share")}
        bars = left.bar(at, values["participation"], width * 0.9, label=_legend(point))
        colour = bars[0].get_facecolor()
        left.bar(at, values["availability"], width * 0.9, fill=False, hatch="//",
                 edgecolor=colour)
        right.bar(at, values["examples_share"], width * 0.9, color=colour)
    for ax, title, label in (
            (left, "participation (filled) vs availability (hatched)", "share of device-rounds"),
            (right, "share of the aggregated examples", "share")):
        ax.set_xticks(range(len(tiers)), tiers)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    right.legend(*left.get_legend_handles_labels(), fontsize=9, loc="upper left",
                 bbox_to_anchor=(1.01, 1))
    fig.suptitle("devices by tier (means over seeds)", fontsize=11)
    fig.tight_layout()
    path = out_dir / "tiers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


LEGEND_CHARS = 60
"""A longer point name would squeeze the plot to nothing; the tables keep it whole."""


def _legend(name: str) -> str:
    return name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "…"


# ---------------------------------------------------------------- tables


def _number(value: float, unit: str) -> str:
    if unit == "MB":
        return f"{value / 1e6:.3f}"
    if unit == "s":
        return f"{value:.2f}"
    return f"{value:.4f}" if unit == "" else f"{value:.4g}"


def _cell(row: dict[str, Any], key: str, unit: str = "") -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{_number(mean, unit)} ± {_number(std, unit)}"


def _display_rows(rows: list[dict[str, Any]], differ: list[str]
                  ) -> tuple[list[str], list[list[str]]]:
    key = rows[0]["metric"] if rows else "accuracy"
    chosen = {r["best_chosen_on"] for r in rows if r["best_chosen_on"]}
    best = f"best {key} ({', '.join(sorted(chosen))})" if chosen else f"best {key}"
    header = ["point", *differ, "seeds", "failed", f"final {key}", best]
    with_target = any("reached_target" in r for r in rows)
    if with_target:
        header += ["seeds reached", "rounds to target", "virtual s to target",
                   "MB to target"]
    body = []
    for row in rows:
        line = [row["point"], *(_plain(row.get(k)) for k in differ), str(row["seeds"]),
                str(row["failed"]), _cell(row, f"final_{key}"), _cell(row, f"best_{key}")]
        if with_target:
            line += [f"{row['reached_target']}/{row['seeds']}",
                     _cell(row, "rounds_to_target", "rounds"),
                     _cell(row, "virtual_s_to_target", "s"), _cell(row, "bytes_to_target", "MB")]
        body.append(line)
    return header, body


def _plain(value: Any) -> str:
    return "-" if value is None else str(value)


def _tier_table(tiers: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    fields = [f for f in (*TIER_FIELDS, "federated_accuracy") if any(f in r for r in tiers)]
    header = ["point", "tier", *(f.replace("_", " ") for f in fields)]
    body = [[r["point"], r["tier"], *(f"{r[f]:.3f}" if f in r else "-" for f in fields)]
            for r in tiers]
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(line) + " |" for line in body)]


def _html_table(header: list[str], body: list[list[str]]) -> str:
    heads = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>"
                    for line in body)
    return f"<table><tr>{heads}</tr>{cells}</table>"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}


def latex_table(header: list[str], body: list[list[str]], caption: str) -> str:
    """A booktabs table (`\\usepackage{booktabs}`), cells escaped, ± as $\\pm$."""
    def cell(text: str) -> str:
        escaped = "".join(LATEX_SPECIAL.get(c, c) for c in text)
        return escaped.replace("±", r"$\pm$")

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{cell(caption)}}}",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(cell(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(c) for c in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_report(runs: list[RunData], out_dir: Path, target: float | None = None,
                 metric: str | None = None, tuning: Sequence[dict[str, Any]] = ()
                 ) -> dict[str, Path]:
    """report.md, report.html, table.tex, table.csv, table.json, tiers.csv and the PNGs;
    `tuning`: the sweep's tuned values (`sweep_tuning`), shown before the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    key = metric or default_metric(runs)
    rows = summarize(runs, target, key)
    tiers = tier_rows(runs)
    plots = plot_curves(runs, out_dir, key)
    tier_plot = plot_tiers(tiers, out_dir)
    differ = differing_keys(runs)
    header, body = _display_rows(rows, differ)
    failures = [(r.group, r.seed, r.error) for r in runs if r.error]
    title = f"{key}: {len(rows)} configurations, {len(runs)} runs"
    notes = [f"Mean ± {STD}."]
    if any(r["best_chosen_on"] == "validation" for r in rows):
        notes.append(f"Best: the test {key} of the round best on the validation set.")
    if any(r["best_chosen_on"] == "test (optimistic)" for r in rows):
        notes.append("Best over rounds on the test set where no validation set was recorded "
                     "(optimistic).")
    if target is not None:
        every = sorted({str(r.get("evaluated_every")) for r in rows})
        notes.append(f"Target: {key} {'≥' if higher_is_better(key) else '≤'} {target}; "
                     "to-target columns average the seeds that reached it; rounds to target "
                     f"are resolved to the evaluation interval (every {', '.join(every)} "
                     "rounds).")
    tuned_header = ["point", "tuned", "chosen", "selected on", "mean score per value"]
    tuned = [[t["point"], t["key"], str(t["chosen"]), t["selected_on"],
              ", ".join(f"{v}: {s:.4f}" for v, s in t["scores"].items())] for t in tuning]
    if tuning:
        notes.append(f"Each point ran with the {tuning[0]['key']} its tuning runs did best "
                     "with on the validation set (table below).")
    md = [f"# Comparison report: {title}", "", *notes, "", *_md_table(header, body)]
    if tuning:
        md += ["", "## Tuning (on validation)", "", *_md_table(tuned_header, tuned)]
    md += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    if tiers:
        md += ["", "## Devices by tier", "", "Means over seeds; shares of the tier's "
               "device-rounds (availability, participation) or of its jobs (rates); "
               "examples share: of the aggregated train replies' examples.", "",
               *_md_table(*_tier_table(tiers))]
        if tier_plot:
            md += ["", f"![tiers]({tier_plot.name})"]
    if failures:
        md += ["", "## Failed runs", ""]
        md += [f"- {g} (seed {s}): {e.splitlines()[-1]}" for g, s, e in failures if e]
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html",
             "tex": out_dir / "table.tex", "csv": out_dir / "table.csv",
             "json": out_dir / "table.json", "tiers": out_dir / "tiers.csv"}
    paths["md"].write_text("\n".join(md) + "\n")
    fails = "".join(f"<li>{html.escape(g)} (seed {s}): {html.escape(e.splitlines()[-1])}</li>"
                    for g, s, e in failures if e)
    paths["html"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border:1px solid #ccc}"
        f"table{{border-collapse:collapse}}</style><h1>{html.escape(title)}</h1>"
        + "".join(f"<p>{html.escape(n)}</p>" for n in notes) + _html_table(header, body)
        + (f"<h2>Tuning (on validation)</h2>{_html_table(tuned_header, tuned)}"
           if tuning else "")
        + "".join(f"<p><img src='{p.name}'></p>" for p in plots)
        + (f"<h2>Devices by tier</h2>{_html_table(*_tier_table(tiers))}" if tiers else "")
        + (f"<p><img src='{tier_plot.name}'></p>" if tier_plot else "")
        + (f"<h2>Failed runs</h2><ul>{fails}</ul>" if fails else ""))
    paths["tex"].write_text(latex_table(header, body, f"{title}. {' '.join(notes)}"))
    paths["csv"].write_text(table_csv(rows))
    paths["json"].write_text(to_json(rows, indent=2) + "\n")
    paths["tiers"].write_text(table_csv(tiers) if tiers else "")
    return paths
