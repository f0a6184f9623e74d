"""Sweeps: a grid of scenario overrides x seeds, each point run in its own directory.

A sweep is resumable because every run is a separate `fedsim run` process
writing its own directory: a run whose `summary.json` exists is done and is
skipped; a run that raised or whose scenario is invalid leaves `error.txt`
and the sweep goes on; a run killed midway has neither and is run again.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import hashlib
import itertools
import json
import math
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from fedsim.checks import CHECK_ERRORS, check_run
from fedsim.core.errors import ScenarioError
from fedsim.core.schema import NAME_PATTERN, Spec, describe_error, scenario_to_dict
from fedsim.files import apply_overrides, parse_override, read_yaml, set_path
from fedsim.results import LOCK_FILE, RunDirInUse, run_dir_lock
from fedsim.scenario import parse_scenario


class TuneSpec(Spec):
    """One hyper-parameter tuned for each point on the validation set before the comparison:
    every value runs with the tuning seeds (in `tune/`); the point then runs with the value
    whose runs did best on validation (mean of `best_val_accuracy`, else of `best_val_loss`),
    so the test set plays no part in the choice."""

    key: str = Field(description="the scenario key to tune, e.g. training.lr")
    values: list[Any] = Field(min_length=2)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="seeds of the tuning runs")


class SweepSpec(Spec):
    """A sweep file: a base scenario, axes to vary, seeds, optionally a tuned parameter."""

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_', '-'")
    base: Path | dict[str, Any] = Field(description="scenario file (relative to the sweep file) "
                                                    "or an inline scenario")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="axes: every combination")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="groups of axes that vary together (equal lengths)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    target_accuracy: float | None = Field(default=None, gt=0, le=1)
    tune: TuneSpec | None = None

    @model_validator(mode="after")
    def _axes(self) -> SweepSpec:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: give at least one value")
        for i, group in enumerate(self.zip):
            lengths = {len(v) for v in group.values()}
            if len(lengths) > 1:
                raise ValueError(f"zip.{i}: axes of a zipped group need equal lengths, "
                                 f"got {sorted(lengths)}")
        return self


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its overrides (without the seed) and its seed."""

    overrides: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def label(self) -> str:
        """The point without its seed, e.g. `strategy.name=fedau,noise_sigma=0.01`."""
        return ",".join(f"{k}={_short(v)}" for k, v in self.overrides) or "base"

    @property
    def dirname(self) -> str:
        """Readable and unique: the label, shortened, plus a hash of all of it."""
        safe = re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", self.label)[:90]
        digest = hashlib.sha1(self.label.encode()).hexdigest()[:8]
        return f"{safe}-{digest}__seed{self.seed}"


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def load_sweep(path: Path, overrides: list[str] | None = None, seeds: int | None = None
               ) -> tuple[SweepSpec, dict[str, Any]]:
    """The sweep spec and its base scenario mapping (not yet validated).

    `overrides` (`--set KEY=VALUE`) join the sweep's `set` (after it: they win); `seeds`
    replaces its seeds with 0..seeds-1. The spec returned records both.
    """
    data = read_yaml(path)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{path}: {describe_error(exc, SweepSpec)}") from None
    changes: dict[str, Any] = {}
    if overrides:
        changes["set"] = {**spec.set, **dict(parse_override(o) for o in overrides)}
    if seeds is not None:
        changes["seeds"] = list(range(seeds))
    spec = spec.model_copy(update=changes)
    if isinstance(spec.base, dict):
        base = copy.deepcopy(spec.base)
    else:
        base = read_yaml(spec.base if spec.base.is_absolute() else path.parent / spec.base)
    apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in spec.set.items()])
    return spec, base


def check_sweep(path: Path, overrides: list[str] | None = None, seeds: int | None = None
                ) -> tuple[SweepSpec, list[Point]]:
    """Every (point, seed) of a sweep through the checks `fedsim run` does before training.

    `overrides` and `seeds` as in `load_sweep`. Returns the spec and its points; the first
    bad point raises, naming the point.
    """
    spec, base = load_sweep(path, overrides, seeds)
    points = expand(spec)
    for point in points + tuning_points(spec):
        where = f"{path}: point {point.label}, seed {point.seed}"
        scenario = parse_scenario(point_scenario(base, point), source=where)
        try:
            check_run(scenario)
        except CHECK_ERRORS as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    return spec, points


