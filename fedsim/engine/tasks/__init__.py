"""The project's tasks, registered by name for scenarios (`task.name`).

Every module of this package lists its tasks (subclasses of
`fedsim.core.task.Task`) in a `TASKS` tuple. Each validates its own
`task.params` with a pydantic model.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from pydantic import ValidationError

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import Scenario, describe_error
from fedsim.core.task import Task


@functools.cache
def _registry() -> dict[str, type[Task]]:
    """Every task class listed in a `TASKS` tuple of a module of this package."""
    tasks: dict[str, type[Task]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for task in getattr(module, "TASKS", ()):
            tasks[task.name] = task
    return tasks


def task_names() -> list[str]:
    return sorted(_registry())


def validate_task_spec(scenario: Scenario) -> None:
    """Check `task.name`, `task.model` and `task.params` of a scenario."""
    spec = scenario.task
    registry = _registry()
    if spec.name not in registry:
        raise ScenarioError(f"task.name: unknown task {spec.name!r} "
                            f"(available: {', '.join(sorted(registry))})")
    task = registry[spec.name]
    if spec.model is not None and spec.model not in task.models:
        raise ScenarioError(f"task.model: {spec.model!r} is not a model of task {spec.name!r} "
                            f"(available: {', '.join(task.models)})")
    try:
        make_task(scenario)  # cheap: tasks load data lazily; checks params against the run
    except ValidationError as exc:
        raise ScenarioError(describe_error(exc, task.Params, prefix="task.params.")) from None


def make_task(scenario: Scenario, num_partitions: int | None = None) -> Task:
    """The scenario's task over `num_partitions` clients (default: `clients.count`)."""
    count = scenario.clients.count if num_partitions is None else num_partitions
    return _registry()[scenario.task.name](scenario.task, count, scenario.seed)
