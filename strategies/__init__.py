"""Federated algorithms as Flower strategies, each with its client half.

A strategy module declares one or more `StrategyInfo`s in a module-level
`STRATEGIES` tuple: a name for scenarios, a one-line summary for
`fedsim strategies`, a pydantic model of its hyperparameters, a builder, and
the client actions it adds to the project's ClientApp (none: the default
`train`/`evaluate` serve it). Each name is registered by an entry point of the
group `fedsim.strategies` (`fedsim.core.plugins`), in this project's
pyproject.toml as in any installed plug-in package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.plugins import Registry
from fedsim.core.schema import Scenario, describe_error
from fedsim.core.services import GridServices
from fedsim.core.task import Task

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Strategy

ClientFn = Callable[[Message, Context], Message]

# Flower's FedAvg waits for 2 nodes by default; a simulated population may have 1.
FEDAVG_DEFAULTS: dict[str, Any] = {"min_train_nodes": 1, "min_evaluate_nodes": 1,
                                   "min_available_nodes": 1}


class FedAvgParams(BaseModel):
    """Flower FedAvg's settings, for the parameter model of a strategy that extends FedAvg:
    subclass it, add the strategy's own fields, build with `Strategy(**params.model_dump())`.
    The node minimums default to 1 (`FEDAVG_DEFAULTS`)."""

    model_config = ConfigDict(extra="forbid")

    fraction_train: float = Field(default=1.0, ge=0, le=1,
                                  description="share of the online nodes sampled to train")
    fraction_evaluate: float = Field(default=1.0, ge=0, le=1,
                                     description="share of the online nodes sampled to evaluate")
    min_train_nodes: int = Field(default=1, ge=0)
    min_evaluate_nodes: int = Field(default=1, ge=0)
    min_available_nodes: int = Field(default=1, ge=0,
                                     description="nodes to wait for before a round starts")
    weighted_by_key: str = Field(default="num-examples",
                                 description="reply metric that weights the average")


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
def registry() -> Registry[StrategyInfo]:
    """Every installed strategy by name (entry points `fedsim.strategies`), each imported
    when first used."""
    return Registry("fedsim.strategies", "strategy", "strategies",
                    lambda item: item.name if isinstance(item, StrategyInfo) else None)


def strategy_info(name: str) -> StrategyInfo:
    return registry().get(name, "strategy.name")


def validate_strategy_spec(scenario: Scenario) -> None:
    info = strategy_info(scenario.strategy.name)
    try:
        info.Params.model_validate(scenario.strategy.params)
    except ValidationError as exc:
        raise ScenarioError(describe_error(exc, info.Params, prefix="strategy.params.")) from None


def build_strategy(scenario: Scenario, context: BuildContext) -> Strategy:
    info = strategy_info(scenario.strategy.name)
    return info.build(info.Params.model_validate(scenario.strategy.params), context)
