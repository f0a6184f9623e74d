"""`fedsim validate` runs what `fedsim run` checks before training; output programs can read.

A scenario `validate` accepts must not be one `run` rejects after start-up, and
output meant for pipes (`validate`'s lines, `report --format json|csv`) must not
be wrapped at the terminal width rich assumes for a pipe.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
runner = CliRunner()

BUILD_TIME = [  # (scenario, --set, the field the one line must name)
    ("sgc.yaml", "rounds=2", "rounds"),
    ("fedspeed.yaml", "training.momentum=0.9", "training.momentum"),
]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "override", "field"), BUILD_TIME)
def test_validate_runs_the_strategys_build_checks(name, override, field):
    result = runner.invoke(app, ["validate", str(SCENARIOS / name), "--set", override])
    assert result.exit_code == 2, result.output
    [line] = lines(result.output)
    assert field in line and "Traceback" not in result.output


@pytest.mark.parametrize(("name", "override", "field"), BUILD_TIME[:1])
def test_run_fails_on_build_checks_before_making_the_run_directory(tmp_path, name, override,
                                                                   field):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(SCENARIOS / name), "--set", override,
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert field in lines(result.output)[0]
    assert not out.exists()


def test_validate_accepts_a_sweep_file_and_names_a_bad_point(tmp_path):
    result = runner.invoke(app, ["validate", str(SCENARIOS / "sweeps" / "fedau.yaml")])
    assert result.exit_code == 0, result.output
    [line] = lines(result.output)
    assert line.startswith("ok") and "6 runs" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "base": str(SCENARIOS / "sgc.yaml"),
                                   "grid": {"rounds": [30, 2]}}))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2, result.output
    [line] = lines(result.output)
    assert "rounds=2" in line and "set rounds > 3" in line


def test_validate_accepts_a_directory_one_line_a_file(tmp_path):
    shutil.copy(SCENARIOS / "sgc.yaml", tmp_path / "sgc.yaml")
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "sweep.yml").write_text(yaml.safe_dump(
        {"name": "s", "base": "../sgc.yaml", "grid": {"training.lr": [0.01, 0.05]}}))
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in lines(result.output)] == [
        f"ok  {tmp_path / 'sgc.yaml'}", f"ok  {tmp_path / 'sweeps' / 'sweep.yml'}"]
    (tmp_path / "broken.yaml").write_text("name: x\nrounds: [1, 2\n")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 2  # every file is still checked, one line each
    assert len(lines(result.output)) == 3 and "not valid YAML" in result.output


SHIPPED = sorted(p for p in SCENARIOS.rglob("*.yaml") if "sweeps" not in p.parts)
VALIDATE_IN_A_PIPE = """
import sys
from fedsim.cli import app
try:
    code = app(sys.argv[1:], standalone_mode=False)  # returns the code of `typer.Exit`
finally:
    sys.stderr.write(f"ray imported: {'ray' in sys.modules}\\n")
sys.exit(code or 0)
"""


@pytest.fixture(scope="module")
def shipped_validated() -> subprocess.CompletedProcess[str]:
    """`validate` of every shipped scenario and sweep, stdout a pipe 40 columns wide."""
    env = {**os.environ, "COLUMNS": "40", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", VALIDATE_IN_A_PIPE, "validate", *map(str, SHIPPED),
         str(SCENARIOS / "sweeps")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_every_shipped_file_validates_without_starting_ray(shipped_validated):
    assert shipped_validated.returncode == 0, shipped_validated.stderr
    assert "ray imported: False" in shipped_validated.stderr


def test_validate_lines_do_not_wrap_on_a_narrow_pipe(shipped_validated):
    out = lines(shipped_validated.stdout)
    sweeps = sorted((SCENARIOS / "sweeps").glob("*.yaml"))
    assert [line.split(":")[0] for line in out] == [f"ok  {p}" for p in SHIPPED + sweeps]
    assert all(line.endswith(("rounds)", "runs)")) for line in out)


@pytest.fixture
def run_with_a_long_label(tmp_path) -> Path:
    """A finished run whose sweep point label is far wider than any terminal."""
    run_dir = tmp_path / "runs" / "long"
    run_dir.mkdir(parents=True)
    label = "strategy.params=" + json.dumps({f"key_{i}": "v" * 20 for i in range(20)})
    (run_dir / "point.json").write_text(json.dumps({"label": label, "seed": 0,
                                                    "overrides": {}}))
    (run_dir / "summary.json").write_text(json.dumps({"name": "long", "strategy": "fedavg"}))
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "accuracy": 0.1 * r, "loss": 1.0 / (r + 1)}) + "\n"
        for r in range(3)))
    return tmp_path


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_report_to_a_pipe_is_machine_readable_with_a_long_value(run_with_a_long_label, fmt):
    root = run_with_a_long_label
    result = runner.invoke(app, ["report", str(root / "runs"), "--out", str(root / "report"),
                                 "--format", fmt], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    written = json.loads((root / "report" / "table.json").read_text())
    if fmt == "json":
        assert json.loads(result.stdout) == written
    else:
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert [r["group"] for r in rows] == [w["group"] for w in written]
