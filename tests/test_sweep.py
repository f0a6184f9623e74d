"""Sweeps: expansion, reports that match the runs, resuming after SIGKILL, failed points."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsim.report import collect, display_names, write_report
from fedsim.results import read_metrics
from fedsim.sweep import SweepSpec, expand, run_sweep

BASE = {
    "name": "sweep-test", "rounds": 2,
    "task": {"name": "digits", "model": "logreg", "partition": {"kind": "iid"}},
    "training": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
    "clients": {"count": 4},
    "strategy": {"name": "fedavg", "params": {"fraction_evaluate": 0.0}},
    "backend": {"kind": "inline"}, "output": {"plots": False},
}
SWEEP = {"name": "two-by-two-by-two", "base": BASE,
         "grid": {"strategy.name": ["fedavg", "fedadam"],
                  "channel.uplink.noise_sigma": [0.0, 0.01]},
         "seeds": [0, 1], "target_accuracy": 0.3}


def write_sweep(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    out = tmp / "out"
    outcome = run_sweep(write_sweep(tmp, SWEEP), out)
    assert (outcome.done, outcome.failed, outcome.skipped) == (8, 0, 0)
    write_report(collect([out / "runs"]), out / "report", target=0.3)
    return out


def test_expansion_is_the_product_of_the_axes_times_the_zipped_rows_times_seeds():
    spec = SweepSpec.model_validate({**SWEEP, "zip": [{"training.lr": [0.1, 0.2],
                                                       "training.batch_size": [8, 16]}]})
    points = expand(spec)
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.dirname for p in points}) == len(points)
    lrs = {dict(p.overrides)["training.lr"]: dict(p.overrides)["training.batch_size"]
           for p in points}
    assert lrs == {0.1: 8, 0.2: 16}


def test_report_table_equals_the_values_recomputed_from_the_runs(finished_sweep):
    rows = {r["group"]: r for r in json.loads((finished_sweep / "report" / "table.json")
                                              .read_text())}
    assert len(rows) == 4
    runs = collect([finished_sweep / "runs"])
    for group, row in rows.items():
        finals, rounds_to_target = [], []
        for run in (r for r in runs if r.group == group):
            records = read_metrics(run.run_dir)
            finals.append(records[-1]["accuracy"])
            hit = next((r["round"] for r in records if r["accuracy"] >= 0.3), None)
            if hit is not None:
                rounds_to_target.append(hit)
        assert row["seeds"] == 2 and row["failed"] == 0
        assert row["final_accuracy_mean"] == pytest.approx(np.mean(finals))
        assert row["final_accuracy_std"] == pytest.approx(np.std(finals, ddof=1))
        assert row["reached_target"] == len(rounds_to_target)
        if rounds_to_target:
            assert row["rounds_to_target_mean"] == pytest.approx(np.mean(rounds_to_target))
    markdown = (finished_sweep / "report" / "report.md").read_text()
    names = display_names(runs)
    assert len(set(names.values())) == 4
    assert all(f"| {names[group]} |" in markdown for group in rows)


def test_a_sweep_killed_halfway_resumes_without_rerunning_and_reports_the_same(
        tmp_path, finished_sweep):
    path = write_sweep(tmp_path, SWEEP)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "sweep", str(path),
                                "--out", str(out), "--no-report"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list(out.glob("runs/*/summary.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert 3 <= len(finished) < 8
    outcome = run_sweep(path, out)
    assert outcome.skipped == len(finished) and outcome.done == 8 - len(finished)
    for name, mtime in finished.items():
        assert (out / "runs" / name / "summary.json").stat().st_mtime_ns == mtime
    write_report(collect([out / "runs"]), out / "report", target=0.3)
    resumed = json.loads((out / "report" / "table.json").read_text())
    straight = json.loads((finished_sweep / "report" / "table.json").read_text())
    assert resumed == straight


def test_an_invalid_point_and_a_raising_run_fail_alone(tmp_path):
    data = {"name": "with-failures", "base": BASE, "seeds": [0],
            "zip": [{"clients.count": [4, -1, 4],
                     "strategy.params": [{"fraction_evaluate": 0.0},
                                         {"fraction_evaluate": 0.0},
                                         {"fraction_evaluate": 0.0, "min_train_nodes": 9}]}]}
    out = tmp_path / "out"
    outcome = run_sweep(write_sweep(tmp_path, data), out)
    assert (outcome.done, outcome.failed) == (1, 2)
    runs = {r.group: r for r in collect([out / "runs"])}
    invalid = next(r for g, r in runs.items() if "clients.count=-1" in g)
    assert "clients.count" in invalid.error
    stalled = next(r for r in runs.values() if "min_train_nodes" in json.dumps(r.overrides))
    assert "min_train_nodes" in stalled.error
    paths = write_report(list(runs.values()), out / "report")
    markdown = paths["md"].read_text()
    assert "Failed runs" in markdown and "clients.count" in markdown
    again = run_sweep(write_sweep(tmp_path, data), out)
    assert (again.done, again.failed, again.skipped) == (0, 0, 3)


SWEEPS = sorted((Path(__file__).resolve().parents[1] / "scenarios" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_expands_into_valid_scenarios(path):
    from fedsim.scenario import parse_scenario
    from fedsim.sweep import load_sweep, point_scenario

    spec, base = load_sweep(path)
    points = expand(spec)
    assert len(points) >= 2
    for point in points:
        parse_scenario(point_scenario(base, point), source=f"{path.name}: {point.label}")


def test_killing_a_parallel_sweep_stops_its_runs_and_a_rerun_writes_each_round_once(tmp_path):
    """The children of a killed `fedsim sweep --parallel` die with it (nothing writes
    behind the rerun), and the rerun gives every run exactly one record per round."""
    rounds = 60
    data = {"name": "killed", "base": BASE | {"rounds": rounds}, "seeds": [0, 1]}
    path = write_sweep(tmp_path, data)
    out = tmp_path / "out"
    sweep = subprocess.Popen([sys.executable, "-m", "fedsim.cli", "sweep", str(path),
                              "--out", str(out), "--no-report", "--parallel", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (sum(1 for p in out.glob("runs/*/metrics.jsonl") if p.stat().st_size) < 2
           and time.monotonic() < deadline):
        time.sleep(0.1)
    sweep.kill()  # SIGKILL: no chance to clean up; the kernel tells the children
    sweep.wait()
    time.sleep(3)
    sizes = {p: p.stat().st_size for p in out.glob("runs/*/metrics.jsonl")}
    time.sleep(2)
    assert sizes and {p: p.stat().st_size for p in sizes} == sizes  # nobody writes any more
    outcome = run_sweep(path, out)
    assert outcome.done + outcome.skipped == 2 and outcome.failed == 0
    for metrics in out.glob("runs/*/metrics.jsonl"):
        assert [r["round"] for r in read_metrics(metrics.parent)] == list(range(rounds + 1))


def test_dry_run_lists_and_checks_every_point_with_set_and_seeds(tmp_path):
    from typer.testing import CliRunner

    from fedsim.cli import app
    from fedsim.sweep import load_sweep

    path = write_sweep(tmp_path, SWEEP)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(out), "--dry-run",
                                      "--seeds", "3", "--set", "rounds=3"])
    assert result.exit_code == 0, result.output
    assert "12 runs, every scenario valid" in result.output  # 2 x 2 points x 3 seeds
    assert not out.exists()  # nothing ran
    bad = CliRunner().invoke(app, ["sweep", str(path), "--dry-run", "--set", "rounds=0"])
    assert bad.exit_code == 2 and "rounds" in bad.output and "Traceback" not in bad.output
    spec, base = load_sweep(path, ["rounds=3"], seeds=2)
    assert (spec.set["rounds"], spec.seeds, base["rounds"]) == (3, [0, 1], 3)


def test_tune_picks_each_points_value_on_validation_and_the_report_shows_it(tmp_path):
    data = {"name": "tuned", "base": BASE, "grid": {"strategy.name": ["fedavg"]},
            "seeds": [0], "tune": {"key": "training.lr", "values": [1e-4, 0.5]}}
    out = tmp_path / "out"
    outcome = run_sweep(write_sweep(tmp_path, data), out)
    assert (outcome.done, outcome.failed) == (3, 0)  # two tuning runs, one comparison run
    [choice] = json.loads((out / "tuning.json").read_text())
    scores = choice["scores"]
    assert choice["chosen"] == 0.5 and scores["0.5"] > scores["0.0001"]  # validation accuracy
    [run] = collect([out / "runs"])
    assert yaml.safe_load((run.run_dir / "resolved.yaml").read_text())["training"]["lr"] == 0.5
    from fedsim.report import sweep_tuning

    markdown = write_report([run], out / "report", tuning=sweep_tuning([out]))["md"].read_text()
    assert "## Tuning (on validation)" in markdown and "| training.lr | 0.5 |" in markdown
