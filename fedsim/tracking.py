"""Experiment tracking: every round's metrics and the resolved scenario to TensorBoard and
MLflow, as callbacks beside the run directory's writer (`output.tensorboard`,
`output.mlflow`). Their libraries are imported only when a scenario turns them on.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import yaml

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import Scenario, scenario_to_dict
from fedsim.results import Callback, RunWriter

if TYPE_CHECKING:
    from flwr.app import ArrayRecord


def run_callbacks(scenario: Scenario, run_dir: Path) -> list[Callback]:
    """What writes a run: its directory, and the trackers its scenario turns on."""
    callbacks: list[Callback] = [RunWriter(run_dir, plots=scenario.output.plots)]
    if scenario.output.tensorboard:
        callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    if scenario.output.mlflow is not None:
        callbacks.append(MlflowLogger(scenario.output.mlflow.tracking_uri,
                                      scenario.output.mlflow.experiment))
    return callbacks


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """A record's finite numbers (not `round`, the step they are logged at)."""
    return {k: float(v) for k, v in record.items() if k != "round"
            and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


class TensorBoardLogger(Callback):
    """Scalars per round (step = round) and the resolved scenario as text, in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: Any = None

    def on_run_start(self, scenario: Scenario) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.log_dir))
        text = yaml.safe_dump(scenario_to_dict(scenario), sort_keys=False)
        self._writer.add_text("scenario", "\n".join(f"    {line}" for line in text.splitlines()))

    def on_round_end(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self._writer.add_scalar(key, value, global_step=int(record["round"]))
        self._writer.flush()

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None:
        self._writer.close()

    def on_run_failed(self, error: str) -> None:
        if self._writer is not None:
            self._writer.add_text("error", error)
            self._writer.close()


class MlflowLogger(Callback):
    """One MLflow run per fedsim run: the scenario (`scenario.yaml` artifact; name, strategy
    and seed as parameters), every round's metrics (step = round), the summary's numbers;
    FINISHED or FAILED at the end. Uses a client, not MLflow's global active run."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client: Any = None
        self.run_id = ""

    def on_run_start(self, scenario: Scenario) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        if urlparse(self.tracking_uri).scheme in ("", "file"):
            # MLflow 3 refuses its file store unless asked: the scenario asks for it
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(self.tracking_uri)
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = (found.experiment_id if found is not None
                             else self.client.create_experiment(self.experiment))
        except MlflowException as exc:
            raise ScenarioError(f"output.mlflow.tracking_uri {self.tracking_uri!r}: "
                                f"{str(exc).splitlines()[0]}") from None
        self.run_id = self.client.create_run(experiment_id, run_name=scenario.name).info.run_id
        for key, value in (("name", scenario.name), ("strategy", scenario.algorithm),
                           ("seed", scenario.seed)):
            self.client.log_param(self.run_id, key, value)
        self.client.log_dict(self.run_id, scenario_to_dict(scenario), "scenario.yaml")

    def on_round_end(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, value, now, int(record["round"]))
            for key, value in _scalars(record).items()])

    def on_run_end(self, summary: dict[str, Any], arrays: ArrayRecord | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(f"summary.{key}", value, now, 0) for key, value in _scalars(summary).items()])
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_run_failed(self, error: str) -> None:
        if self.run_id:
            self.client.set_tag(self.run_id, "error", error[:5000])
            self.client.set_terminated(self.run_id, "FAILED")
