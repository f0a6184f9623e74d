"""Tasks: a model, data shards per client, a loss and an evaluation.

Strategies' client halves talk to a task only through `Task`, never to a
concrete dataset, so every algorithm runs on every task that fits it. Tasks are
registered by name for scenarios (`task.name`): every module of this package
lists its tasks in a `TASKS` tuple. Each validates its own `task.params` with a
pydantic model.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord
from pydantic import BaseModel, ConfigDict, ValidationError

from fedsim.scenario import Scenario, ScenarioError, TaskSpec, describe_error, scenario_to_dict


class TaskParams(BaseModel):
    """Base of a task's own parameters (`task.params`); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Dataset:
    """Tensors of one split: inputs `x` and targets `y` (first dimension: samples)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Task(ABC):
    """A learning problem split over `num_clients` clients."""

    name: ClassVar[str]
    summary: ClassVar[str]
    models: ClassVar[tuple[str, ...]]
    Params: ClassVar[type[TaskParams]] = TaskParams
    # Cached properties that cost imports or time to compute (data, partition indices):
    # the simulator computes them once in the driver and hands them to its workers.
    shared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: TaskSpec, num_clients: int, seed: int) -> None:
        self.spec = spec
        self.model_name = spec.model or self.models[0]
        self.params = self.Params.model_validate(spec.params)
        self.num_clients = num_clients
        self.seed = seed

    def shared_data(self) -> dict[str, Any]:
        """The values of the `shared` cached properties (computed here if not yet)."""
        return {name: getattr(self, name) for name in self.shared}

    def use_shared_data(self, data: dict[str, Any]) -> None:
        """Take `shared_data()` of an identical task instead of computing it again."""
        for name in self.shared:
            if name in data:
                self.__dict__[name] = data[name]  # where functools.cached_property keeps it

    @abstractmethod
    def make_model(self) -> torch.nn.Module:
        """A freshly initialised model (the caller seeds torch)."""

    def model_with(self, arrays: ArrayRecord) -> torch.nn.Module:
        """This task's model holding `arrays`: one module per task instance, reused.

        A job overwrites every weight, so a fresh module per job (and its random init)
        is wasted work. The module is built with torch's random state forked, so the
        job's draws do not depend on which job came first on a worker. It is the
        caller's until the next call: take a copy to keep two models.
        """
        from fedsim.training import arrays_to_model

        model = self.__dict__.get("_reused_model")
        if model is None:
            with torch.random.fork_rng(devices=[]):
                model = self.__dict__["_reused_model"] = self.make_model()
        for parameter in model.parameters():  # as fresh: no gradients, training mode
            parameter.grad = None
        return arrays_to_model(model.train(), arrays)

    @abstractmethod
    def train_data(self, partition_id: int) -> Dataset:
        """The training shard of one client."""

    @abstractmethod
    def test_data(self, partition_id: int | None = None) -> Dataset:
        """A client's held-out data, or the server's test set for `None`."""

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
        """Loss and accuracy of `model` on `data`."""
        model.eval()
        logits = model(data.x)
        loss = torch.nn.functional.cross_entropy(logits, data.y).item()
        accuracy = (logits.argmax(dim=1) == data.y).float().mean().item()
        return {"loss": loss, "accuracy": accuracy}


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


def make_task(scenario: Scenario) -> Task:
    return _registry()[scenario.task.name](scenario.task, scenario.clients.count, scenario.seed)


@functools.lru_cache(maxsize=4)
def _cached_task(scenario_json: str, num_partitions: int) -> Task:
    scenario = Scenario.model_validate(json.loads(scenario_json))
    return _registry()[scenario.task.name](scenario.task, num_partitions, scenario.seed)


def task_from_run_config(run_config: dict[str, Any], num_partitions: int) -> Task:
    """The task of a run, built once per process and number of partitions.

    The simulator passes the resolved scenario as JSON (`scenario-json`); a
    deployed app passes the path of a scenario file (`scenario`, from
    `[tool.flwr.app.config]` or `flwr run -c`). On a device, the number of
    partitions comes from the node's `--node-config`.
    """
    if "scenario-json" in run_config:
        return _cached_task(str(run_config["scenario-json"]), num_partitions)
    from fedsim.deploy import scenario_from_run_config

    scenario = scenario_from_run_config(run_config)
    return _cached_task(json.dumps(scenario_to_dict(scenario)), num_partitions)