def expand(spec: SweepSpec) -> list[Point]:
    """Every (grid combination x zipped row x seed), in a fixed order."""
    axes: list[list[tuple[tuple[str, Any], ...]]] = []
    for key, values in spec.grid.items():
        axes.append([((key, v),) for v in values])
    for group in spec.zip:
        keys = list(group)
        axes.append([tuple(zip(keys, row, strict=True))
                     for row in zip(*group.values(), strict=True)])
    combos = [tuple(itertools.chain.from_iterable(c)) for c in itertools.product(*axes)]
    return [Point(combo, seed) for combo in combos for seed in spec.seeds]


def tuning_points(spec: SweepSpec) -> list[Point]:
    """Every (point x tuned value x tuning seed) of a sweep with `tune`; none without."""
    if spec.tune is None:
        return []
    combos = dict.fromkeys(p.overrides for p in expand(spec))
    return [Point((*combo, (spec.tune.key, value)), seed) for combo in combos
            for value in spec.tune.values for seed in spec.tune.seeds]


def choose_tuned(spec: SweepSpec, tune_dir: Path) -> list[dict[str, Any]]:
    """For each point, the tuned value whose runs did best on validation, with every value's
    mean score; written to `tuning.json` beside `tune/`."""
    assert spec.tune is not None
    choices = []
    for combo in dict.fromkeys(p.overrides for p in expand(spec)):
        scores: dict[str, float] = {}
        key = ""
        for value in spec.tune.values:
            values = []
            for seed in spec.tune.seeds:
                point = Point((*combo, (spec.tune.key, value)), seed)
                summary_file = tune_dir / point.dirname / "summary.json"
                summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
                key = key or next((k for k in ("best_val_accuracy", "best_val_loss")
                                   if k in summary), "")
                if key in summary and summary[key] is not None:
                    values.append(float(summary[key]))
            scores[json.dumps(value)] = sum(values) / len(values) if values else math.nan
        finite = {v: s for v, s in scores.items() if math.isfinite(s)}
        if not finite:
            raise ScenarioError(f"tune: no tuning run of point {Point(combo, 0).label} "
                                "recorded a validation metric (its task holds no validation "
                                "set: task.validation_share, Task.validation_data)")
        pick = (max if key == "best_val_accuracy" else min)(finite, key=finite.__getitem__)
        choices.append({"point": Point(combo, 0).label, "key": spec.tune.key,
                        "chosen": json.loads(pick), "selected_on": key,
                        "scores": scores})
    (tune_dir.parent / "tuning.json").write_text(json.dumps(choices, indent=2, default=str))
    return choices


def point_scenario(base: dict[str, Any], point: Point) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in point.overrides:
        set_path(data, key, copy.deepcopy(value))
    data["seed"] = point.seed
    return data


def run_state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "error.txt").is_file():
        return "failed"
    return "todo"


@dataclass
class SweepOutcome:
    done: int = 0
    failed: int = 0
    skipped: int = 0


