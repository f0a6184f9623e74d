"""Scenarios: a file (read by `fedsim.files`) checked against the schema and the registries.

The schema itself is `fedsim.core.schema` (data only); this module turns a
YAML file into a validated `Scenario`, including the task's and strategy's own
parameters, so a typo costs seconds, not a run.
"""

from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path
from typing import Any

from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.serverapp import ServerApp
from pydantic import ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_object
from fedsim.core.schema import ClientModsSpec, Scenario, describe_error
from fedsim.engine.tasks import make_task, validate_task_spec
from fedsim.files import apply_overrides, read_yaml
from strategies import strategy_info, validate_strategy_spec


def _non_finite(node: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN/Inf number in a nested mapping, if any."""
    if isinstance(node, float) and not math.isfinite(node):
        return path or "(top level)"
    items = node.items() if isinstance(node, dict) else (
        enumerate(node) if isinstance(node, list) else ())
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def parse_scenario(data: dict[str, Any], source: str = "scenario") -> Scenario:
    """Validate a scenario mapping, including the strategy's and task's own parameters."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_error(exc, Scenario)}") from None
    checks = ((validate_task_spec, validate_strategy_spec, _finite, _mods_exist)
              if scenario.app is None else (validate_app_spec, _finite))
    for check in checks:
        try:
            check(scenario)
        except ScenarioError as exc:
            raise ScenarioError(f"{source}: {exc}") from None
    return scenario


def validate_app_spec(scenario: Scenario) -> None:
    """The app's two halves exist in installed packages and are what they claim to be."""
    app = scenario.app
    if app is None:
        return
    for field, ref, kind in (("app.server", app.server, ServerApp),
                             ("app.client", app.client, ClientApp)):
        found = installed_object(ref, field)
        if not isinstance(found, kind):
            raise ScenarioError(f"{field}: {ref!r} is a {type(found).__name__}, not a flwr "
                                f"{kind.__name__}")
    key = app.work.epochs_key
    if key is not None and not isinstance(app.run_config.get(key), int | float):
        raise ScenarioError(f"app.work.epochs_key: app.run_config has no number {key!r} "
                            f"(keys: {', '.join(app.run_config) or 'none'})")
    for i, tier in enumerate(scenario.clients.devices):
        if getattr(tier.availability, "label_correlation", None) is not None:
            raise ScenarioError(
                f"clients.devices.{i}.availability.label_correlation: needs the labels of a "
                "fedsim task; an app's data is its own (use p or p_per_device)")


def _finite(scenario: Scenario) -> None:
    """No NaN or Inf in any setting, as validated (a quoted "inf" is a float by then):
    never a setting anyone means, and not JSON. An unbounded setting is left out or null."""
    sections = [("", scenario.model_dump())]
    if scenario.app is None:
        params = strategy_info(scenario.strategy.name).Params.model_validate(
            scenario.strategy.params)
        sections += [("strategy.params.", params.model_dump()),
                     ("task.params.", make_task(scenario).params.model_dump())]
    for prefix, values in sections:
        if (where := _non_finite(values)) is not None:
            raise ScenarioError(f"{prefix}{where}: must be a finite number (got NaN or Inf); "
                                "leave it out or null where it may be unbounded")


@functools.lru_cache(maxsize=8)
def client_mods(spec: ClientModsSpec) -> dict[str, tuple[Mod, ...]]:
    """The mods `client_mods` names, by message category, imported from installed packages
    only; a reference that is not a Flower mod is a `ScenarioError` naming it."""
    mods: dict[str, tuple[Mod, ...]] = {}
    for category in ClientModsSpec.model_fields:
        refs = getattr(spec, category)
        mods[category] = tuple(_mod(ref, f"client_mods.{category}.{i}")
                               for i, ref in enumerate(refs))
    return mods


def _mod(ref: str, field: str) -> Mod:
    mod = installed_object(ref, field)
    try:
        inspect.signature(mod).bind(None, None, None)
    except (TypeError, ValueError):  # not callable, or not with (message, context, call_next)
        raise ScenarioError(f"{field}: {ref!r} is not a Flower mod, a function "
                            "(message, context, call_next) -> Message") from None
    return mod


def _mods_exist(scenario: Scenario) -> None:
    client_mods(scenario.client_mods)


def load_scenario(path: Path | str, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_scenario(data, source=str(path))
