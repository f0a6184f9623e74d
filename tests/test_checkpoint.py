"""Checkpoint and resume: a run killed with SIGKILL and resumed equals the straight run.

Each case runs the CLI in subprocesses: a straight 12-round run; the same scenario
killed with SIGKILL right after round 5's checkpoint is on disk; then
`fedsim run --resume`. The resumed run's metrics.jsonl and final model must be
bit-identical to the straight run's (every field but `wall_time_s`, which measures
the wall clock).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsim import checkpoint as ckpt
from fedsim.cli import app
from fedsim.engine.tasks import make_task
from fedsim.runner import simulate
from fedsim.scenario import load_scenario, parse_scenario
from strategies import BuildContext, build_strategy, registry
from tests.conftest import BASE

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = 5

# Runs the CLI, but parks the process forever right after round KILL_AT's checkpoint
# is on disk, so that the test can SIGKILL it at exactly that point.
_PARK_AFTER_CHECKPOINT = f"""
import sys, time
from fedsim import checkpoint
_save = checkpoint.save
def save(path, cp):
    _save(path, cp)
    if cp.round == {KILL_AT}:
        print("CHECKPOINTED", flush=True)
        time.sleep(3600)
checkpoint.save = save
from fedsim.cli import app
sys.argv = ["fedsim", *sys.argv[1:]]
app()
"""


def _quadratic(**extra: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data.update(task={"name": "quadratic", "params": {"centers": [1.0, -2.0, 3.0, 0.5, -1.0, 2.0],
                                                      "dim": 3}},
                training={"lr": 0.1, "local_steps": 2, "batch_size": 1},
                evaluation={"centralized_every": 1})
    data.update(extra)
    return data


def _digits(**extra: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["clients"] = {"count": 6, "devices": [
        {"availability": {"kind": "bernoulli", "p": 0.8},
         "straggling": {"kind": "iid", "p": 0.3, "slowdown": 3.0}}]}
    data.update(extra)
    return data


CASES = {
    # client sampling (Python's random), Bernoulli availability, stragglers
    "fedavg": _digits(strategy={"name": "fedavg", "params": {
        "fraction_train": 0.5, "fraction_evaluate": 0.5}}),
    # server optimizer moments (Flower's FedAdam keeps m_t, v_t on the instance)
    "fedadam": _digits(strategy={"name": "fedadam", "params": {
        "fraction_train": 0.5, "fraction_evaluate": 0.0, "eta": 0.05}}),
    # per-node error-feedback state in Context.state, partial participation
    "ef21": _quadratic(strategy={"name": "ef21", "params": {
        "compressor": {"name": "top_k", "k": 1}, "participation": 0.5, "lr": 0.1}}),
    # per-node models in the strategy's own loop, lossy gossip
    "dfedsam": _quadratic(strategy={"name": "dfedsam", "params": {"rho": 0.05}},
                          topology={"name": "ring"},
                          channel={"uplink": {"erasure_p": 0.2}}),
}


def _cli(*args: str, park: bool = False) -> subprocess.Popen[str]:
    code = _PARK_AFTER_CHECKPOINT if park else "from fedsim.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"} for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_sigkill_after_round_5_then_resume_is_bit_identical(name: str, tmp_path: Path) -> None:
    _kill_after_round_5_then_resume(CASES[name] | {
        "checkpoint": {"every": 1 if name == "ef21" else 5}}, tmp_path, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.ray
def test_sigterm_on_a_ray_run_exits_143_saying_how_to_resume_and_resumes_exactly(
        tmp_path: Path) -> None:
    data = CASES["fedavg"] | {"checkpoint": {"every": 5},
                              "backend": {"kind": "ray", "num_actors": 2,
                                          "actor_resources": {"num_cpus": 0.5}}}
    err = _kill_after_round_5_then_resume(data, tmp_path, signal.SIGTERM)
    assert "stopped by SIGTERM; resume it with: fedsim run --resume" in err
    assert "Traceback" not in err and "core dumped" not in err


def _kill_after_round_5_then_resume(case: dict[str, Any], tmp_path: Path, sig: int) -> str:
    """Kill a CLI run with `sig` right after round 5's checkpoint, resume it, and compare
    with an uninterrupted run; the killed run's stderr."""
    data = case | {"rounds": 12, "output": {"dir": str(tmp_path), "plots": False}}
    parse_scenario(copy.deepcopy(data))  # the case itself is valid
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    first = _cli("run", str(path), "--out", str(straight), "--quiet")
    victim = _cli("run", str(path), "--out", str(killed), "--quiet", park=True)
    assert victim.stdout is not None
    line = victim.stdout.readline()  # blocks until round 5's checkpoint is written
    assert line.strip() == "CHECKPOINTED", victim.communicate()[1][-3000:]
    victim.send_signal(sig)
    _, victim_err = victim.communicate(timeout=60)
    assert victim.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 143), victim_err
    assert ckpt.load(killed).round == KILL_AT
    assert not (killed / "summary.json").exists()
    _finish(first)

    _finish(_cli("run", "--resume", str(killed), "--quiet"))

    assert len(_metrics(straight)) == 13
    assert _metrics(killed) == _metrics(straight)
    a, b = np.load(straight / "model.npz"), np.load(killed / "model.npz")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    summary_a = json.loads((straight / "summary.json").read_text())
    summary_b = json.loads((killed / "summary.json").read_text())
    for summary in (summary_a, summary_b):  # the execution's, not the result's
        summary.pop("wall_time_s"), summary.pop("actors")  # (actors: their Ray nodes)
    assert summary_a == summary_b
    return victim_err


