"""Scenario files: reading, `--set` overrides, and checks against the registries.

The schema itself is `fedsim.core.schema` (data only); this module turns a
YAML file into a validated `Scenario`, including the task's and strategy's own
parameters, so a typo costs seconds, not a run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedsim.core.schema import Scenario, ScenarioError, describe_error
from fedsim.engine.tasks import validate_task_spec
from strategies import validate_strategy_spec


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts (list items by index), creating dicts as needed."""
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), dict | list):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (numbers, lists...)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE, e.g. --set rounds=5")
        try:
            set_path(data, key.strip(), yaml.safe_load(raw))
        except (IndexError, ValueError, TypeError, AttributeError) as exc:
            raise ScenarioError(f"--set {item!r}: cannot set {key.strip()}: {exc}") from None
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ScenarioError(f"{path}: file not found (give the path to a scenario YAML file)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ScenarioError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping of keys to values")
    return data


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
    if (where := _non_finite(data)) is not None:  # NaN/Inf is never a setting anyone means
        raise ScenarioError(f"{source}: {where}: must be a finite number (got NaN or Inf)")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_error(exc, Scenario)}") from None
    for check in (validate_task_spec, validate_strategy_spec):
        try:
            check(scenario)
        except ScenarioError as exc:
            raise ScenarioError(f"{source}: {exc}") from None
    return scenario


def load_scenario(path: Path | str, overrides: list[str] | None = None) -> Scenario:
    path = Path(path)
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_scenario(data, source=str(path))
