"""Quadratic clients, F_i(x) = a_i/2 ||x - c_i||^2: the algorithms' sanity-check task.

Every sanity check on scalar problems (FedFix's fixed points, FedAU's weights,
FedSpeed's optimum, gossip consensus...) runs through the real strategy
classes on the simulator with this task. Gradients are exact (one "sample"
per client), so local SGD is gradient descent and results are deterministic.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.task import Dataset, Task, TaskParams


class QuadraticParams(TaskParams):
    centers: list[float] = Field(min_length=1, description="c_i, one per client")
    curvatures: list[float] | None = Field(default=None, description="a_i > 0, default 1")
    dim: int = Field(default=1, ge=1)
    init: float = 0.0

    @model_validator(mode="after")
    def _positive(self) -> QuadraticParams:
        if self.curvatures is not None and min(self.curvatures) <= 0:
            raise ValueError("curvatures must all be > 0")
        return self


class Point(nn.Module):
    """The model is the point x itself."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.full((dim,), init, dtype=torch.float64))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.x.expand(inputs.shape[0], -1)


class QuadraticTask(Task):
    name = "quadratic"
    summary = "clients F_i(x) = a_i/2 ||x - c_i||^2 with exact gradients (sanity checks)"
    models = ("point",)
    Params = QuadraticParams
    params: QuadraticParams

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        n = self.num_clients
        for key in ("centers", "curvatures"):
            values = getattr(self.params, key)
            if values is not None and len(values) != n:
                raise ScenarioError(f"task.params.{key}: {len(values)} values for {n} clients "
                                    "(give one per client)")
        self.centers = torch.tensor(self.params.centers, dtype=torch.float64)
        self.curvatures = torch.tensor(self.params.curvatures or [1.0] * n, dtype=torch.float64)

    def make_model(self) -> nn.Module:
        return Point(self.params.dim, self.params.init)

    def train_data(self, partition_id: int) -> Dataset:
        a, c = self.curvatures[partition_id], self.centers[partition_id]
        return Dataset(torch.stack([a, c]).reshape(1, 2), torch.zeros(1))

    def test_data(self, partition_id: int | None = None) -> Dataset:
        if partition_id is not None:
            return self.train_data(partition_id)
        return Dataset(torch.stack([self.curvatures, self.centers], dim=1),
                       torch.zeros(self.num_clients))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, c = x[:, :1], x[:, 1:]
        return (0.5 * a * (model(x) - c) ** 2).sum(dim=1).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Objective value, and distance to the minimiser sum(a c)/sum(a) of `data`."""
        a, c = data.x[:, :1], data.x[:, 1:]
        optimum = (a * c).sum(dim=0) / a.sum()
        return {"loss": self.loss(model, data.x, data.y).item(),
                "distance": (model.x - optimum).norm().item()}


TASKS = (QuadraticTask,)
