"""Deployment end to end: `flwr run` of this project on the session's real federation.

The federation (fixture `deployment`, tests/harness.py) is secured as `fedsim deploy` prints
it: TLS and SuperNode authentication, 4 SuperNodes started in reverse partition order, with
Dirichlet (unequal) partitions of the data. Also: the commands `fedsim deploy` prints.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedsim.cli import app
from tests.harness import Federation

SUMMARY = re.compile(r"fedsim summary: (\{.*\})")
NODES = 4


def scenario_file(tmp_path: Path, strategy: dict) -> Path:
    path = tmp_path / f"{strategy['name']}.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"deploy-{strategy['name']}", "seed": 0, "rounds": 2,
        "task": {"name": "digits", "model": "logreg",
                 "partition": {"kind": "dirichlet", "alpha": 1.0}},
        "training": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
        "clients": {"count": NODES}, "strategy": strategy, "backend": {"kind": "inline"},
    }))
    return path


FEDAVG = {"name": "fedavg", "params": {"fraction_evaluate": 0.0, "min_available_nodes": NODES,
                                       "min_train_nodes": NODES}}
# keeps client state: each SuperNode holds its EF21 gradient estimate g_i across rounds
EF21 = {"name": "ef21", "params": {"lr": 1.0, "compressor": {"name": "top_k", "ratio": 0.1}}}


def deploy(fed: Federation, tmp_path: Path, strategy: dict) -> tuple[Path, list[dict]]:
    """`flwr run` the project with `strategy`; its scenario file and metrics records."""
    scenario = scenario_file(tmp_path, strategy)
    out = tmp_path / f"out-{strategy['name']}"
    run = fed.flwr_run(f'scenario="{scenario}" out-dir="{out}"')
    logs = run.stdout + run.stderr
    match = SUMMARY.search(logs)
    assert match, f"{logs[-3000:]}\n{fed.log_tails()}"
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    accuracies = [r["accuracy"] for r in records]
    assert len(records) == 3 and all(math.isfinite(a) for a in accuracies), records
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies
    assert json.loads(match.group(1))["final_accuracy"] == accuracies[-1]
    return scenario, records


@pytest.mark.slow
def test_fedavg_deploys_to_an_authenticated_tls_federation(deployment, tmp_path):
    deploy(deployment, tmp_path, FEDAVG)


@pytest.mark.slow
def test_deployed_ef21_gives_the_simulations_numbers(deployment, tmp_path):
    from fedsim.runner import simulate
    from fedsim.scenario import load_scenario

    scenario, deployed = deploy(deployment, tmp_path, EF21)
    simulated = simulate(load_scenario(scenario, [])).records
    keys = ("round", "accuracy", "loss")
    assert ([{k: r.get(k) for k in keys} for r in deployed]
            == [{k: r.get(k) for k in keys} for r in simulated])


def deploy_output(*args: str) -> str:
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_fedsim_deploy_prints_a_tls_and_node_authentication_setup_by_default():
    out = deploy_output()
    assert "--insecure" not in out and "insecure = true" not in out
    assert "--ssl-certfile" in out and "--ssl-keyfile" in out and "--ssl-ca-certfile" in out
    assert "--enable-supernode-auth" in out and "--root-certificates" in out
    assert "--auth-supernode-private-key" in out and "flwr supernode register" in out
    assert "--host 127.0.0.1" in out and "root-certificates =" in out
    assert "0.0.0.0" not in out


def test_fedsim_deploy_binds_the_host_the_user_names():
    out = deploy_output("--superlink", "192.168.1.10:9000")
    assert "--host 192.168.1.10 --port 9000" in out and "SERVER_SAN=\"IP:192.168.1.10\"" in out
    assert "--superlink 192.168.1.10:9000" in out and "--insecure" not in out


def test_fedsim_deploy_insecure_binds_localhost_and_warns():
    out = deploy_output("--insecure")
    assert "--insecure" in out and "--host 127.0.0.1" in out and "0.0.0.0" not in out
    assert "warning" in out.lower() and "--enable-supernode-auth" not in out


def test_fedsim_deploy_refuses_insecure_beyond_localhost():
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml", "--insecure",
                                      "--superlink", "192.168.1.10:8000"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--insecure" in result.output and "127.0.0.1" in result.output


def test_fedsim_deploy_bind_overrides_the_listening_address():
    out = deploy_output("--superlink", "203.0.113.7:8000", "--bind", "0.0.0.0")
    assert "--host 0.0.0.0 --port 8000" in out and "--superlink 203.0.113.7:8000" in out


@pytest.mark.parametrize("superlink", ["127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1",
                                       ":8000", "127.0.0.1:0"])
def test_fedsim_deploy_rejects_a_bad_superlink_address_in_one_line(superlink):
    result = CliRunner().invoke(app, ["deploy", "scenarios/quickstart.yaml",
                                      "--superlink", superlink])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "--superlink" in result.output
