"""Sim-to-real: calibrate the simulator on one deployed run, predict another.

A deployed FedAvg run on the session's loopback federation (tests/harness.py) writes each
node's measured speed and overhead to RUN_DIR/trace.jsonl; a scenario replaying that
directory with twice the local epochs predicts the round times of a second deployed run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsim.runner import simulate
from fedsim.scenario import parse_scenario
from fedsim.traces import read_trace

NODES = 4
EPOCHS = 10


def _scenario(epochs: int) -> dict[str, Any]:
    return {"name": f"calibrate-{epochs}", "seed": 0, "rounds": 2,
            "task": {"name": "digits", "model": "cnn", "partition": {"kind": "iid"}},
            "training": {"lr": 0.05, "local_epochs": epochs, "batch_size": 16},
            "clients": {"count": NODES},
            "strategy": {"name": "fedavg", "params": {
                "fraction_evaluate": 0.0, "min_available_nodes": NODES,
                "min_train_nodes": NODES}},
            "backend": {"kind": "inline"}, "evaluation": {"centralized_every": 0},
            "output": {"plots": False}}


def _deploy(fed: Any, tmp: Path, data: dict[str, Any]) -> Path:
    path, out = tmp / f"{data['name']}.yaml", tmp / data["name"]
    path.write_text(yaml.safe_dump(data))
    run = fed.flwr_run(f'scenario="{path}" out-dir="{out}"', timeout=900)
    assert (out / "summary.json").is_file(), f"{(run.stdout + run.stderr)[-3000:]}"
    return out


def _round_times(records: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.diff([r[key] for r in records])


@pytest.mark.slow
def test_a_calibrated_simulation_predicts_a_deployed_run_with_twice_the_epochs(
        deployment, tmp_path):
    calibration = _deploy(deployment, tmp_path, _scenario(EPOCHS))
    devices = read_trace(calibration)
    assert sorted(d.id for d in devices) == [str(i) for i in range(NODES)]
    assert all(d.speed_sps and d.speed_sps > 0 for d in devices)

    target = _deploy(deployment, tmp_path, _scenario(2 * EPOCHS))
    measured = _round_times([json.loads(line) for line in
                             (target / "metrics.jsonl").open()], "wall_time_s")
    replay = _scenario(2 * EPOCHS) | {"name": "replay"}
    replay["clients"] = {"count": NODES, "trace": {"path": str(calibration)}}
    predicted = _round_times(simulate(parse_scenario(replay)).records, "virtual_time_s")
    error = abs(predicted.mean() - measured.mean()) / measured.mean()
    print(f"round times (s): predicted {np.round(predicted, 2).tolist()}, measured "
          f"{np.round(measured, 2).tolist()}; mean error {error:.1%}")
    assert error < 0.25


def test_a_nodes_measured_jobs_become_its_speed_and_overhead():
    from fedsim.calibration import trace_from_jobs
    from fedsim.core.services import PartitionMap

    node = 2**63 + 5  # an opaque id: the device is named by its partition
    jobs = [{"node": node, "kind": "train", "total_s": 10.0, "compute_s": 2.0, "work": 400.0},
            {"node": node, "kind": "train", "total_s": 13.0, "compute_s": 2.0, "work": 400.0},
            {"node": node, "kind": "train", "total_s": 30.0, "compute_s": 2.0, "work": 400.0},
            {"node": node, "kind": "evaluate", "total_s": 99.0, "compute_s": 1.0, "work": 0.0}]
    [device] = trace_from_jobs(jobs, PartitionMap({node: 3}, 4))
    assert device.id == "3" and device.speed_sps == pytest.approx(200.0)
    assert device.up_latency_s == device.down_latency_s == pytest.approx(11.0 / 2)  # median
