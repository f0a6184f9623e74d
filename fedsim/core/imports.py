"""Objects a scenario names as `package.module:attribute`, imported from installed packages only.

A scenario file must not be a way to run code that nobody installed: a module that sits
beside the scenario or in the working directory is refused, whatever `sys.path` holds.
Only a module whose top-level package belongs to an installed distribution is imported
(`pip install` the package that holds it, editable installs included). Plug-ins' entry
points (`installed_entry_points`) are read under the same rule: a `*.dist-info` lying in
the working directory, which `importlib.metadata` would otherwise find there, registers
nothing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator
from importlib.metadata import Distribution, EntryPoint
from typing import Any

from fedsim.core.errors import ScenarioError


def installed_object(ref: str, field: str) -> Any:
    """The object `ref` names; a `ScenarioError` naming `field` if it cannot be had."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr or not all(
            part.isidentifier() for part in [*module_name.split("."), *attr.split(".")]):
        raise ScenarioError(f"{field}: {ref!r} is not a reference 'package.module:attribute'")
    top = module_name.split(".")[0]
    if top not in _installed_packages():
        raise ScenarioError(
            f"{field}: {top!r} is not an installed package; fedsim imports what a scenario "
            f"names only from installed packages (pip install the package that holds "
            f"{module_name!r}), never from the scenario's folder or the working directory")
    try:
        with without_working_directory():
            obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the package's own import error, on one line
        raise ScenarioError(f"{field}: importing {module_name!r} failed: "
                            f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ScenarioError(f"{field}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


@functools.cache
def _installed_packages() -> frozenset[str]:
    """Top-level packages of the installed distributions: reading them scans every
    distribution's metadata (~0.3 s), and a scenario may name several objects."""
    return frozenset(importlib.metadata.packages_distributions())


def installed_entry_points(group: str) -> list[tuple[EntryPoint, Distribution]]:
    """The entry points of `group` and the distribution of each, from installed packages:
    `sys.path` without the working directory, each distribution once (its first copy on the
    path that has entry points of `group`). Only those distributions' metadata is parsed:
    parsing every installed distribution's costs ~0.8 s, paid by every ClientApp process."""
    found: list[tuple[EntryPoint, Distribution]] = []
    seen: set[str] = set()
    for dist in importlib.metadata.distributions(path=_installed_path()):
        entry_points = [ep for ep in dist.entry_points if ep.group == group]
        if not entry_points:
            continue
        key = _normalized(dist.metadata["Name"] or "")
        if key in seen:
            continue
        seen.add(key)
        found += [(ep, dist) for ep in entry_points]
    return found


def load_entry_point(entry_point: EntryPoint) -> Any:
    """The object an installed entry point names, imported with the working directory off
    `sys.path`; its own import error propagates."""
    with without_working_directory():
        return entry_point.load()


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installed_path() -> list[str]:
    here = {"", ".", os.getcwd()}
    return [p for p in sys.path if p not in here]


@contextlib.contextmanager
def without_working_directory() -> Iterator[None]:
    """Import with the working directory off `sys.path` (`python -m` puts it first), so an
    installed package is not shadowed by a same-named folder where the user stands."""
    saved = sys.path[:]
    sys.path[:] = _installed_path()
    try:
        yield
    finally:
        sys.path[:] = saved


def distribution_folders(name: str, field: str) -> list[str]:
    """The folders that make the installed distribution `name` importable and registered
    on another machine: each of its top-level packages and its metadata folder (entry
    points included), as Ray's `py_modules` ships them. A `ScenarioError` naming `field` if
    `name` is not installed here or is not made of packages."""
    wanted = _normalized(name)
    dist = next((d for d in importlib.metadata.distributions(path=_installed_path())
                 if _normalized(d.metadata["Name"] or "") == wanted), None)
    metadata = getattr(dist, "_path", None)  # PathDistribution: its *.dist-info folder
    if dist is None or metadata is None:
        raise ScenarioError(f"{field}: {name!r} is not an installed distribution; ship "
                            "distributions installed here, by the name pip knows them by")
    tops = (dist.read_text("top_level.txt") or "").split() or sorted(
        {top for top, names in importlib.metadata.packages_distributions().items()
         if dist.metadata["Name"] in names})
    folders = []
    for top in tops:
        with without_working_directory():
            spec = importlib.util.find_spec(top)
        if spec is None or not spec.submodule_search_locations:
            raise ScenarioError(f"{field}: {name!r} holds {top!r}, which is not a package "
                                "folder; py_modules ships packages")
        folders.append(str(next(iter(spec.submodule_search_locations))))
    return [*folders, str(metadata)]
