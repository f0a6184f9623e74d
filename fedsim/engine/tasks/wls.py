"""Weighted least squares over K clients: the noise-robust ADMM task.

Lari, Arablouei, Gogineni, Werner, arXiv 2409.13451 (see `strategies.admm`).

Client k holds X_k (N_k × L), y_k and positive sample weights W_k = diag(ω_k). The
global problem min_w Σ_k ‖y_k − X_k w‖²_{W_k} has the closed form

    w* = (Σ_k R_k)⁻¹ Σ_k r_k,   R_k = X_kᵀ W_k X_k,  r_k = X_kᵀ W_k y_k,

so a run's error is the MSD in dB, 10 log10(‖w − w*‖² / ‖w*‖²). The data are our
choice, not the paper's (its sizes and noise levels could not be read): X_k entries
N(0, s_k²) with s_k ~ U(0.5, 1.5), ω ~ U(0.5, 1.5), y = X w° + N(0, noise_var).
Algorithms that solve locally in closed form get (R_k, r_k) from `local_problem`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsim.core.seeding import rng
from fedsim.core.task import Dataset, Task, TaskParams


class WlsParams(TaskParams):
    dim: int = Field(default=8, ge=1, description="L, the model dimension")
    samples_per_client: int = Field(default=20, ge=1, description="N_k")
    noise_var: float = Field(default=0.01, ge=0, description="variance of the label noise")
    scale_low: float = Field(default=0.5, gt=0, description="s_k ~ U(scale_low, scale_high)")
    scale_high: float = Field(default=1.5, gt=0)
    weight_low: float = Field(default=0.5, gt=0, description="ω ~ U(weight_low, weight_high)")
    weight_high: float = Field(default=1.5, gt=0)


class Vector(nn.Module):
    """The model is the vector w itself (float64)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs @ self.w


def msd_db(w: np.ndarray, reference: np.ndarray) -> float:
    """10 log10(‖w − ref‖² / ‖ref‖²)."""
    error = float(np.sum((w - reference) ** 2))
    return 10 * np.log10(max(error, 1e-300) / float(np.sum(reference ** 2)))


class WlsTask(Task):
    name = "wls"
    summary = "weighted least squares with a closed-form optimum (ADMM FL; metric MSD in dB)"
    models = ("vector",)
    Params = WlsParams
    params: WlsParams

    def make_model(self) -> nn.Module:
        return Vector(self.params.dim)

    @functools.cached_property
    def true_model(self) -> np.ndarray:
        """w°, the model that generated the labels."""
        return rng(self.seed, "wls-true-model").standard_normal(self.params.dim)

    @functools.cache  # noqa: B019  (the task lives as long as the run)
    def client_data(self, partition_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X_k, y_k, ω_k) of one client, drawn from its own keyed stream."""
        p = self.params
        gen = rng(self.seed, "wls-client", partition_id)
        scale = gen.uniform(p.scale_low, p.scale_high)
        x = gen.standard_normal((p.samples_per_client, p.dim)) * scale
        weights = gen.uniform(p.weight_low, p.weight_high, p.samples_per_client)
        y = x @ self.true_model + gen.standard_normal(p.samples_per_client) * np.sqrt(p.noise_var)
        return x, y, weights

    def local_problem(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(R_k, r_k) = (X_kᵀW_kX_k, X_kᵀW_ky_k)."""
        x, y, weights = self.client_data(partition_id)
        return x.T @ (weights[:, None] * x), x.T @ (weights * y)

    @functools.cached_property
    def closed_form(self) -> np.ndarray:
        """w* = (Σ R_k)⁻¹ Σ r_k."""
        problems = [self.local_problem(k) for k in range(self.num_clients)]
        return np.linalg.solve(sum(R for R, _ in problems), sum(r for _, r in problems))

    def train_data(self, partition_id: int) -> Dataset:
        """Inputs are [X_k | ω_k] (the weight rides along as a last column)."""
        x, y, weights = self.client_data(partition_id)
        return Dataset(torch.from_numpy(np.column_stack([x, weights])), torch.from_numpy(y))

    def test_data(self, partition_id: int | None = None) -> Dataset:
        if partition_id is not None:
            return self.train_data(partition_id)
        parts = [self.train_data(k) for k in range(self.num_clients)]
        return Dataset(torch.cat([d.x for d in parts]), torch.cat([d.y for d in parts]))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean weighted squared error (Σ_k J_k divided by the number of samples)."""
        return (x[:, -1] * (y - model(x[:, :-1])) ** 2).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset) -> dict[str, float]:
        """Loss, MSD (dB) against the WLS closed form w* and against the true model w°."""
        w = model.w.detach().numpy()
        return {"loss": self.loss(model, data.x, data.y).item(),
                "msd_db": msd_db(w, self.closed_form),
                "msd_true_db": msd_db(w, self.true_model)}


TASKS = (WlsTask,)
