"""Scenarios: a file (read by `fedsim.files`) checked against the schema and the registries.

The schema itself is `fedsim.core.schema` (data only); this module turns a
YAML file into a validated `Scenario`, including the task's and strategy's own
parameters, so a typo costs seconds, not a run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import Scenario, describe_error
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
    for check in (validate_task_spec, validate_strategy_spec, _finite):
        try:
            check(scenario)
        except ScenarioError as exc:
            raise ScenarioError(f"{source}: {exc}") from None
    return scenario


def _finite(scenario: Scenario) -> None:
    """No NaN or Inf in any setting, as validated (a quoted "inf" is a float by then):
    never a setting anyone means, and not JSON. An unbounded setting is left out or null."""
    params = strategy_info(scenario.strategy.name).Params.model_validate(
        scenario.strategy.params)
    for prefix, values in (("", scenario.model_dump()),
                           ("strategy.params.", params.model_dump()),
                           ("task.params.", make_task(scenario).params.model_dump())):
        if (where := _non_finite(values)) is not None:
            raise ScenarioError(f"{prefix}{where}: must be a finite number (got NaN or Inf); "
                                "leave it out or null where it may be unbounded")


def load_scenario(path: Path | str, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_scenario(data, source=str(path))
