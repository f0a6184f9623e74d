"""The docs say what the code does: every recorded field is defined in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedsim.runner import simulate
from fedsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def _documented() -> set[str]:
    """Every `name` in the first column of docs/metrics.md's tables."""
    names: set[str] = set()
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z0-9_]+)`", line.split("|")[1]))
    return names


@pytest.mark.slow
def test_every_field_a_shipped_scenario_records_is_in_the_glossary():
    documented = _documented()
    missing: dict[str, str] = {}
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        rounds = 4 if "sgc" in path.name else 2  # SGC decodes its first job in round 3
        result = simulate(load_scenario(path, ["backend.kind=inline", f"rounds={rounds}"]))
        fields = {k for record in result.records for k in record} | set(result.summary)
        for field in fields - documented:
            missing.setdefault(field, path.name)
    assert not missing, f"undocumented in docs/metrics.md: {missing}"
