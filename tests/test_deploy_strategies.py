"""Every strategy family runs on a real SuperLink (the session's TLS + authenticated
federation of 4 SuperNodes, tests/harness.py), the same code as on SimGrid.

Node ids there are random 64-bit integers and replies arrive in any order, so these runs
check that no strategy reads a partition from an id. For the families whose result cannot
depend on timing or on a client's random draws (full participation or a seeded schedule, full
gradients or exact local solves, no channel noise, replies aggregated in partition order) the
deployed global model is bit-identical to the simulated one. The others (sampled minibatches
on the devices, wall-clock deadlines and arrival order) must run their rounds and stay finite.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsim.engine.tasks import make_task
from fedsim.runner import simulate
from fedsim.scenario import parse_scenario
from tests.harness import Federation

NODES = 4
DIGITS = {"name": "digits", "model": "logreg", "partition": {"kind": "dirichlet", "alpha": 1.0}}
LOGREG = {"name": "logreg", "params": {"dataset": "breast_cancer", "lam": 0.1}}
LEAST_SQUARES = {"name": "least_squares", "params": {"dim": 5, "samples_per_client": 24}}
QUADRATIC = {"name": "quadratic", "params": {"centers": [1.0, -2.0, 3.0, 0.5], "dim": 2}}
WLS = {"name": "wls", "params": {"dim": 8, "samples_per_client": 20, "noise_var": 0.01}}
ANOMALY = {"name": "anomaly", "params": {"source": "synthetic", "rank": 2,
                                         "samples_per_client": 50}}
EVERY_NODE = {"fraction_evaluate": 0.0, "min_available_nodes": NODES, "min_train_nodes": NODES}
EF = {"lr": 1.0, "compressor": {"name": "top_k", "ratio": 0.5}}

# name: (task, strategy, extra scenario keys)
DETERMINISTIC: dict[str, tuple[dict, dict, dict]] = {
    "ef21": (LOGREG, {"name": "ef21", "params": EF}, {}),
    "ef21_w": (LOGREG, {"name": "ef21_w", "params": EF}, {}),
    "ef14": (LOGREG, {"name": "ef14", "params": EF}, {}),
    "econtrol": (LOGREG, {"name": "econtrol", "params": EF}, {}),
    "admm_partial": (WLS, {"name": "admm", "params": {"participation": 0.5}}, {}),
    "fedpe": (ANOMALY, {"name": "fedpe", "params": {}}, {}),
    "dpsgd_ring": (QUADRATIC, {"name": "dpsgd", "params": {}},
                   {"topology": {"name": "ring"},
                    "training": {"lr": 0.1, "local_steps": 1, "batch_size": 1}}),
}
TIMING_OR_DRAWS: dict[str, tuple[dict, dict, dict]] = {
    "fedhyper": (DIGITS, {"name": "fedhyper", "params": {"schedulers": ["G", "SL", "CL"],
                                                         **EVERY_NODE}}, {}),
    "fedspeed": (DIGITS, {"name": "fedspeed", "params": EVERY_NODE}, {}),
    "fedau": (DIGITS, {"name": "fedau", "params": EVERY_NODE}, {}),
    "fedfix": (DIGITS, {"name": "fedfix", "params": {"period_s": 0.5}}, {}),
    "gradient_coding": (LEAST_SQUARES, {"name": "gradient_coding", "params": {"s": 1}}, {}),
    "sr_sgc": (LEAST_SQUARES, {"name": "sr_sgc", "params": {"B": 1, "W": 2, "lam": 1}},
               {"rounds": 3}),
    "dfedsam_ring": (DIGITS, {"name": "dfedsam", "params": {}}, {"topology": {"name": "ring"}}),
}


def _scenario(name: str, task: dict, strategy: dict, extra: dict) -> dict[str, Any]:
    return {"name": f"deploy-{name}", "seed": 0, "rounds": 2, "task": task,
            "training": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
            "clients": {"count": NODES}, "strategy": strategy, "backend": {"kind": "inline"},
            "evaluation": {"centralized_every": 1}, "output": {"plots": False}, **extra}


def _deploy(fed: Federation, tmp: Path, name: str, data: dict[str, Any]) -> Path:
    """`flwr run` the project on `data`; its run directory."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp / name
    run = fed.flwr_run(f'scenario="{path}" out-dir="{out}"', timeout=900)
    assert (out / "summary.json").is_file(), (
        f"{name}: {(run.stdout + run.stderr)[-3000:]}\n{fed.log_tails()}")
    return out


