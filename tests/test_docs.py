"""The docs say what the code does: every recorded field is defined in docs/metrics.md, and
the guides' examples are the example plug-in package's files (which its own test runs)."""

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


GUIDES = ("writing-a-strategy.md", "writing-a-task.md")


@pytest.mark.parametrize("guide", GUIDES)
def test_the_guides_examples_are_the_example_packages_files_verbatim(guide: str) -> None:
    text = (ROOT / "docs" / guide).read_text()
    included = re.findall(r"<!-- verbatim: (\S+) -->\n```\w+\n(.*?)```\n", text, re.S)
    assert included and len(included) == text.count("<!-- verbatim:"), "a marker without a block"
    for path, block in included:
        assert block == (ROOT / path).read_text(), f"{guide}: {path} differs from the file"


def test_the_readme_links_the_guides() -> None:
    readme = (ROOT / "README.md").read_text()
    assert all(f"(docs/{guide})" in readme for guide in GUIDES)