def test_in_process_resume_from_last_checkpoint_matches(tmp_path: Path) -> None:
    """Fast variant (inline, no subprocess): resume from round 4 of 6 with EF21 state."""
    data = CASES["ef21"] | {"rounds": 6, "checkpoint": {"every": 4}}
    s = parse_scenario(copy.deepcopy(data))
    straight = simulate(s, run_dir=tmp_path / "a")
    simulate(s, run_dir=tmp_path / "b")
    assert ckpt.load(tmp_path / "b").round == 4
    assert ckpt.load(tmp_path / "b").clients["states"]  # EF21 keeps per-node state
    resumed = simulate(s, run_dir=tmp_path / "b", resume=True)
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in straight.records]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"}
                     for r in resumed.records]
    assert straight.arrays is not None and resumed.arrays is not None
    for key in straight.arrays:
        assert (straight.arrays[key].numpy() == resumed.arrays[key].numpy()).all()
    # what each device did before the checkpoint is kept: per-node records, tiers, timeline
    assert resumed.nodes == straight.nodes and resumed.timeline == straight.timeline
    assert resumed.summary["tiers"] == straight.summary["tiers"]


def test_a_wrapped_strategys_own_state_survives_a_resume(tmp_path: Path) -> None:
    """Server-side DP around FedAdam: the wrapper holds FedAdam, whose moments are state."""
    data = copy.deepcopy(BASE) | {"rounds": 6, "checkpoint": {"every": 4}, "strategy": {
        "name": "dp_fixed_clipping", "params": {
            "noise_multiplier": 0.01, "clipping_norm": 10.0,
            "strategy": {"name": "fedadam", "params": {"fraction_evaluate": 0.0}}}}}
    s = parse_scenario(data)
    straight = simulate(s, run_dir=tmp_path / "a")
    simulate(s, run_dir=tmp_path / "b")
    resumed = simulate(s, run_dir=tmp_path / "b", resume=True)
    assert straight.arrays is not None and resumed.arrays is not None
    for key in straight.arrays:
        assert straight.arrays[key].numpy().tobytes() == resumed.arrays[key].numpy().tobytes()