@pytest.fixture(scope="module")
def deployed(deployment, tmp_path_factory) -> dict[str, Any]:
    """Every family's run. The first runs alone (the SuperNodes install the app once); the
    rest two at a time: a deployed round mostly waits (Flower's 3 s polls, a process per
    message), and two runs side by side take little more than one."""
    tmp = tmp_path_factory.mktemp("families")
    scenarios = {name: _scenario(name, *spec)
                 for name, spec in {**DETERMINISTIC, **TIMING_OR_DRAWS}.items()}
    first, *rest = scenarios
    futures: dict[str, Future[Path]] = {first: Future()}
    try:
        futures[first].set_result(_deploy(deployment, tmp, first, scenarios[first]))
    except Exception as exc:  # reported by that family's test, not as a setup error
        futures[first].set_exception(exc)
    with ThreadPoolExecutor(2) as pool:
        futures |= {name: pool.submit(_deploy, deployment, tmp, name, scenarios[name])
                    for name in rest}
    return {name: (scenarios[name], future) for name, future in futures.items()}


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deployed_model_is_bit_identical_to_the_simulated_one(deployed, name):
    data, future = deployed[name]
    out = future.result()
    simulated = simulate(parse_scenario(data))
    deployed_model = np.load(out / "model.npz")
    assert sorted(deployed_model) == sorted(simulated.arrays.keys())
    for key, array in simulated.arrays.items():
        assert deployed_model[key].tobytes() == array.numpy().tobytes(), key
    assert len(_records(out)) == data["rounds"] + 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMING_OR_DRAWS))
def test_strategy_runs_its_rounds_deployed(deployed, name):
    data, future = deployed[name]
    out = future.result()
    records = _records(out)
    assert [r["round"] for r in records] == list(range(data["rounds"] + 1))
    assert all(math.isfinite(v) for r in records for k, v in r.items()
               if k in ("loss", "accuracy"))
    summary = json.loads((out / "summary.json").read_text())
    assert "total_stragglers" not in summary  # a real grid keeps no such counter


@pytest.mark.slow
def test_the_shipped_quickstart_trains_when_deployed(deployment, tmp_path):
    """The quickstart's own scenario file (50 clients, a CNN), on the 4 real nodes: the run
    uses the 4 partitions the nodes report, and accuracy rises above round 0's."""
    out = tmp_path / "quickstart"
    run = deployment.flwr_run(f'out-dir="{out}" rounds=2')
    assert (out / "summary.json").is_file(), (
        f"{(run.stdout + run.stderr)[-3000:]}\n{deployment.log_tails()}")
    accuracies = [r["accuracy"] for r in _records(out)]
    assert len(accuracies) == 3 and accuracies[-1] > accuracies[0], accuracies


@pytest.mark.slow
def test_client_side_dp_clips_on_the_devices_with_the_scenarios_mod(deployment, tmp_path):
    """dp_client_fixed_clipping with `client_mods.train: [fixedclipping_mod]`: the SuperNodes'
    ClientApps read the mod from the scenario file and clip every update there. Without
    noise the global model moves by the mean of the clipped updates, at most the clipping
    norm, where one unclipped step towards the centres moves it by ~0.1 per coordinate."""
    data = _scenario("dp_client", QUADRATIC, {"name": "dp_client_fixed_clipping", "params": {
        "noise_multiplier": 0.0, "clipping_norm": 0.01,
        "strategy": {"name": "fedavg", "params": EVERY_NODE}}},
        {"client_mods": {"train": ["flwr.clientapp.mod:fixedclipping_mod"]}, "rounds": 1,
         "training": {"lr": 0.1, "local_steps": 1, "batch_size": 1}})
    out = _deploy(deployment, tmp_path, "dp_client", data)
    deployed_model = np.load(out / "model.npz")
    initial = make_task(parse_scenario(data)).initial_arrays()
    moved = np.linalg.norm(np.concatenate([deployed_model[k].ravel() - a.numpy().ravel()
                                           for k, a in initial.items()]))
    assert 0 < moved <= 0.01 + 1e-9
