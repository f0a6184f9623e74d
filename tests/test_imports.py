"""What a scenario names as `module:attribute` comes from installed packages only."""

from __future__ import annotations

import sys

import pytest
from flwr.serverapp import ServerApp

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_object


def test_an_installed_package_is_imported() -> None:
    assert installed_object("flwr.serverapp:ServerApp", "app.server") is ServerApp


def test_a_module_beside_the_scenario_is_refused_though_it_is_on_sys_path(
        tmp_path, monkeypatch) -> None:
    (tmp_path / "beside.py").write_text("raise SystemExit('this must never run')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ScenarioError, match=r"^app\.client: 'beside' is not an installed"):
        installed_object("beside:client_app", "app.client")
    assert "beside" not in sys.modules


@pytest.mark.parametrize(("ref", "error"), [
    ("flwr.serverapp", "is not a reference 'package.module:attribute'"),
    ("flwr.serverapp:", "is not a reference"),
    ("flwr/serverapp:ServerApp", "is not a reference"),
    ("flwr.serverapp:NoSuchThing", "has no attribute 'NoSuchThing'"),
    ("flwr.no_such_module:x", "importing 'flwr.no_such_module' failed: ModuleNotFoundError"),
])
def test_bad_references_are_one_line_naming_the_field(ref: str, error: str) -> None:
    with pytest.raises(ScenarioError) as info:
        installed_object(ref, "strategy.params.train_metrics_aggr_fn")
    message = str(info.value)
    assert message.startswith("strategy.params.train_metrics_aggr_fn: ") and error in message
    assert "\n" not in message
