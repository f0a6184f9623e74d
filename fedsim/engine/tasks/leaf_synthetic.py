"""Synthetic(α, β), the federated classification data of FedProx (Li et al., "Federated
Optimization in Heterogeneous Networks", arXiv:1812.06127) and LEAF (arXiv:1812.01097).

Client k has its own softmax model and its own input distribution:
u_k ~ N(0, α²), W_k ~ N(u_k, 1) (dim x classes), b_k ~ N(u_k, 1); B_k ~ N(0, β²),
v_k ~ N(B_k, 1) (dim), x ~ N(v_k, Σ) with Σ_jj = j^-1.2, and y = argmax(x W_k + b_k).
α sets how much the clients' models differ, β how much their inputs do; Synthetic(0, 0)
is the mildest. Sizes follow LEAF's generator: floor(lognormal(4, 2)) + 50 samples, capped
at `max_samples`. As in LEAF's code, α and β are standard deviations.

Each client's data is drawn from its own stream (`rng(seed, "leaf-synthetic", k)`), on
demand: the partition is natural, so `task.partition` is left out. A client's last
`test_fraction` is its held-out data; the server tests on the union of them.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import PartitionSpec
from fedsim.core.seeding import rng
from fedsim.core.task import Dataset, Task, TaskParams
from fedsim.engine.tasks.models import logreg, mlp


class LeafSyntheticParams(TaskParams):
    alpha: float = Field(default=1.0, ge=0, description="spread of the clients' models")
    beta: float = Field(default=1.0, ge=0, description="spread of the clients' inputs")
    dim: int = Field(default=60, ge=1)
    num_classes: int = Field(default=10, ge=2)
    max_samples: int = Field(default=2000, ge=50, description="cap on a client's samples")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="held out per client")


class LeafSyntheticTask(Task):
    name = "leaf_synthetic"
    summary = "FedProx/LEAF Synthetic(alpha, beta): one softmax model per client (logreg | mlp)"
    models = ("logreg", "mlp")
    Params = LeafSyntheticParams
    params: LeafSyntheticParams

    def check(self) -> None:
        if self.spec.partition != PartitionSpec():
            raise ScenarioError("task.partition: leaf_synthetic draws each client's own data "
                                "(a natural partition); leave task.partition out")

    def make_model(self) -> nn.Module:
        build = mlp if self.model_name == "mlp" else logreg
        return build((self.params.dim,), self.params.num_classes)

    @functools.lru_cache(maxsize=64)  # noqa: B019  (one task per run; a few clients at a time)
    def _client(self, k: int) -> tuple[Dataset, Dataset]:
        p = self.params
        gen = rng(self.seed, "leaf-synthetic", k)
        size = min(int(gen.lognormal(4, 2)) + 50, p.max_samples)
        u, shift = gen.normal(0, p.alpha), gen.normal(0, p.beta)
        weights = gen.normal(u, 1, (p.dim, p.num_classes))
        bias = gen.normal(u, 1, p.num_classes)
        mean = gen.normal(shift, 1, p.dim)
        std = np.arange(1, p.dim + 1) ** -0.6  # Σ_jj = j^-1.2
        x = (mean + std * gen.standard_normal((size, p.dim))).astype(np.float32)
        y = np.argmax(x @ weights + bias, axis=1)
        n_test = max(1, round(p.test_fraction * size))
        parts = (x[:-n_test], y[:-n_test]), (x[-n_test:], y[-n_test:])
        train, test = (Dataset(torch.from_numpy(a), torch.from_numpy(b)) for a, b in parts)
        return train, test

    def train_data(self, partition_id: int) -> Dataset:
        return self._client(partition_id)[0]

    @functools.cached_property
    def _server_test(self) -> Dataset:
        tests = [self._client(k)[1] for k in range(self.num_clients)]
        return Dataset(torch.cat([t.x for t in tests]), torch.cat([t.y for t in tests]))

    def test_data(self, partition_id: int | None = None) -> Dataset:
        return self._server_test if partition_id is None else self._client(partition_id)[1]


TASKS = (LeafSyntheticTask,)