def test_dp_noise_is_the_same_on_every_run_of_a_scenario() -> None:
    """Flower's DP wrappers draw their noise from NumPy's global generator: the run seeds it,
    so whatever drew from it before does not change the model."""
    data = copy.deepcopy(BASE) | {"rounds": 2, "strategy": {
        "name": "dp_fixed_clipping", "params": {"noise_multiplier": 0.01, "clipping_norm": 10.0}}}
    first = simulate(parse_scenario(copy.deepcopy(data)))
    np.random.random(7)  # another draw in the process
    again = simulate(parse_scenario(data))
    assert first.arrays is not None and again.arrays is not None
    for key in first.arrays:
        assert first.arrays[key].numpy().tobytes() == again.arrays[key].numpy().tobytes()


# Strategies with their own loop (time-driven, coded, decentralized) and the server-state
# ones not covered above, from their shipped scenarios made small: resumed from the last
# checkpoint (round `every`), they must end where the straight run ends.
OWN_LOOPS = {
    "fedfix": ("fedfix.yaml", ["clients.count=8", "strategy.params.time_budget_s=null"]),
    "fedbuff": ("fedfix.yaml", ["clients.count=8", "strategy.name=fedbuff",
                                "strategy.params={buffer_size: 3, time_budget_s: null}"]),
    "fedbuff_immediately": ("fedfix.yaml", [
        "clients.count=8", "strategy.name=fedbuff",
        "strategy.params={buffer_size: 3, restart: immediately, weighting: identical}"]),
    "async_fedavg": ("fedfix.yaml", ["clients.count=8", "strategy.name=async_fedavg",
                                     "strategy.params={}"]),
    "gradient_coding": ("gradient_coding.yaml", []),
    "ignore_stragglers_gd": ("gradient_coding.yaml", ["strategy.name=ignore_stragglers_gd",
                                                     "strategy.params={s: 2}"]),
    "m_sgc": ("sgc.yaml", []),
    "sr_sgc": ("sgc.yaml", ["strategy.name=sr_sgc", "strategy.params={B: 2, W: 3, lam: 3}"]),
    "admm": ("admm_noisy.yaml", []),
    "fedpca": ("fedpca.yaml", []),
}


@pytest.mark.parametrize("name", list(OWN_LOOPS))
def test_resume_continues_every_strategy_exactly(name: str, tmp_path: Path) -> None:
    path, overrides = OWN_LOOPS[name]
    s = load_scenario(ROOT / "scenarios" / path,
                      [*overrides, "rounds=9", "checkpoint.every=4",
                       "evaluation.centralized_every=1", "output.plots=false"])
    straight = simulate(s, run_dir=tmp_path / "a")
    simulate(s, run_dir=tmp_path / "b")
    assert ckpt.load(tmp_path / "b").round == 8
    resumed = simulate(s, run_dir=tmp_path / "b", resume=True)
    assert len(straight.records) == 10
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in straight.records]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"}
                     for r in resumed.records]
    assert straight.arrays is not None and resumed.arrays is not None
    for key in straight.arrays:
        assert straight.arrays[key].numpy().tobytes() == resumed.arrays[key].numpy().tobytes()


def test_every_strategy_state_round_trips_through_a_checkpoint() -> None:
    """The one interface: every registered strategy's state is data, and restores."""

    failures = []
    for name in registry().names():
        data = _quadratic(strategy={"name": name, "params": {}})
        if name in ("ef21", "ef14", "econtrol"):
            data["strategy"]["params"] = {"lr": 0.1}
        if name in ("dpsgd", "dfedsam", "dfedsam_mgs"):
            data["topology"] = {"name": "ring"}
        try:
            s = parse_scenario(data)
            strategy = build_strategy(s, BuildContext(s, s.clients.count, make_task(s)))
        except Exception:  # needs other params/tasks: not this test's concern
            continue
        state = ckpt.from_data(*ckpt.as_data(ckpt.strategy_state(strategy)))
        try:
            ckpt.restore_strategy(strategy, state)
        except Exception as exc:
            failures.append(f"{name}: {exc}")
    assert not failures


