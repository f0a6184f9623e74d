"""Tasks by name for scenarios (`task.name`): the project's and installed plug-ins'.

A task module lists its tasks (subclasses of `fedsim.core.task.Task`) in a
`TASKS` tuple, and each name is registered by an entry point of the group
`fedsim.tasks` (`fedsim.core.plugins`), in this project's pyproject.toml as in
any plug-in package. Each task validates its own `task.params` with a pydantic
model.
"""

from __future__ import annotations

import functools

from pydantic import ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.plugins import Registry
from fedsim.core.schema import Scenario, describe_error
from fedsim.core.task import Task


@functools.cache
def registry() -> Registry[type[Task]]:
    """Every installed task class by name (entry points `fedsim.tasks`), each imported
    when first used."""
    return Registry("fedsim.tasks", "task", "tasks", lambda item: item.name if (
        isinstance(item, type) and issubclass(item, Task)) else None)


def task_class(name: str) -> type[Task]:
    return registry().get(name, "task.name")


def validate_task_spec(scenario: Scenario) -> None:
    """Check `task.name`, `task.model` and `task.params` of a scenario."""
    spec = scenario.task
    task = task_class(spec.name)
    by_reference = task.model_references and ":" in (spec.model or "")
    if spec.model is not None and spec.model not in task.models and not by_reference:
        also = ", or an installed 'module:attr'" if task.model_references else ""
        raise ScenarioError(f"task.model: {spec.model!r} is not a model of task {spec.name!r} "
                            f"(available: {', '.join(task.models)}{also})")
    try:
        made = make_task(scenario)  # cheap: tasks load data lazily; checks params against the run
    except ValidationError as exc:
        raise ScenarioError(describe_error(exc, task.Params, prefix="task.params.")) from None
    made.check()


def make_task(scenario: Scenario, num_partitions: int | None = None) -> Task:
    """The scenario's task over `num_partitions` clients (default: `clients.count`)."""
    count = scenario.clients.count if num_partitions is None else num_partitions
    return task_class(scenario.task.name)(scenario.task, count, scenario.seed)
