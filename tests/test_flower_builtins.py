"""Flower's built-in strategies by name: DP wrappers around any built-in, client-side DP
with its mod on the ClientApp, callable arguments from installed packages, and every
built-in of the installed flwr either runnable or refused with its reason."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import multikrum, strategy_utils
from typer.testing import CliRunner

from fedsim.checks import check_run
from fedsim.cli import app
from fedsim.core.codec import flatten
from fedsim.core.errors import ScenarioError
from fedsim.engine.tasks import make_task
from fedsim.runner import simulate
from strategies import BuildContext, build_strategy, registry
from strategies.flower import _BUILTINS, _DP_WRAPPERS, UNSUPPORTED
from tests.conftest import quadratic

QUICKSTART = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.yaml"
CENTERS = [10.0, -20.0, 30.0, 5.0]  # far from the initial model: unclipped steps are large
NO_EVALUATION = {"evaluation": {"centralized_every": 1, "federated_every": 0}}


def test_every_builtin_of_the_installed_flower_runs_by_name_or_is_refused_with_its_reason():
    builtins = {name for name in flwr_strategies.__all__
                if name not in ("Strategy", "Result")}
    wrappers = {name for name, _ in _DP_WRAPPERS.values()}
    assert builtins == set(_BUILTINS) | wrappers | set(UNSUPPORTED)
    assert {name.lower() for name in _BUILTINS} | set(_DP_WRAPPERS) <= set(registry().names())
    for name in UNSUPPORTED:
        with pytest.raises(ScenarioError) as info:
            quadratic(CENTERS, strategy={"name": name.lower()})
        assert "cannot run in fedsim" in str(info.value) and "xgboost" in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "clipping"), [("dp_fixed_clipping", {"clipping_norm": 1.0}),
                                                ("dp_adaptive_clipping", {})])
def test_server_side_dp_wraps_the_configured_strategy_and_trains_its_fraction(name, clipping):
    """Wrapping FedAvg with fraction_train 0.4 trains 4 of 10 nodes a round (it used to wrap
    FedAvg with fraction_train 1.0, whatever the scenario said); noise is scaled for 4."""
    s = quadratic([float(i) for i in range(10)], **NO_EVALUATION, strategy={
        "name": name, "params": {"noise_multiplier": 0.1, **clipping, "strategy": {
            "name": "fedavg", "params": {"fraction_train": 0.4, "fraction_evaluate": 0.0}}}})
    records = simulate(s).records
    assert [r["sent"] for r in records[1:]] == [4, 4]
    built = build_strategy(s, BuildContext(s, s.clients.count, make_task(s)))
    assert type(built.strategy) is flwr_strategies.FedAvg  # type: ignore[attr-defined]
    assert built.num_sampled_clients == 4  # type: ignore[attr-defined]


def test_a_dp_wrapper_wraps_any_builtin_with_its_own_parameters():
    s = quadratic(CENTERS, strategy={"name": "dp_fixed_clipping", "params": {
        "noise_multiplier": 0.0, "clipping_norm": 1.0, "num_sampled_clients": 3,
        "strategy": {"name": "fedadam", "params": {"eta": 0.05, "tau": 0.01}}}})
    built = build_strategy(s, BuildContext(s, s.clients.count, make_task(s)))
    inner = built.strategy  # type: ignore[attr-defined]
    assert type(inner) is flwr_strategies.FedAdam and (inner.eta, inner.tau) == (0.05, 0.01)
    assert built.num_sampled_clients == 3  # type: ignore[attr-defined]


CLIENT_SIDE = [("dp_client_fixed_clipping", "fixedclipping_mod", "clipping_norm"),
               ("dp_client_adaptive_clipping", "adaptiveclipping_mod", "initial_clipping_norm")]


@pytest.mark.parametrize(("name", "mod", "norm"), CLIENT_SIDE)
def test_client_side_dp_clips_every_update_on_the_clients_with_the_scenarios_mod(
        name, mod, norm):
    """Without noise, the global model moves by the mean of the clients' updates; the mod
    clips each to 0.01, where unclipped local steps towards the far centres move it by ~3."""
    s = quadratic(CENTERS, rounds=1, **NO_EVALUATION,
                  client_mods={"train": [f"flwr.clientapp.mod:{mod}"]},
                  strategy={"name": name, "params": {"noise_multiplier": 0.0, norm: 0.01}})
    run = simulate(s)
    assert run.arrays is not None
    moved = np.linalg.norm(flatten(run.arrays) - flatten(make_task(s).initial_arrays()))
    assert 0 < moved <= 0.01 + 1e-9
    assert run.records[-1]["replies"] == len(CENTERS)


@pytest.mark.parametrize(("name", "mod", "norm"), CLIENT_SIDE)
def test_client_side_dp_without_its_mod_is_refused_in_one_line(name, mod, norm):
    s = quadratic(CENTERS, strategy={"name": name, "params": {"noise_multiplier": 0.0,
                                                               norm: 0.01}})
    with pytest.raises(ScenarioError) as info:
        check_run(s)
    message = str(info.value)
    assert message.startswith("client_mods.train: ") and f"flwr.clientapp.mod:{mod}" in message


def _spy(function: Callable[..., Any], calls: list[int], mark: bool = False
         ) -> Callable[..., Any]:
    """`function`, counting its calls in `calls` and, with `mark`, marking what it returns."""

    @functools.wraps(function)
    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        result = function(*args, **kwargs)
        if mark:
            result["spied"] = 1.0
        return result

    return spy


def test_a_metrics_aggregation_function_from_an_installed_module_is_called(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(strategy_utils, "aggregate_metricrecords",
                        _spy(strategy_utils.aggregate_metricrecords, calls, mark=True))
    ref = "flwr.serverapp.strategy.strategy_utils:aggregate_metricrecords"
    s = quadratic(CENTERS, **NO_EVALUATION, strategy={
        "name": "fedavg", "params": {"train_metrics_aggr_fn": ref, "fraction_evaluate": 0.0}})
    records = simulate(s).records
    assert len(calls) == s.rounds
    assert all(r["spied"] == 1.0 for r in records[1:])  # its result reached the record


def test_bulyans_selection_rule_from_an_installed_module_is_called(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(multikrum, "select_multikrum", _spy(multikrum.select_multikrum, calls))
    s = quadratic(CENTERS, **NO_EVALUATION, strategy={"name": "bulyan", "params": {
        "selection_rule": "flwr.serverapp.strategy.multikrum:select_multikrum",
        "fraction_evaluate": 0.0}})
    simulate(s)
    assert len(calls) == s.rounds


BAD = [  # (--set on the quickstart, the start of the one line)
    ("strategy.params.train_metrics_aggr_fn=no_such_package:f",
     "strategy.params.train_metrics_aggr_fn: 'no_such_package' is not an installed package"),
    ("strategy.params.evaluate_metrics_aggr_fn=flwr.serverapp.strategy:NoSuch",
     "strategy.params.evaluate_metrics_aggr_fn: 'flwr.serverapp.strategy' has no attribute"),
    ("strategy.params.train_metrics_aggr_fn=flwr.common.constant:APP_DIR",
     "strategy.params.train_metrics_aggr_fn: 'flwr.common.constant:APP_DIR' "
     "is not callable"),
    ("strategy={name: dp_fixed_clipping, params: {noise_multiplier: 1, clipping_norm: 1, "
     "strategy: {name: fedavg, params: {fraction_trian: 0.4}}}}",
     "strategy.params.strategy.params.fraction_trian: unknown key (allowed: fraction_train,"),
    ("strategy={name: dp_fixed_clipping, params: {noise_multiplier: 1, clipping_norm: 1, "
     "strategy: {name: fedavg, params: {train_metrics_aggr_fn: 'nope:f'}}}}",
     "strategy.params.strategy.params.train_metrics_aggr_fn: 'nope' is not an installed"),
    ("strategy={name: dp_fixed_clipping, params: {noise_multiplier: 1, clipping_norm: 1, "
     "strategy: {name: dp_fixed_clipping}}}",
     "strategy.params.strategy: Input tag 'dp_fixed_clipping' found using 'name' does not "
     "match any of the expected tags: 'fedavg'"),
    ("client_mods.train=[flwr.clientapp.mod:no_such_mod]",
     "client_mods.train.0: 'flwr.clientapp.mod' has no attribute 'no_such_mod'"),
    ("client_mods.evaluate=[flwr.clientapp.mod:LocalDpMod]",
     "client_mods.evaluate.0: 'flwr.clientapp.mod:LocalDpMod' is not a Flower mod"),
    ("strategy.name=fedxgbcyclic",
     "strategy.params: Flower's FedXgbCyclic cannot run in fedsim"),
]


@pytest.mark.parametrize(("override", "start"), BAD)
def test_validate_refuses_a_bad_reference_or_inner_strategy_in_one_line(override, start):
    result = CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", override])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert start in lines[0], lines[0]
