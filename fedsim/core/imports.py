"""Objects a scenario names as `package.module:attribute`, imported from installed packages only.

A scenario file must not be a way to run code that nobody installed: a module that sits
beside the scenario or in the working directory is refused, whatever `sys.path` holds.
Only a module whose top-level package belongs to an installed distribution is imported
(`pip install` the package that holds it, editable installs included).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterator
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
        with _without_working_directory():
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


@contextlib.contextmanager
def _without_working_directory() -> Iterator[None]:
    """Import with the working directory off `sys.path` (`python -m` puts it first), so an
    installed package is not shadowed by a same-named folder where the user stands."""
    here = {"", ".", os.getcwd()}
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p not in here]
    try:
        yield
    finally:
        sys.path[:] = saved
