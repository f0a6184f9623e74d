"""fedsim from Python (a notebook, a script): `fedsim.simulate`.

The command line's `fedsim run` with what a notebook wants instead: a scenario given as a
file, a mapping or a `Scenario`; a Flower app named by argument; the records returned
rather than printed; a run directory only where one is asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.checks import CHECK_ERRORS, check_run
from fedsim.core.errors import ScenarioError
from fedsim.core.schema import Scenario, scenario_to_dict
from fedsim.files import apply_overrides, read_yaml
from fedsim.results import clear_run_outputs, has_run_outputs, run_dir_lock
from fedsim.runner import RunResult
from fedsim.runner import simulate as simulate_scenario
from fedsim.scenario import parse_scenario
from fedsim.tracking import run_callbacks


def simulate(scenario: Scenario | Mapping[str, Any] | str | Path, *,
             server_app: str | None = None, client_app: str | None = None,
             run_config: Mapping[str, int | float | str | bool] | None = None,
             overrides: Sequence[str] = (), out: str | Path | None = None,
             overwrite: bool = False) -> RunResult:
    """Simulate a scenario (a YAML path, a mapping or a `Scenario`); return its records.

    `server_app` and `client_app` ("package.module:attribute" of an installed package) run
    that Flower app on the scenario's devices, in place of the scenario's `app` (and of its
    task and strategy); `run_config` is merged into the app's run config. `overrides` are
    `--set`-style "dotted.key=value" strings. With `out`, the run directory is written as
    `fedsim run` writes it (metrics.jsonl, summary.json, model.npz, the plot).

    Returns a `RunResult`: `records` (one dict per round), `summary`, `arrays` (the final
    global model). Bad input raises `ScenarioError` with one line naming the field.
    """
    data = _scenario_data(scenario)
    if server_app is not None or client_app is not None or run_config is not None:
        app = dict(data.get("app") or {})
        for key, value in (("server", server_app), ("client", client_app)):
            if value is not None:
                app[key] = value
        app["run_config"] = {**app.get("run_config", {}), **(run_config or {})}
        data["app"] = app
    resolved = parse_scenario(apply_overrides(data, list(overrides)))
    try:
        check_run(resolved)
    except CHECK_ERRORS as exc:
        raise ScenarioError(str(exc)) from None
    if out is None:
        return simulate_scenario(resolved)
    run_dir = Path(out)
    with run_dir_lock(run_dir):
        if has_run_outputs(run_dir):
            if not overwrite:
                raise ScenarioError(f"out: {run_dir} holds an earlier run; pass overwrite=True "
                                    "or name another directory")
            clear_run_outputs(run_dir)
        return simulate_scenario(resolved, run_callbacks(resolved, run_dir),
                                 log_file=run_dir / "flower.log", run_dir=run_dir)


def _scenario_data(scenario: Scenario | Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(scenario, Scenario):
        return scenario_to_dict(scenario)
    if isinstance(scenario, Mapping):
        return copy.deepcopy(dict(scenario))
    return read_yaml(Path(scenario))
