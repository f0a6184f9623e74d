"""The command line: bad input is one line naming the field, exit code 2; shipped files validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"
runner = CliRunner()

MALFORMED = [
    # (override or file content, the field the message must name)
    (["clients.devcies=3"], "clients.devcies"),
    (["rounds=many"], "rounds"),
    (["clients.count=-5"], "clients.count"),
    (["channel.uplink.erasure_p=1.5"], "channel.uplink.erasure_p"),
    (["channel.uplink.noise_sigma=-0.1"], "channel.uplink.noise_sigma"),
    (["strategy.name=fedfoo"], "strategy.name"),
    (["strategy.params.fraction_trian=0.5"], "strategy.params.fraction_trian"),
    (["task.name=imagenet"], "task.name"),
    (["clients.devices.0.speed={dist: lognormal, median: -1, sigma: 1}"],
     "clients.devices.0.speed"),
    (["training.lr=0"], "training.lr"),
    (["backend.kind=gpu"], "backend.kind"),
    (["clients.devices.1.availability={kind: bernoulli, p: 2}"],
     "clients.devices.1.availability.p"),
    (["topology={name: hypercube}"], "topology.name: unknown topology 'hypercube'"),
    (["topology={name: erdos_renyi, p: 2}"], "topology.p: Input should be less than or equal"),
    (["topology=ring"], "topology.name: expected a mapping"),
]


@pytest.mark.parametrize(("overrides", "field"), MALFORMED)
def test_malformed_scenario_exits_2_with_one_line_naming_the_field(overrides, field):
    args = ["validate", str(QUICKSTART)]
    for item in overrides:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert field in lines[0]


def test_missing_file_and_broken_yaml_exit_2(tmp_path):
    missing = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "file not found" in missing.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nrounds: [1, 2\n")
    result = runner.invoke(app, ["validate", str(broken)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_unknown_key_lists_the_allowed_ones():
    result = runner.invoke(app, ["validate", str(QUICKSTART), "--set", "channel.uplnk.x=1"])
    assert result.exit_code == 2
    assert "allowed: uplink, downlink" in result.output


def test_unknown_key_of_a_topology_lists_that_topologys_own_keys():
    result = runner.invoke(app, ["validate", str(QUICKSTART), "--set",
                                 "topology={name: erdos_renyi, p: 0.5, degree: 3}"])
    assert result.exit_code == 2
    assert "topology.degree: unknown key (allowed: name, time_varying, max_tries, p)" in (
        result.output)


def scenario_files() -> list[Path]:
    return sorted(p for p in (ROOT / "scenarios").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", scenario_files(), ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path):
    load_scenario(path)


def test_run_writes_metrics_summary_and_plot(tmp_path):
    data = yaml.safe_load(QUICKSTART.read_text())
    data.update(rounds=2, backend={"kind": "inline"})
    data["clients"]["count"] = 8
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    assert (out / "accuracy.png").stat().st_size > 0
    assert yaml.safe_load((out / "resolved.yaml").read_text())["rounds"] == 2


def test_strategies_lists_flower_builtins():
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    for name in ("fedavg", "fedprox", "fedadam", "krum"):
        assert name in result.output


def test_tables_on_a_pipe_are_plain_lines_that_do_not_wrap():
    from strategies import registry

    result = runner.invoke(app, ["strategies"], env={"COLUMNS": "40"})
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.output.splitlines()]
    assert rows[0] == ["name", "what it is", "parameters", "from"]
    assert {name: summary for name, summary, _, _ in rows[1:]} == {
        name: registry().get(name, "").summary for name in registry().names()}


def _strict_json(text: str) -> object:
    """JSON as other languages read it: NaN and Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_report_on_a_truncated_run_lists_it_as_unreadable_in_standard_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text('{"name": "x", "strategy": "fedavg", "seed": 0}')
    (run / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.1}\n{"round": 1, "accu')
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "json",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    [row] = _strict_json(result.output)
    assert row["failed"] == 1 and row["errors"].startswith("unreadable run directory")


def _commands(group, prefix=()):
    import click

    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_argument_and_option_of_every_command_has_help_that_is_shown():
    import typer

    for path, command in _commands(typer.main.get_command(app)):
        help_text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).output
        shown = " ".join(help_text.replace("│", " ").split())  # words wrapped in rich's panels
        for param in command.params:
            assert param.help, f"fedsim {' '.join(path)}: {param.name} has no help"
            assert " ".join(param.help.split())[:30] in shown, (path, param.name)
