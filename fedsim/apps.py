"""The project's Flower apps: one ClientApp and one ServerApp, simulated or deployed.

The simulator's pool executes exactly `client_app`; `flwr run` deploys the
same two objects (see `[tool.flwr.app]` in pyproject.toml). Strategies add
their client halves to `client_app` as named actions (`train.fedspeed`, ...),
and this module tells them where the run's task comes from
(`task_from_run_config`, installed with `use_task_source`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import deploy
from fedsim.core import client
from fedsim.core.schema import Scenario, scenario_to_dict
from fedsim.core.services import PARTITION_QUERY
from fedsim.core.task import Task
from fedsim.engine.tasks import make_task
from strategies import client_actions


@functools.lru_cache(maxsize=4)
def _cached_task(scenario_json: str, num_partitions: int) -> Task:
    return make_task(Scenario.model_validate(json.loads(scenario_json)), num_partitions)


def task_from_run_config(run_config: dict[str, Any], num_partitions: int) -> Task:
    """The task of a run, built once per process and number of partitions.

    The simulator passes the resolved scenario as JSON (`scenario-json`); a
    deployed app passes the path of a scenario file (`scenario`, from
    `[tool.flwr.app.config]` or `flwr run -c`). On a device, the number of
    partitions comes from the node's `--node-config`.
    """
    if "scenario-json" in run_config:
        return _cached_task(str(run_config["scenario-json"]), num_partitions)
    scenario = deploy.scenario_from_run_config(run_config)
    return _cached_task(json.dumps(scenario_to_dict(scenario)), num_partitions)


client.use_task_source(task_from_run_config)
client_app = ClientApp()
client_app.train()(client.train)
client_app.evaluate()(client.evaluate)
client_app.query(PARTITION_QUERY.split(".")[1])(client.partition_info)
for _message_type, _function in client_actions().items():
    _category, _action = _message_type.split(".")
    getattr(client_app, _category)(_action)(_function)

server_app = ServerApp()
server_app.main()(deploy.serve)
