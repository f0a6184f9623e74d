"""The task interface: a model, data shards per client, a loss and an evaluation.

Strategies' client halves talk to a task only through `Task`, never to a
concrete dataset, so every algorithm runs on every task that fits it. The
concrete tasks live in the engine (`fedsim.engine.tasks`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord
from pydantic import BaseModel, ConfigDict

from fedsim.core.device import compute_device
from fedsim.core.schema import TaskSpec


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
    # Whether `task.model` may also name an installed `module:attr` that builds the model.
    model_references: ClassVar[bool] = False
    Params: ClassVar[type[TaskParams]] = TaskParams
    # Whether the default client path may run it on a CUDA device (`backend.device`): its
    # model, loss and evaluation use torch on the model's device only, no NumPy.
    cuda: ClassVar[bool] = False
    # Cached properties that cost imports or time to compute (data, partition indices):
    # the simulator computes them once in the driver and hands them to its workers.
    shared: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: TaskSpec, num_clients: int, seed: int) -> None:
        self.spec = spec
        self.model_name = spec.model or self.models[0]
        self.params = self.Params.model_validate(spec.params)
        self.num_clients = num_clients
        self.seed = seed

    @property
    def downloads(self) -> bool:
        """Whether loading the data may need the network (a hub dataset): `fedsim validate`
        then checks the scenario without loading it."""
        return False

    def check(self) -> None:
        """Checks of the scenario against this task that load no data (`fedsim validate`
        runs them; a failure is a `ScenarioError` naming the field). None by default."""
        return None

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

    def initial_arrays(self) -> ArrayRecord:
        """The global model every run of this task and seed starts from."""
        from fedsim.core.codec import model_to_arrays
        from fedsim.core.seeding import int_seed

        torch.manual_seed(int_seed(self.seed, "initial-model"))
        return model_to_arrays(self.make_model())

    def model_with(self, arrays: ArrayRecord) -> torch.nn.Module:
        """This task's model holding `arrays`: one module per task instance, reused.

        A job overwrites every weight, so a fresh module per job (and its random init)
        is wasted work. The module is built with torch's random state forked, so the
        job's draws do not depend on which job came first on a worker. It is the
        caller's until the next call: take a copy to keep two models.
        """
        from fedsim.core.codec import arrays_to_model  # training imports this module

        model = self.__dict__.get("_reused_model")
        if model is None:
            with torch.random.fork_rng(devices=[]):
                model = self.__dict__["_reused_model"] = self.make_model()
        model = model.to(compute_device())  # the job's device (a no-op where it is already)
        for parameter in model.parameters():  # as fresh: no gradients, training mode
            parameter.grad = None
        return arrays_to_model(model.train(), arrays)

    @abstractmethod
    def train_data(self, partition_id: int) -> Dataset:
        """The training shard of one client."""

    @abstractmethod
    def test_data(self, partition_id: int | None = None) -> Dataset:
        """A client's held-out data, or the server's test set for `None`."""

    def validation_data(self) -> Dataset | None:
        """The server's validation set: `spec.validation_share` of the training data, held
        out before it is partitioned, so that "best" is selected (and hyper-parameters tuned)
        on it and the test set is only reported. None: this task holds none out (the default;
        problems defined by all their data, such as `quadratic` or `logreg`)."""
        return None

    def loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
        """Loss and accuracy of `model` on `data` (moved to the model's device)."""
        model.eval()
        device = next(model.parameters()).device
        x, y = data.x.to(device), data.y.to(device)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(dim=1) == y).float().mean().item()
        return {"loss": loss, "accuracy": accuracy}
