"""Reading what users hand us: scenario and sweep files, and `--set` overrides.

Bounded and total: a file over `MAX_FILE_BYTES`, bytes that are not UTF-8, YAML that is
not plain data (tags, aliases), an unreadable path: each is one `ScenarioError` line. This
module imports only PyYAML, so a hostile file is refused before anything heavy is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedsim.core.errors import ScenarioError


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


MAX_FILE_BYTES = 1_000_000
"""A scenario or sweep file is at most this big (the shipped ones are a few hundred bytes)."""

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's C parser when present


def load_yaml(text: str, source: str) -> Any:
    """Plain YAML data (mappings, lists, scalars) from `text`, or one `ScenarioError` line.

    Safe loader only (no tags that build objects), and no aliases: a few hundred bytes of
    nested `*alias`es expand to gigabytes, and a scenario never needs them.
    """
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.AliasEvent):
                raise ScenarioError(f"{source}: YAML aliases (*name) are not accepted; write "
                                    "the value out where it is used")
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(f"{source}: not valid YAML{where}: {problem}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` overrides; values are parsed as YAML (numbers, lists...)."""
    for item in overrides:
        key, value = parse_override(item)
        try:
            set_path(data, key, value)
        except (IndexError, ValueError, TypeError, AttributeError) as exc:
            raise ScenarioError(f"--set {item!r}: cannot set {key}: {exc}") from None
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` as (dotted key, value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"--set {item!r}: expected KEY=VALUE, e.g. --set rounds=5")
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(f"--set {key.strip()}: the value is longer than "
                            f"{MAX_FILE_BYTES} characters")
    return key.strip(), load_yaml(raw, f"--set {key.strip()}")


def read_yaml(path: Path) -> dict[str, Any]:
    """A scenario or sweep file's mapping; every way it can be unreadable is one line."""
    try:
        if not path.is_file():
            raise ScenarioError(f"{path}: file not found (give the path to a scenario YAML "
                                "file)")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioError(f"{path}: {size} bytes; a scenario file is at most "
                                f"{MAX_FILE_BYTES} bytes")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
                            ) from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    data = load_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario must be a YAML mapping of keys to values")
    return data


SWEEP_KEYS = frozenset({"base", "grid", "zip", "seeds", "target_accuracy"})
"""Keys only a sweep file has: a YAML mapping with one of them is a sweep, not a scenario."""


def is_sweep(data: dict[str, Any]) -> bool:
    return bool(SWEEP_KEYS & data.keys())