def run_sweep(path: Path, out: Path, parallel: int = 1, retry_failed: bool = False,
              on_progress: Callable[[Point, str], None] | None = None,
              overrides: list[str] | None = None, seeds: int | None = None) -> SweepOutcome:
    """Run every point that is not done yet; return how many were done, failed, skipped.
    `overrides` and `seeds` as in `load_sweep`."""
    spec, base = load_sweep(path, overrides, seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    outcome = SweepOutcome()
    points = expand(spec)
    if spec.tune is not None:  # the tuning runs first; each point then uses its chosen value
        _run_points(tuning_points(spec), base, out / "tune", parallel, retry_failed,
                    on_progress, outcome)
        chosen = {c["point"]: c["chosen"] for c in choose_tuned(spec, out / "tune")}
        points = [Point((*p.overrides, (spec.tune.key, chosen[p.label])), p.seed)
                  for p in points]
    _run_points(points, base, out / "runs", parallel, retry_failed, on_progress, outcome)
    return outcome


def _run_points(points: list[Point], base: dict[str, Any], runs_dir: Path, parallel: int,
                retry_failed: bool, on_progress: Callable[[Point, str], None] | None,
                outcome: SweepOutcome) -> None:
    """Run the points not done yet in `runs_dir`, counting them in `outcome`."""
    pending: list[tuple[Point, Path]] = []
    for point in points:
        run_dir = runs_dir / point.dirname
        state = run_state(run_dir)
        if state == "done" or (state == "failed" and not retry_failed):
            outcome.skipped += 1
            if on_progress:
                on_progress(point, f"skipped ({state})")
            continue
        try:
            with run_dir_lock(run_dir):  # a live run of an earlier, killed sweep is left alone
                _reset(run_dir)
        except RunDirInUse:
            outcome.skipped += 1
            if on_progress:
                on_progress(point, "skipped (another process is running it)")
            continue
        try:
            scenario = parse_scenario(point_scenario(base, point), source=point.label)
        except ScenarioError as exc:
            _fail(run_dir, point, str(exc))
            outcome.failed += 1
            if on_progress:
                on_progress(point, "failed")
            continue
        (run_dir / "scenario.yaml").write_text(
            yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False))
        pending.append((point, run_dir))
    for point, _run_dir, ok in _run_all(pending, parallel):
        outcome.done += ok
        outcome.failed += not ok
        if on_progress:
            on_progress(point, "done" if ok else "failed")


def _reset(run_dir: Path) -> None:
    """Start a run directory afresh (a run killed midway left a partial one); its lock file
    stays, held by the caller."""
    for child in sorted(run_dir.rglob("*"), reverse=True):
        if child.name == LOCK_FILE and child.parent == run_dir:
            continue
        child.rmdir() if child.is_dir() else child.unlink()


def _fail(run_dir: Path, point: Point, error: str) -> None:
    _write_point(run_dir, point)
    (run_dir / "error.txt").write_text(error.strip() + "\n")


def _write_point(run_dir: Path, point: Point) -> None:
    (run_dir / "point.json").write_text(json.dumps(
        {"label": point.label, "seed": point.seed, "overrides": dict(point.overrides)},
        default=str))


def _run_all(pending: list[tuple[Point, Path]], parallel: int
             ) -> Iterator[tuple[Point, Path, bool]]:
    """Run each point: in this process one at a time, else `parallel` `fedsim run` processes."""
    if parallel == 1:
        for point, run_dir in pending:
            yield point, run_dir, _run_here(point, run_dir)
        return
    queue = list(pending)
    running: list[tuple[Point, Path, subprocess.Popen]] = []
    while queue or running:
        while queue and len(running) < parallel:
            point, run_dir = queue.pop(0)
            _write_point(run_dir, point)
            log = (run_dir / "run.log").open("w")
            process = subprocess.Popen(
                [sys.executable, "-m", "fedsim.cli", "run", str(run_dir / "scenario.yaml"),
                 "--out", str(run_dir), "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
            running.append((point, run_dir, process))
        time.sleep(0.2)
        for item in list(running):
            point, run_dir, process = item
            if process.poll() is None:
                continue
            running.remove(item)
            ok = process.returncode == 0 and (run_dir / "summary.json").is_file()
            if not ok:
                tail = (run_dir / "run.log").read_text().strip().splitlines()[-20:]
                (run_dir / "error.txt").write_text(
                    f"exit code {process.returncode}\n" + "\n".join(tail) + "\n")
            yield point, run_dir, ok


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def _die_with_parent() -> None:
    """In a sweep's child, before it runs: the kernel sends it SIGTERM when the sweep dies,
    so killing a sweep never leaves runs writing behind it (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _run_here(point: Point, run_dir: Path) -> bool:
    """One run in this process; an exception marks the point failed, nothing else."""
    from fedsim.runner import simulate
    from fedsim.scenario import load_scenario
    from fedsim.tracking import run_callbacks

    _write_point(run_dir, point)
    try:
        scenario = load_scenario(run_dir / "scenario.yaml")
        with run_dir_lock(run_dir):
            simulate(scenario, run_callbacks(scenario, run_dir),
                     log_file=run_dir / "flower.log")
    except Exception as exc:  # a failed point must not stop the sweep
        (run_dir / "error.txt").write_text(
            "".join(traceback.format_exception_only(exc)).strip() + "\n")
        return False
    return True
