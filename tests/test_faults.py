"""Faults cost a message, not the run: dead Ray actors, raising clients, divergence."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.results import RunWriter, read_metrics
from fedsim.runner import ClientsFailed, Diverged, simulate
from tests.conftest import quadratic, scenario


@pytest.mark.ray
@pytest.mark.slow
def test_actor_killed_mid_round_is_restarted_and_counted_as_a_failure(ray_cluster, tmp_path):
    s = scenario(rounds=3, clients__count=3, backend={"kind": "ray", "num_actors": 3,
                                                       "actor_resources": {"num_cpus": 0.5}})
    log = tmp_path / "flower.log"
    result = simulate(s, log_file=log, client_app="tests.fault_app:exit_in_round_2")
    by_round = {r["round"]: r for r in result.records}
    assert sorted(by_round) == [0, 1, 2, 3]  # the run completed
    assert (by_round[1]["failures"], by_round[1]["replies"]) == (0, 3)
    assert (by_round[2]["failures"], by_round[2]["replies"]) == (1, 2)  # partition 1's message
    assert (by_round[3]["failures"], by_round[3]["replies"]) == (0, 3)  # actor replaced
    assert "worker process died" in log.read_text()


def test_client_error_is_logged_once_per_distinct_error(tmp_path: Path) -> None:
    s = scenario(rounds=3, clients__count=3)
    log = tmp_path / "flower.log"
    result = simulate(s, log_file=log, client_app="tests.fault_app:raise_on_train")
    assert [r["failures"] for r in result.records[1:]] == [1, 1, 1]
    ours = [line for line in log.read_text().splitlines() if line.startswith("WARNING partition")]
    assert len(ours) == 1 and ours[0].startswith("WARNING partition 2 (node ")
    assert ours[0].endswith(" failed: ValueError: boom in client (logged once per distinct "
                            "error)")  # Flower adds INFO lines per reply


def test_nan_in_aggregate_stops_with_round_and_strategy(tmp_path: Path) -> None:
    s = quadratic([1.0, 3.0], rounds=5, training__lr=1e100)  # loss 1e200, then inf
    writer = RunWriter(tmp_path, plots=False)
    with pytest.raises(Diverged, match=r"round 2: .*strategy 'fedavg' diverged"):
        simulate(s, [writer])
    assert [r["round"] for r in read_metrics(tmp_path)] == [0, 1]


def test_divergence_through_the_cli_exits_1_keeping_finite_rounds(tmp_path: Path) -> None:
    data = {"name": "nan", "rounds": 5, "task": {"name": "quadratic",
                                                  "params": {"centers": [1.0, 3.0]}},
            "training": {"lr": 1e100, "local_steps": 1, "batch_size": 1},
            "clients": {"count": 2}, "backend": {"kind": "inline"},
            "checkpoint": {"every": 1}, "output": {"dir": str(tmp_path), "plots": False}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q"])
    assert result.exit_code == 1
    assert "round 2" in result.output and "'fedavg' diverged" in result.output
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1]
    from fedsim.checkpoint import load

    assert load(run_dir).round == 1  # the last finite round's checkpoint is kept


def test_a_round_in_which_every_client_raised_stops_the_run_naming_round_and_error(
        tmp_path: Path) -> None:
    s = scenario(rounds=3, clients__count=3)
    log = tmp_path / "flower.log"
    with pytest.raises(ClientsFailed, match=r"round 1: all \d client jobs raised in client code; "
                                            r"first error: TypeError: expected Float"):
        simulate(s, log_file=log, client_app="tests.fault_app:raise_always")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "raise_always" in text


def test_a_minority_of_raising_clients_is_counted_not_fatal(tmp_path: Path) -> None:
    result = simulate(scenario(rounds=2, clients__count=3),
                      client_app="tests.fault_app:raise_on_train")
    assert [r["client_errors"] for r in result.records[1:]] == [1, 1]
    assert result.summary["total_client_errors"] == 2


@pytest.mark.parametrize("tier", [{"dropout_p": 1.0}, {"uplink": {"erasure_p": 1.0}}])
def test_simulated_losses_of_every_job_are_not_client_errors(tier: dict) -> None:
    result = simulate(scenario(rounds=2, clients__count=3,
                               clients__devices=[{"name": "lossy", **tier}]))
    assert [r["failures"] for r in result.records[1:]] == [3, 3]
    assert result.summary["total_client_errors"] == 0


def _cli_run(tmp_path: Path, client_app: str, monkeypatch: pytest.MonkeyPatch
             ) -> tuple[Any, Path]:
    """`fedsim run` of a 3-client scenario whose ClientApp is `client_app`."""
    from fedsim import runner

    data = {"name": "faulty", "rounds": 2, "task": {"name": "quadratic",
                                                     "params": {"centers": [1.0, 2.0, 3.0]}},
            "training": {"lr": 0.1, "local_steps": 1, "batch_size": 1},
            "clients": {"count": 3}, "backend": {"kind": "inline"},
            "output": {"dir": str(tmp_path), "plots": False}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    # the CLI runs the project's app: swap in the faulty one
    monkeypatch.setattr(runner, "simulate", functools.partial(simulate, client_app=client_app))
    return CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q"]), run_dir


def test_every_client_raising_exits_1_and_marks_the_run_directory_incomplete(tmp_path: Path,
                                                                             monkeypatch):
    result, run_dir = _cli_run(tmp_path, "tests.fault_app:raise_always", monkeypatch)
    assert result.exit_code == 1
    assert "round 1: all 6 client jobs raised" in result.output  # 3 train, 3 evaluate
    assert not (run_dir / "summary.json").exists()
    assert (run_dir / "error.txt").read_text().startswith("incomplete: the run failed: "
                                                          "ClientsFailed: round 1")


def test_a_minority_of_client_errors_is_summarised_on_stderr_at_the_end(tmp_path: Path,
                                                                        monkeypatch):
    result, run_dir = _cli_run(tmp_path, "tests.fault_app:raise_on_train", monkeypatch)
    assert result.exit_code == 0
    assert ("warning: 2 client jobs raised in client code (first: ValueError: boom in client)"
            in result.output)
    assert (run_dir / "summary.json").exists() and not (run_dir / "error.txt").exists()
