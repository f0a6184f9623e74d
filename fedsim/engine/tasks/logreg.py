"""Smooth finite-sum tasks for gradient methods: nonconvex logistic regression, least squares.

The model is the parameter vector x itself (float64). Client i owns f_i(x), the mean loss over
its shard, and the objective is f(x) = (1/n) Σ_i f_i(x), as in the EF21 experiments
(Richtárik, Sokolov, Fatkhullin, NeurIPS 2021, arXiv 2106.05203; code
``IgorSokoloff/ef21_experiments_source_code``, whose regulariser, L_i bound and x⁰ we use).
Each task knows its smoothness constants L_i and L, so error-feedback strategies can use the
theory step sizes, and its central evaluation reports the objective and ‖∇f(x)‖² exactly:
the server's "test set" is the pooled training data weighted 1/(n m_i) per sample, so its
weighted mean loss is f.

- ``logreg``: f_i(x) = (1/m_i) Σ_j log(1 + exp(−b_j a_jᵀx)) + λ Σ_k x_k²/(1 + x_k²), λ = 0.1,
  L_i = λ_max(A_iᵀA_i/(4 m_i)) + 2λ. Data: scikit-learn's breast_cancer or digits (digit < 5
  vs ≥ 5), features standardised, or a LIBSVM file (a9a, w8a...) by path. x⁰ ~ N(0, I).
- ``least_squares``: f_i(x) = 1/(2 m_i) ‖A_i x − b_i‖², A_i with client-specific scales (the
  heterogeneous-L_i problem on which EF21, EF21-W and EControl are checked),
  L_i = λ_max(A_iᵀA_i/m_i). Reports ‖x − x*‖².
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.seeding import rng
from fedsim.core.task import Dataset, Task, TaskParams
from fedsim.engine.tasks.partition import partition_indices


@dataclass(frozen=True)
class WeightedDataset(Dataset):
    """A dataset whose samples carry weights (summing to 1): the weighted mean loss is f."""

    weight: torch.Tensor | None = None


class Vector(nn.Module):
    """The model is x; forward gives the margins A x."""

    def __init__(self, dim: int, init_std: float) -> None:
        super().__init__()
        self.x = nn.Parameter(init_std * torch.randn(dim, dtype=torch.float64))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ self.x


def contiguous_chunks(num_samples: int, n: int) -> list[np.ndarray]:
    """Equal contiguous chunks of ⌊m/n⌋ samples; the last client takes the remainder (EF21 code)."""
    size = num_samples // n
    if size == 0:
        raise ScenarioError(f"clients.count: {n} clients for {num_samples} samples")
    return [np.arange(i * size, num_samples if i == n - 1 else (i + 1) * size) for i in range(n)]


def load_libsvm(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A LIBSVM file ("label idx:value ...", 1-based indices) as dense (A, b) with b ∈ {−1, +1}."""
    rows: list[dict[int, float]] = []
    labels: list[float] = []
    for line in Path(path).read_text().splitlines():
        parts = line.split("#", 1)[0].split()
        if not parts:
            continue
        labels.append(float(parts[0]))
        rows.append({int(k) - 1: float(v) for k, v in (p.split(":", 1) for p in parts[1:])})
    dim = 1 + max((max(r) for r in rows if r), default=-1)
    features = np.zeros((len(rows), dim))
    for i, row in enumerate(rows):
        for k, v in row.items():
            features[i, k] = v
    values = np.array(labels)
    low, high = values.min(), values.max()
    return features, np.where(values == high, 1.0, -1.0) if low != high else np.ones_like(values)


