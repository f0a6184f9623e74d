"""The project's Flower apps: one ClientApp and one ServerApp, simulated or deployed.

The simulator's pool executes exactly `client_app`; `flwr run` deploys the
same two objects (see `[tool.flwr.app]` in pyproject.toml). Strategies add
their client halves to `client_app` as named actions (`train.fedspeed`, ...),
and this module tells them where the run's task comes from
(`task_from_run_config`, installed with `use_task_source`). The ClientApp is
built once, at import, for every run; the Flower mods a scenario names
(`client_mods`) are applied per message by `scenario_mods`, one mod that reads
them from the run config, simulated and deployed alike.
"""

from __future__ import annotations

import functools
import json
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
from strategies import client_actions


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


client.use_task_source(task_from_run_config)
client_app = ClientApp(mods=[measure_compute, scenario_mods])
client_app.train()(client.train)
client_app.evaluate()(client.evaluate)
client_app.query(PARTITION_QUERY.split(".")[1])(client.partition_info)
for _message_type, _function in client_actions().items():
    _category, _action = _message_type.split(".")
    getattr(client_app, _category)(_action)(_function)

server_app = ServerApp()
server_app.main()(deploy.serve)
