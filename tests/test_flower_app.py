"""A Flower app nobody wrote for fedsim, on simulated devices (`app:` in a scenario).

The example app (examples/flower-app, installed by the README's test command) is written as
Flower's template writes one. Here it runs with Markov availability, a straggling slow tier
and a deadline shorter than the timeout the app passes; its model is compared with Flower's
own simulation of the same app.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import inspect
import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fedsim
from fedsim.core.codec import flatten
from fedsim.core.errors import ScenarioError
from fedsim.core.seeding import int_seed
from fedsim.engine.grid import SimGrid
from fedsim.runner import RunStalled

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flower-app"
SCENARIO = EXAMPLE / "scenario.yaml"

if importlib.util.find_spec("fedsim_example_app") is None:  # fail, never skip
    raise ImportError("the example app is not installed: pip install -e examples/flower-app "
                      "(the README's test command does)")


def _example(**changes: object) -> dict:
    data = yaml.safe_load(SCENARIO.read_text())
    data["backend"] = {"kind": "inline"}
    data.update(changes)
    return data


def test_the_example_app_on_coming_and_going_straggling_phones(tmp_path, monkeypatch):
    online_sets: list[frozenset[int]] = []
    get_node_ids = SimGrid.get_node_ids

    def spy(grid: SimGrid) -> list[int]:
        ids = get_node_ids(grid)
        online_sets.append(frozenset(ids))
        return ids

    monkeypatch.setattr(SimGrid, "get_node_ids", spy)
    result = fedsim.simulate(_example(), out=tmp_path / "run")

    rounds = result.records[1:]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    # availability moves on with the app's rounds: Flower samples from changing sets
    assert len(set(online_sets)) > 1
    # the app passes timeout=600; the scenario's 2-second deadline cuts the slow jobs
    # (a straggling slow phone needs ~7 s), in each of the round's two exchanges
    assert sum(r["stragglers"] for r in rounds) > 0
    times = [r["virtual_time_s"] for r in result.records]
    assert all(b - a <= 2 * 2.0 + 1e-9 for a, b in itertools.pairwise(times))
    # what the app's strategy aggregates is recorded under its own names
    assert all({"train_loss", "federated_eval_acc", "federated_eval_loss", "bytes_up",
                "bytes_down", "failures"} <= r.keys() for r in rounds)
    written = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert written == json.loads(json.dumps(result.records))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["strategy"] == "fedsim_example_app.server_app:app"
    assert summary["total_stragglers"] > 0
    assert (tmp_path / "run" / "federated_eval_acc.png").is_file()  # the app's own name
    with (tmp_path / "run" / "nodes.csv").open() as f:  # per-device records without a task
        nodes = list(csv.DictReader(f))
    assert sum(int(n["sent"]) for n in nodes) == sum(r["sent"] for r in rounds)
    assert set(summary["tiers"]) == {n["tier"] for n in nodes} | set(summary["tiers"])
    assert json.loads((tmp_path / "run" / "timeline.json").read_text())["traceEvents"]
    assert (tmp_path / "run" / "model.npz").is_file()


def test_the_same_scenario_and_seed_give_the_same_numbers():
    first = fedsim.simulate(_example(), overrides=["app.run_config.num-server-rounds=2"])
    again = fedsim.simulate(_example(), overrides=["app.run_config.num-server-rounds=2"])
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in first.records]
    assert strip == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in again.records]
    assert np.array_equal(flatten(first.arrays), flatten(again.arrays))


def test_local_epochs_from_the_run_config_set_the_compute_time():
    def first_round_time(epochs: int, key: str | None) -> float:
        data = _example(deadline_s=None, channel={})
        data["clients"] = {"count": 2, "devices": [{"speed": 100}]}
        data["app"]["run_config"].update({"local-epochs": epochs, "num-server-rounds": 1,
                                          "fraction-train": 1.0})
        data["app"]["work"] = {"epochs_key": key}
        records = fedsim.simulate(data).records
        return records[1]["virtual_time_s"]

    # the slower node trains 719 examples x epochs at 100/s, then evaluates 180 at a third
    # of the cost (each node holds half of the 1797 digits, 80% for training)
    assert first_round_time(1, "local-epochs") == pytest.approx(7.19 + 0.6)
    assert first_round_time(3, "local-epochs") == pytest.approx(3 * 7.19 + 0.6)
    assert first_round_time(3, None) == pytest.approx(7.19 + 0.6)  # one epoch assumed


def test_waiting_for_more_nodes_than_ever_come_online_ends_with_a_clear_error():
    data = _example()
    data["clients"] = {"count": 1}  # FedAvg waits for 2 nodes
    with pytest.raises(RunStalled, match="min_available_nodes"):
        fedsim.simulate(data)


@pytest.mark.parametrize(("change", "error"), [
    ({"strategy": {"name": "fedavg"}}, "strategy: the app's own code decides this"),
    ({"rounds": 3}, "rounds: the app's own code decides this"),
    ({"app": {"server": "fedsim_example_app.client_app:app",
              "client": "fedsim_example_app.client_app:app"}},
     "app.server: 'fedsim_example_app.client_app:app' is a ClientApp, not a flwr ServerApp"),
    ({"app": {"server": "fedsim_example_app.server_app:app",
              "client": "fedsim_example_app.client_app:app", "work": {"epochs_key": "epochs"}}},
     "app.work.epochs_key: app.run_config has no number 'epochs'"),
])
def test_an_app_scenario_is_checked_field_by_field(change, error):
    with pytest.raises(ScenarioError) as info:
        fedsim.simulate(_example(**change))
    assert error in str(info.value) and "\n" not in str(info.value)


def test_a_module_only_in_the_scenarios_folder_is_refused(tmp_path):
    (tmp_path / "my_app.py").write_text(
        "import pathlib\npathlib.Path('ran').write_text('code ran')\n"
        "from fedsim_example_app.server_app import app as server_app\n"
        "from fedsim_example_app.client_app import app as client_app\n")
    data = _example()
    data["app"].update(server="my_app:server_app", client="my_app:client_app")
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(data))
    for command in ("validate", "run"):
        done = subprocess.run([sys.executable, "-m", "fedsim.cli", command, "scenario.yaml"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "app.server: 'my_app' is not an installed package" in lines[0]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_model_is_flowers_own_simulation_of_the_app(tmp_path):
    """Full participation, no noise: SimGrid sums replies in the order the strategy sent
    them, Flower's simulation in the order they arrived. Two replies sum the same either way
    (bit for bit); ten agree to float32 rounding. In a subprocess: Flower's simulation shuts
    Ray down when it ends (the session's shared cluster included)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from tests.test_flower_app import both_runs; "
         "both_runs(sys.argv[1], sys.argv[2])", "2,10", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for clients, tolerance in ((2, 0.0), (10, 1e-6)):
        runs = np.load(tmp_path / f"{clients}.npz")
        assert np.array_equal(runs["ours_initial"], runs["their_initial"]), "different start"
        np.testing.assert_allclose(runs["ours_losses"], runs["their_losses"], rtol=1e-6)
        mine, theirs = runs["ours"], runs["theirs"]
        if tolerance == 0:
            assert np.array_equal(mine, theirs)
        else:
            assert np.max(np.abs(mine - theirs)) <= tolerance * np.max(np.abs(theirs))


def both_runs(clients_list: str, out: str) -> None:
    """Run the example app on fedsim (inline) and on Flower's simulation (Ray) for each
    number of clients; save both runs' initial and final models and train losses."""
    from fedsim_example_app.client_app import app as client_app
    from fedsim_example_app.server_app import app as server_app
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import Strategy
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    starts: list[tuple[object, object]] = []  # (initial arrays, Result) of each start
    flower_start = Strategy.start

    @functools.wraps(flower_start)  # the signature fedsim binds the app's call to
    def keep(*args, **kwargs):
        result = flower_start(*args, **kwargs)
        call = inspect.signature(flower_start).bind(*args, **kwargs)
        starts.append((call.arguments["initial_arrays"], result))
        return result

    Strategy.start = keep  # this process only
    seeded = ServerApp()  # the app's main, after seeding as fedsim seeds (in Flower's thread)

    @seeded.main()
    def main(grid, context):
        random.seed(int_seed(0, "node-sampling"))
        torch.manual_seed(int_seed(0, "server-app"))
        server_app(grid, context)

    config = {"num-server-rounds": 2, "fraction-train": 1.0, "local-epochs": 1, "lr": 0.1}
    for clients in map(int, clients_list.split(",")):
        starts.clear()
        fedsim.simulate(
            {"name": "vs-flower", "clients": {"count": clients}, "backend": {"kind": "inline"},
             "app": {"server": "fedsim_example_app.server_app:app",
                     "client": "fedsim_example_app.client_app:app", "run_config": config}})
        run = Run.create_empty(run_id=7)
        run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
        run.override_config = config
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, SUPERLINK_NODE_ID
        _run_simulation(
            num_supernodes=clients, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app, server_app=seeded, app_dir=str(EXAMPLE), is_app=True,
            run=run, server_app_context=Context(run_id=7, node_id=0, node_config={},
                                                state=RecordDict(), run_config=dict(config)),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"num_cpus": 2}})
        (ours_initial, ours), (their_initial, theirs) = starts

        def losses(result):
            return [m["train_loss"] for _, m in sorted(result.train_metrics_clientapp.items())]

        np.savez(Path(out) / f"{clients}.npz", ours_initial=flatten(ours_initial),
                 their_initial=flatten(their_initial), ours=flatten(ours.arrays),
                 theirs=flatten(theirs.arrays), ours_losses=losses(ours),
                 their_losses=losses(theirs))
