"""Reports fit for a paper: grouping by what was simulated, to-target over seeds, formats."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.core.schema import scenario_to_dict
from fedsim.report import collect, mean_curve, summarize, write_report
from tests.conftest import scenario


def _run_dir(root, name, records, seed=0, **overrides):
    """A finished run directory as RunWriter leaves it (without running anything)."""
    run = root / name
    run.mkdir(parents=True)
    resolved = scenario_to_dict(scenario(seed=seed, **overrides))
    (run / "resolved.yaml").write_text(yaml.safe_dump(resolved))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps(
        {"name": resolved["name"], "strategy": resolved["strategy"]["name"], "seed": seed}))
    return run


def _records(accuracies, times=None):
    times = times or list(range(len(accuracies)))
    return [{"round": i, "accuracy": a, "loss": 1 - a, "virtual_time_s": t,
             "bytes_up": 1_000_000, "bytes_down": 0}
            for i, (a, t) in enumerate(zip(accuracies, times, strict=True))]


def test_grouping_separates_configs_and_merges_seeds_and_backends(tmp_path):
    _run_dir(tmp_path, "a0", _records([0.1, 0.5]), seed=0)
    _run_dir(tmp_path, "a1", _records([0.1, 0.7]), seed=1, backend__kind="ray",
             output__dir="elsewhere")
    _run_dir(tmp_path, "long", _records([0.1, 0.2, 0.3]), rounds=10)  # same name + strategy
    rows = {r["point"]: r for r in summarize(collect([tmp_path]))}
    assert sorted(rows) == ["rounds=10", "rounds=2"]  # the differing key names the groups
    assert rows["rounds=2"]["seeds"] == 2 and rows["rounds=10"]["seeds"] == 1
    assert rows["rounds=2"]["rounds"] == 2  # the differing key is a column
    assert rows["rounds=2"]["final_accuracy_mean"] == pytest.approx(0.6)
    assert rows["rounds=2"]["final_accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_to_target_is_mean_and_std_over_the_seeds_that_reached_it(tmp_path):
    for seed, accuracies in enumerate([[0.1, 0.6, 0.7], [0.1, 0.2, 0.8], [0.1, 0.2, 0.3]]):
        _run_dir(tmp_path, f"s{seed}", _records(accuracies), seed=seed)
    [row] = summarize(collect([tmp_path]), target=0.5)
    assert (row["reached_target"], row["seeds"]) == (2, 3)
    assert row["rounds_to_target_mean"] == pytest.approx(1.5)
    assert row["rounds_to_target_std"] == pytest.approx(np.std([1, 2], ddof=1))
    assert row["bytes_to_target_mean"] == pytest.approx(2.5e6)
    [by_loss] = summarize(collect([tmp_path]), target=0.45, metric="loss")  # lower is better
    assert by_loss["reached_target"] == 2 and by_loss["rounds_to_target_mean"] == 1.5
    assert by_loss["best_loss_mean"] == pytest.approx(np.mean([0.3, 0.2, 0.7]))


def test_best_is_chosen_on_validation_where_recorded(tmp_path):
    records = [{"round": 0, "accuracy": 0.2, "val_accuracy": 0.9},
               {"round": 1, "accuracy": 0.8, "val_accuracy": 0.5}]
    _run_dir(tmp_path, "r", records)
    [row] = summarize(collect([tmp_path]))
    assert row["best_accuracy_mean"] == 0.2 and row["best_chosen_on"] == "validation"


def test_time_curves_are_averaged_as_step_functions_on_a_common_grid():
    one = (np.array([0.0, 1.0, 4.0]), np.array([0.0, 0.5, 1.0]))
    two = (np.array([0.0, 3.0, 5.0]), np.array([0.2, 0.4, 0.6]))
    xs, mean, std = mean_curve([one, two], by_round=False)
    assert xs[0] == 0.0 and xs[-1] == 4.0  # up to the earliest end
    at = int(np.searchsorted(xs, 2.0))  # 2 <= x < 3: 0.5 carried forward, and 0.2
    assert mean[at] == pytest.approx((0.5 + 0.2) / 2)
    assert std[at] == pytest.approx(np.std([0.5, 0.2], ddof=1))


def test_every_table_format_parses(tmp_path):
    _run_dir(tmp_path / "runs", "a", _records([0.1, 0.5]))
    _run_dir(tmp_path / "runs", "b", _records([0.1, 0.9]), strategy__name="fedprox",
             strategy__params={"fraction_evaluate": 0.0, "proximal_mu": 0.1})
    paths = write_report(collect([tmp_path / "runs"]), tmp_path / "report", target=0.4)
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert {r["strategy.name"] for r in rows} == {"fedavg", "fedprox"}
    assert [r["point"] for r in json.loads(paths["json"].read_text())] == [
        r["point"] for r in rows]
    tex = paths["tex"].read_text().splitlines()
    body = tex[tex.index(r"\midrule") + 1:tex.index(r"\bottomrule")]
    header = tex[tex.index(r"\toprule") + 1]
    assert len(body) == 2 and all(line.count("&") == header.count("&") for line in body)
    assert r"strategy.params.proximal\_mu" in header  # escaped for LaTeX
    assert r"$\pm$" in body[0] and "1/1" in body[0]
    assert "MB to target" in header
    assert (tmp_path / "report" / "accuracy_vs_bytes.png").stat().st_size > 0


def test_report_reads_the_sweeps_target_and_any_metric(tmp_path):
    _run_dir(tmp_path / "runs", "a", _records([0.1, 0.6]))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"target_accuracy": 0.5}))
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "json",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["target"] == 0.5 and row["reached_target"] == 1
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--metric", "loss", "--format",
                                      "json", "--out", str(tmp_path / "report")])
    assert json.loads(result.output)[0]["metric"] == "loss"
    bad = CliRunner().invoke(app, ["report", str(tmp_path), "--metric", "msd"])
    assert bad.exit_code == 2 and "--metric msd: no run recorded it" in bad.output
