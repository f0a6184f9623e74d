"""Experiment tracking: TensorBoard and MLflow hold every round's metrics and the scenario."""

from __future__ import annotations

from pathlib import Path

import yaml

from fedsim.runner import simulate
from fedsim.tracking import run_callbacks
from tests.conftest import quadratic


def _tracked_run(tmp_path, **output):
    scenario = quadratic([0.0, 1.0, 3.0], rounds=3, output={"dir": str(tmp_path), **output})
    return simulate(scenario, run_callbacks(scenario, tmp_path / "run"))


def test_mlflow_holds_every_rounds_metrics_and_the_scenario(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    result = _tracked_run(tmp_path, mlflow={"tracking_uri": uri, "experiment": "tests"})
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "fedavg"
    for key in ("distance", "bytes_up", "virtual_time_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in history) == [
            (r["round"], r[key]) for r in result.records if key in r]
    scenario = client.download_artifacts(run.info.run_id, "scenario.yaml", str(tmp_path))
    assert yaml.safe_load(Path(scenario).read_text())["clients"]["count"] == 3


def test_tensorboard_holds_every_rounds_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _tracked_run(tmp_path, tensorboard=True)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("distance")] == [
        (r["round"], round(r["distance"], 5)) for r in result.records]
    assert "scenario/text_summary" in events.Tags()["tensors"]