def test_resume_without_checkpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsim.cli import app

    data = _quadratic() | {"rounds": 2, "output": {"dir": str(tmp_path), "plots": False}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q"]).exit_code == 0
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 2
    assert "no checkpoint.npz" in result.output and len(result.output.strip().splitlines()) == 1


def _run_with_checkpoint(tmp_path: Path) -> Path:
    from typer.testing import CliRunner

    data = _quadratic() | {"rounds": 3, "checkpoint": {"every": 1},
                           "output": {"dir": str(tmp_path), "plots": False}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    assert CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q"]).exit_code == 0
    return run_dir


class _Plant:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.target, "pwned"))


@pytest.mark.parametrize("where", ["state", "array"])
def test_a_crafted_checkpoint_runs_no_code_and_exits_2(tmp_path: Path, where: str) -> None:
    from typer.testing import CliRunner

    run_dir = _run_with_checkpoint(tmp_path)
    planted = tmp_path / "planted"
    payload = np.array([_Plant(planted)], dtype=object)
    with np.load(run_dir / ckpt.FILENAME) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["state" if where == "state" else "a0"] = payload
    with (run_dir / ckpt.FILENAME).open("wb") as f:
        np.savez(f, **arrays)  # numpy pickles the object array into the file
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 2, result.output
    assert "checkpoint" in result.output and len(result.output.strip().splitlines()) == 1
    assert not planted.exists()


def test_a_checkpoint_of_another_scenario_is_refused_leaving_the_run_untouched(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    run_dir = _run_with_checkpoint(tmp_path)
    (run_dir / "summary.json").unlink()  # as if killed
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    resolved["training"]["lr"] = 0.2  # an edited resolved.yaml
    (run_dir / "resolved.yaml").write_text(yaml.safe_dump(resolved))
    before["resolved.yaml"] = (run_dir / "resolved.yaml").read_bytes()
    result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 2 and "different scenario" in result.output
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # metrics.jsonl byte-identical, nothing added


def test_a_checkpoint_with_a_foreign_model_shape_is_refused(tmp_path: Path) -> None:
    run_dir = _run_with_checkpoint(tmp_path)
    checkpoint = ckpt.load(run_dir)
    key = next(iter(checkpoint.arrays))
    checkpoint.arrays[key] = type(checkpoint.arrays[key])(np.zeros((7, 7), np.float32))
    ckpt.save(run_dir / ckpt.FILENAME, checkpoint)
    s = parse_scenario(checkpoint.scenario)
    with pytest.raises(ckpt.CheckpointError, match="does not fit"):
        simulate(s, run_dir=run_dir, resume=True)


def test_a_second_writer_on_a_live_run_directory_is_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedsim.results import run_dir_lock

    run_dir = _run_with_checkpoint(tmp_path)
    (run_dir / "summary.json").unlink()  # as if still running
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with run_dir_lock(run_dir):  # the live run holds it
        result = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 2 and "another fedsim process" in result.output
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_out_at_an_earlier_run_is_refused_unless_overwrite(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    run_dir = _run_with_checkpoint(tmp_path)
    path = tmp_path / "s.yaml"
    data = yaml.safe_load(path.read_text()) | {"rounds": 1, "checkpoint": {"every": 0}}
    path.write_text(yaml.safe_dump(data))
    refused = CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q"])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 3  # untouched
    done = CliRunner().invoke(app, ["run", str(path), "--out", str(run_dir), "-q",
                                    "--overwrite"])
    assert done.exit_code == 0, done.output
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 1
    assert not (run_dir / ckpt.FILENAME).exists()  # the old run's checkpoint is gone
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_an_unwritable_or_file_out_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_quadratic() | {"rounds": 1}))
    (tmp_path / "a_file").write_text("")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "-q"])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, out
