"""The example plug-in package (examples/fedsim-plugin-example), installed as a user would:
its strategies and task are named from YAML, run, and listed with their parameters.

CI installs it after the project (.ci/run); this test installs nothing, and fails, never
skips, when it is missing, so a CI that forgot it cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.core.codec import flatten
from fedsim.core.errors import ScenarioError
from fedsim.engine.tasks import make_task
from fedsim.runner import RunResult, simulate
from fedsim.scenario import load_scenario
from strategies import registry

INSTALL = "python -m pip install -e examples/fedsim-plugin-example"
SCENARIO = """\
name: wine-plugins
seed: 3
rounds: {rounds}
task: {{name: wine, model: logreg, partition: {{kind: iid}}}}
training: {{lr: 0.5, local_epochs: 2, batch_size: 8}}
clients: {{count: 4}}
strategy: {{name: {strategy}, params: {params}}}
backend: {{kind: inline}}
output: {{plots: false}}
"""


@pytest.fixture(scope="module", autouse=True)
def example_installed() -> None:
    try:
        origin = registry().origin("clipped_fedavg")
    except KeyError:
        pytest.fail(f"the example plug-in package is not installed; install it into this "
                    f"environment with `{INSTALL}` (as .ci/run and the README do)")
    assert origin.distribution == "fedsim-plugin-example"


def _run(tmp_path: Path, strategy: str, params: str, rounds: int = 1) -> RunResult:
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(SCENARIO.format(rounds=rounds, strategy=strategy, params=params))
    return simulate(load_scenario(path))


def _step(result: RunResult) -> np.ndarray:
    """How far the global model moved from where the run started."""
    start = make_task(result.scenario).initial_arrays()
    return flatten(result.arrays) - flatten(start)


def test_clipped_fedavg_on_wine_clips_every_clients_update(tmp_path) -> None:
    result = _run(tmp_path, "clipped_fedavg", "{clip_norm: 0.05, fraction_evaluate: 0.0}")
    [_, first] = result.records
    assert first["update_norm"] > 0.05  # the clients' updates were longer than the clip
    # the mean of updates clipped to 0.05 is no longer than 0.05 (the norm is convex)
    assert np.linalg.norm(_step(result)) <= 0.05 * (1 + 1e-6)


def test_damped_fedavg_moves_server_lr_of_fedavgs_step(tmp_path) -> None:
    plain = _run(tmp_path, "fedavg", "{fraction_evaluate: 0.0}")
    damped = _run(tmp_path, "damped_fedavg", "{server_lr: 0.25, fraction_evaluate: 0.0}")
    assert np.abs(_step(plain)).max() > 0.01
    np.testing.assert_allclose(_step(damped), 0.25 * _step(plain), rtol=1e-5, atol=1e-7)


def test_wine_task_learns_and_checks_its_own_params(tmp_path) -> None:
    result = _run(tmp_path, "clipped_fedavg", "{clip_norm: 10.0, fraction_evaluate: 0.0}",
                  rounds=3)
    assert result.records[-1]["accuracy"] > 0.8  # 3 cultivars; chance is about 0.4
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.format(rounds=1, strategy="fedavg", params="{}").replace(
        "model: logreg", "model: logreg, params: {test_fraction: 1.5}"))
    with pytest.raises(ScenarioError, match=r"task\.params\.test_fraction: Input should be less"):
        load_scenario(bad)


def test_the_example_plugins_are_listed_with_their_parameters_and_package() -> None:
    listing = CliRunner().invoke(app, ["strategies"])
    assert listing.exit_code == 0, listing.output
    rows = {row[0]: row for row in (line.split("\t") for line in listing.output.splitlines())}
    assert rows["clipped_fedavg"][1:] == [
        "FedAvg with client-side update clipping (example plug-in)",
        "fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes, "
        "min_available_nodes, weighted_by_key, clip_norm", "fedsim-plugin-example 0.1.0"]
    detail = CliRunner().invoke(app, ["strategies", "clipped_fedavg"]).output.splitlines()
    assert "client actions\ttrain.clipped_fedavg" in detail
    assert "clip_norm\tfloat\t1.0\tlargest L2 norm of an update" in detail
    wine = CliRunner().invoke(app, ["tasks", "wine"]).output.splitlines()
    assert "from\tfedsim-plugin-example 0.1.0" in wine and "models\tlogreg, mlp" in wine
    assert "test_fraction\tfloat\t0.25\tserver's test share" in wine
