"""Federated algorithms as Flower strategies, each with its client half.

A strategy module declares one or more `StrategyInfo`s in a module-level
`STRATEGIES` tuple: a name for scenarios, a one-line summary for
`fedsim strategies`, a pydantic model of its hyperparameters, a builder, and
the client actions it adds to the project's ClientApp. Every module of this
package that has `STRATEGIES` is registered; there is no list to edit.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from pydantic import BaseModel, ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import Scenario, describe_error
from fedsim.core.services import GridServices
from fedsim.core.task import Task

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

ClientFn = Callable[[Message, Context], Message]

# Flower's FedAvg waits for 2 nodes by default; a simulated population may have 1.
FEDAVG_DEFAULTS: dict[str, Any] = {"min_train_nodes": 1, "min_evaluate_nodes": 1,
                                   "min_available_nodes": 1}


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides its parameters."""

    scenario: Scenario
    num_nodes: int  # partitions in the federation (what the nodes report, when deployed)
    task: Task  # the run's task, built once by the composition root
    devices: Any = None  # the simulated device population; None on a deployed grid
    services: GridServices | None = None  # None: the strategy asks the grid (`services_for`)


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    summary: str
    Params: type[BaseModel]
    build: Callable[[Any, BuildContext], Strategy]
    client_actions: Mapping[str, ClientFn] = field(default_factory=dict)


@functools.cache
def registry() -> dict[str, StrategyInfo]:
    """Every strategy of every module in this package, by name."""
    infos: dict[str, StrategyInfo] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for info in getattr(module, "STRATEGIES", ()):
            if info.name in infos:
                raise RuntimeError(f"two strategies are named {info.name!r}")
            infos[info.name] = info
    return infos


def client_actions() -> dict[str, ClientFn]:
    """Every strategy's client actions by message type, e.g. `train.fedspeed`."""
    actions: dict[str, ClientFn] = {}
    for info in registry().values():
        actions.update(info.client_actions)
    return actions


def strategy_info(name: str) -> StrategyInfo:
    infos = registry()
    if name not in infos:
        raise ScenarioError(f"strategy.name: unknown strategy {name!r} "
                            f"(available: {', '.join(sorted(infos))}; see `fedsim strategies`)")
    return infos[name]


def validate_strategy_spec(scenario: Scenario) -> None:
    info = strategy_info(scenario.strategy.name)
    try:
        info.Params.model_validate(scenario.strategy.params)
    except ValidationError as exc:
        raise ScenarioError(describe_error(exc, info.Params, prefix="strategy.params.")) from None


def build_strategy(scenario: Scenario, context: BuildContext) -> Strategy:
    info = strategy_info(scenario.strategy.name)
    return info.build(info.Params.model_validate(scenario.strategy.params), context)