class _FiniteSum(Task):
    """Shared part: shards, the weighted server set, ‖∇f‖², smoothness constants."""

    models = ("vector",)
    init_std: float = 1.0
    shared = ("_arrays", "shards")  # workers import neither scikit-learn nor `datasets`

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _local_smoothness(self, features: np.ndarray) -> float:
        raise NotImplementedError

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._data()

    @functools.cached_property
    def shards(self) -> list[np.ndarray]:
        labels = self._arrays[1]
        if getattr(self.params, "split", "contiguous") == "contiguous":
            return contiguous_chunks(len(labels), self.num_clients)
        classes = (labels > 0).astype(np.int64)
        return partition_indices(classes, self.spec.partition, self.num_clients, self.seed)

    def make_model(self) -> nn.Module:
        return Vector(self._arrays[0].shape[1], self.init_std)

    def _dataset(self, index: np.ndarray) -> Dataset:
        features, labels = self._arrays
        return Dataset(torch.from_numpy(features[index]), torch.from_numpy(labels[index]))

    def train_data(self, partition_id: int) -> Dataset:
        return self._dataset(self.shards[partition_id])

    def test_data(self, partition_id: int | None = None) -> Dataset:
        if partition_id is not None:
            return self.train_data(partition_id)
        features, labels = self._arrays
        index = np.concatenate(self.shards)
        weight = np.concatenate([np.full(len(s), 1 / (len(s) * len(self.shards)))
                                 for s in self.shards])
        return WeightedDataset(torch.from_numpy(features[index]), torch.from_numpy(labels[index]),
                               torch.from_numpy(weight))

    def smoothness(self) -> tuple[np.ndarray, float]:
        """(L_i per client, L of f): bounds on the largest Hessian eigenvalue."""
        features, _ = self._arrays
        local = np.array([self._local_smoothness(features[s]) for s in self.shards])
        pooled = np.concatenate([features[s] / np.sqrt(len(s) * len(self.shards))
                                 for s in self.shards])
        return local, self._local_smoothness(pooled * np.sqrt(len(pooled)))

    def _sample_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                       ) -> torch.Tensor:
        raise NotImplementedError

    def _regulariser(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros((), dtype=torch.float64)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._sample_losses(model, x, y).mean() + self._regulariser(model)

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """f (or f_i) and ‖∇f‖² exactly (weighted samples on the server's set)."""
        weight = getattr(data, "weight", None)
        if weight is None:
            weight = torch.full((len(data),), 1 / len(data), dtype=torch.float64)
        model.zero_grad()
        objective = (weight * self._sample_losses(model, data.x, data.y)).sum()
        objective = objective + self._regulariser(model)
        (grad,) = torch.autograd.grad(objective, [model.x])
        return {"loss": objective.item(), "grad_norm_sq": float((grad ** 2).sum())}


class LogisticRegressionParams(TaskParams):
    dataset: Literal["breast_cancer", "digits_binary", "libsvm"] = "breast_cancer"
    path: str | None = Field(default=None, description="LIBSVM file, for dataset=libsvm")
    lam: float = Field(default=0.1, ge=0, description="λ of the nonconvex regulariser")
    split: Literal["contiguous", "scenario"] = "contiguous"
    standardize: bool = True


class LogisticRegressionTask(_FiniteSum):
    name = "logreg"
    summary = "logistic regression + λΣx²/(1+x²) (EF21's nonconvex problem), exact gradients"
    Params = LogisticRegressionParams
    params: LogisticRegressionParams

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        if p.dataset == "libsvm":
            if p.path is None:
                raise ScenarioError("task.params.path: give the LIBSVM file for dataset=libsvm")
            features, labels = load_libsvm(p.path)
        elif p.dataset == "breast_cancer":
            from sklearn.datasets import load_breast_cancer

            features, raw = load_breast_cancer(return_X_y=True)
            labels = np.where(raw == 1, 1.0, -1.0)
        else:
            from sklearn.datasets import load_digits

            features, raw = load_digits(return_X_y=True)
            labels = np.where(raw >= 5, 1.0, -1.0)
        features = features.astype(np.float64)
        if p.standardize:
            std = features.std(axis=0)
            features = (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)
        return features, labels.astype(np.float64)

    def _local_smoothness(self, features: np.ndarray) -> float:
        gram = features.T @ features / (4 * len(features))
        return float(np.linalg.eigvalsh(gram)[-1]) + 2 * self.params.lam

    def _sample_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                       ) -> torch.Tensor:
        return nn.functional.softplus(-y * model(x))

    def _regulariser(self, model: nn.Module) -> torch.Tensor:
        squares = model.x ** 2
        return self.params.lam * (squares / (1 + squares)).sum()

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        metrics = super().evaluate(model, data)
        with torch.no_grad():
            metrics["accuracy"] = float(((model(data.x) > 0) == (data.y > 0)).double().mean())
        return metrics


class LeastSquaresParams(TaskParams):
    dim: int = Field(default=20, ge=1)
    samples_per_client: int = Field(default=30, ge=1)
    scales: list[float] | None = Field(
        default=None, description="row scale of A_i per client; default geometric 0.3..3")
    heterogeneity: float = Field(default=1.0, ge=0, description="spread of the local optima")
    noise: float = Field(default=0.1, ge=0, description="label noise std")
    init: Literal["zeros", "optimum"] = Field(
        default="zeros", description="x⁰; 'optimum' starts at x* (to measure noise floors fast)")


class LeastSquaresTask(_FiniteSum):
    name = "least_squares"
    summary = "f_i = ||A_i x - b_i||^2/(2 m_i), heterogeneous scales (EF21/EControl checks)"
    Params = LeastSquaresParams
    params: LeastSquaresParams
    init_std = 0.0

    def _scales(self) -> np.ndarray:
        n = self.num_clients
        if self.params.scales is None:
            return np.geomspace(0.3, 3.0, n)
        if len(self.params.scales) != n:
            raise ScenarioError(f"task.params.scales: {len(self.params.scales)} values for {n} "
                                "clients (give one per client)")
        return np.array(self.params.scales)

    def _data(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        generator = rng(self.seed, "least-squares")
        center = generator.standard_normal(p.dim)
        blocks, targets = [], []
        for scale in self._scales():
            a = scale * generator.standard_normal((p.samples_per_client, p.dim))
            local_opt = center + p.heterogeneity * generator.standard_normal(p.dim)
            blocks.append(a)
            targets.append(a @ local_opt + p.noise * generator.standard_normal(len(a)))
        return np.concatenate(blocks), np.concatenate(targets)

    @functools.cached_property
    def shards(self) -> list[np.ndarray]:
        m = self.params.samples_per_client
        return [np.arange(i * m, (i + 1) * m) for i in range(self.num_clients)]

    def _local_smoothness(self, features: np.ndarray) -> float:
        return float(np.linalg.eigvalsh(features.T @ features / len(features))[-1])

    def make_model(self) -> nn.Module:
        model = super().make_model()
        if self.params.init == "optimum":
            with torch.no_grad():
                model.x.copy_(torch.from_numpy(self.optimum))
        return model

    @functools.cached_property
    def optimum(self) -> np.ndarray:
        """x* = argmin f (weighted normal equations)."""
        data = self.test_data(None)
        a, b, w = data.x.numpy(), data.y.numpy(), data.weight.numpy()  # type: ignore[attr-defined]
        return np.linalg.solve(a.T @ (w[:, None] * a), a.T @ (w * b))

    def _sample_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                       ) -> torch.Tensor:
        return 0.5 * (model(x) - y) ** 2

    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        metrics = super().evaluate(model, data)
        if getattr(data, "weight", None) is not None:
            gap = model.x.detach().numpy() - self.optimum
            metrics["dist_sq"] = float(gap @ gap)
        return metrics


TASKS = (LogisticRegressionTask, LeastSquaresTask)
