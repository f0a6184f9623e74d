"""Plug-ins: the strategies, tasks and topologies that installed packages register by name.

A package, this project included, registers each plug-in with one entry point whose name
is the name scenarios use and whose value names the module-level tuple that holds it:

    [project.entry-points."fedsim.strategies"]
    clipped_fedavg = "fedsim_plugin_example.clipped_fedavg:STRATEGIES"

One entry point per name lets a run import only what it names: names and where each comes
from are read from installed metadata without importing any plug-in. Entry points come
from installed distributions only (`fedsim.core.imports`), never from the working
directory or a scenario's folder. A plug-in that fails to load, or a name two
distributions claim, is one line (`PluginError`) when that name is used or listed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any, Generic, TypeVar

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_entry_points, load_entry_point
from topologies import TopologySpec

T = TypeVar("T")

PROJECT = "fedsim"


class PluginError(ScenarioError):
    """A plug-in that cannot be used: it failed to load, or two distributions claim its name."""


@dataclass(frozen=True)
class Origin:
    """Where a plug-in comes from: the distribution that registers it, and the entry point."""

    distribution: str
    version: str
    entry_point: str  # "name = module:attribute"

    def __str__(self) -> str:
        if self.distribution == PROJECT:
            return "fedsim (this project)"
        return f"{self.distribution} {self.version}"


class Registry(Generic[T]):
    """The plug-ins of one entry-point group, by name, each imported when first used.

    `name_of(obj)` is the plug-in name of an item of the tuple an entry point names, or
    None if the item is not a plug-in of this kind.
    """

    def __init__(self, group: str, kind: str, command: str,
                 name_of: Callable[[Any], str | None]) -> None:
        self.group, self.kind, self.command, self.name_of = group, kind, command, name_of
        self._loaded: dict[str, T] = {}

    @functools.cached_property
    def _entries(self) -> dict[str, list[tuple[EntryPoint, Origin]]]:
        entries: dict[str, list[tuple[EntryPoint, Origin]]] = {}
        for ep, dist in installed_entry_points(self.group):
            origin = Origin(dist.metadata["Name"], dist.version, f"{ep.name} = {ep.value}")
            entries.setdefault(ep.name, []).append((ep, origin))
        return entries

    def names(self) -> list[str]:
        """Every registered name, sorted; nothing is imported."""
        return sorted(self._entries)

    def origin(self, name: str) -> Origin:
        """Where `name` comes from (a `PluginError` if two distributions claim it)."""
        return self._entry(name)[1]

    def get(self, name: str, field: str) -> T:
        """The plug-in `name`, imported on first use; a `ScenarioError` naming `field` if no
        installed package registers it."""
        if name not in self._entries:
            raise ScenarioError(f"{field}: unknown {self.kind} {name!r} (available: "
                                f"{', '.join(self.names())}; see `fedsim {self.command}`)")
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def _entry(self, name: str) -> tuple[EntryPoint, Origin]:
        claims = self._entries[name]
        if len(claims) > 1:
            raise PluginError(
                f"{self.kind} {name!r} is registered by two distributions: "
                + " and ".join(f"{o} ({o.entry_point})" for _, o in claims)
                + "; uninstall one of them")
        return claims[0]

    def _load(self, name: str) -> T:
        ep, origin = self._entry(name)
        where = f"{self.kind} {name!r} (entry point '{origin.entry_point}' of {origin})"
        try:
            items = load_entry_point(ep)
        except Exception as exc:  # the plug-in's own error, on one line
            detail = str(exc).splitlines()[0] if str(exc) else ""
            raise PluginError(f"{where} failed to load: {type(exc).__name__}: {detail}"
                              ) from None
        found = [item for item in (items if isinstance(items, tuple | list) else (items,))
                 if self.name_of(item) == name]
        if len(found) != 1:
            raise PluginError(f"{where} names no {self.kind} called {name!r} (its value must "
                              f"name a tuple holding exactly one, e.g. the module's "
                              f"{self.command.upper()})")
        return found[0]


@functools.cache
def topology_registry() -> Registry[type[TopologySpec]]:
    """Every installed topology by name (entry points `fedsim.topologies`). It lives here
    because `topologies` is pure graphs and imports nothing of fedsim."""
    return Registry("fedsim.topologies", "topology", "topologies", lambda item: (
        item.model_fields["name"].default
        if isinstance(item, type) and issubclass(item, TopologySpec) else None))


def topology_class(name: Any) -> type[TopologySpec]:
    """The spec class of the topology `name`; a `ScenarioError` (`name: ...`) if none is."""
    if not isinstance(name, str):
        problem = "required field is missing" if name is None else "must be a string"
        raise ScenarioError(f"name: {problem} (e.g. {{name: ring}}; see `fedsim topologies`)")
    return topology_registry().get(name, "name")


def parse_topology_spec(data: Mapping[str, Any], num_nodes: int | None = None) -> TopologySpec:
    """The spec of the topology `data` names, validated by its class; with `num_nodes`, also
    the checks that depend on the number of nodes."""
    context = None if num_nodes is None else {"num_nodes": num_nodes}
    return topology_class(data.get("name")).model_validate(data, context=context)
