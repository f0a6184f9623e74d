"""The project's Flower apps: one ClientApp and one ServerApp, simulated or deployed.

The simulator's pool executes exactly `client_app`; `flwr run` deploys the
same two objects (see `[tool.flwr.app]` in pyproject.toml). Strategies add
their client halves to `client_app` as named actions (`train.fedspeed`, ...),
registered when the first message of a run whose strategy has them arrives, so
a process imports only the strategy it serves (a deployed SuperNode starts a
process per message). This module tells the client halves where the run's task
comes from (`task_from_run_config`, installed with `use_task_source`). The
Flower mods a scenario names (`client_mods`) are applied per message by
`scenario_mods`, one mod that reads them from the run config, simulated and
deployed alike.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.serverapp import ServerApp

from fedsim import deploy
from fedsim.calibration import measure_compute
from fedsim.core import client
from fedsim.core.schema import Scenario, scenario_to_dict
from fedsim.core.services import PARTITION_QUERY
from fedsim.core.task import Task
from fedsim.engine.tasks import make_task
from fedsim.scenario import client_mods
from strategies import strategy_info


@functools.lru_cache(maxsize=4)
def _cached_scenario(scenario_json: str) -> Scenario:
    return Scenario.model_validate(json.loads(scenario_json))


@functools.lru_cache(maxsize=4)
def _cached_task(scenario_json: str, num_partitions: int) -> Task:
    return make_task(_cached_scenario(scenario_json), num_partitions)


def _scenario_json(run_config: dict[str, Any]) -> str:
    """The run's resolved scenario as JSON.

    The simulator passes it as it is (`scenario-json`); a deployed app passes
    the path of a scenario file (`scenario`, from `[tool.flwr.app.config]` or
    `flwr run -c`), read and checked here.
    """
    if "scenario-json" in run_config:
        return str(run_config["scenario-json"])
    return json.dumps(scenario_to_dict(deploy.scenario_from_run_config(run_config)))


def task_from_run_config(run_config: dict[str, Any], num_partitions: int) -> Task:
    """The task of a run, built once per process and number of partitions (on a device,
    the number of partitions comes from the node's `--node-config`)."""
    return _cached_task(_scenario_json(run_config), num_partitions)


def scenario_mods(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The scenario's `client_mods` for this message's category around its handler,
    outermost first, as if the ClientApp had been built with them. fedsim's own partition
    query (`query.*`) is never modded."""
    category = message.metadata.message_type.split(".")[0]
    if category == "query":
        return call_next(message, context)
    spec = _cached_scenario(_scenario_json(context.run_config)).client_mods
    for mod in reversed(client_mods(spec)[category]):
        call_next = functools.partial(_call_mod, mod, call_next)
    return call_next(message, context)


def _call_mod(mod: Mod, call_next: ClientAppCallable, message: Message,
              context: Context) -> Message:
    return mod(message, context, call_next)


class ScenarioClientApp(ClientApp):
    """The project's ClientApp: the default actions, and the client actions of each run's
    strategy, added when a message of that run first needs one. Strategies of one module
    may share an action (`train.dfedsam`): it is added once. A message a run's strategy
    declares no action for is refused in every process, not served because another run's
    strategy happened to add it there first."""

    def __init__(self) -> None:
        super().__init__(mods=[measure_compute, scenario_mods])
        self._strategies_added: set[str] = set()
        self._actions_added: set[str] = set()
        self.train()(client.train)
        self.evaluate()(client.evaluate)
        self.query(PARTITION_QUERY.split(".")[1])(client.partition_info)

    def __call__(self, message: Message, context: Context) -> Message:
        category, _, action = message.metadata.message_type.partition(".")
        if action and category != "query":
            strategy = _cached_scenario(_scenario_json(context.run_config)).strategy.name
            actions = strategy_info(strategy).client_actions
            if message.metadata.message_type not in actions:
                raise ValueError(f"strategy {strategy!r} sent a {message.metadata.message_type!r} "
                                 "message but declares no client action for it (its "
                                 "StrategyInfo's client_actions)")
            self._add_actions(strategy, actions)
        return super().__call__(message, context)

    def _add_actions(self, strategy: str, actions: Mapping[str, ClientAppCallable]) -> None:
        if strategy in self._strategies_added:
            return
        for message_type, function in actions.items():
            if message_type not in self._actions_added:
                category, action = message_type.split(".")
                getattr(self, category)(action)(function)
                self._actions_added.add(message_type)
        self._strategies_added.add(strategy)


client.use_task_source(task_from_run_config)
client_app = ScenarioClientApp()

server_app = ServerApp()
server_app.main()(deploy.serve)
