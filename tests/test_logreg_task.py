"""The smooth finite-sum tasks: nonconvex logistic regression (+ LIBSVM loader), least squares."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from fedsim.engine.tasks import make_task
from fedsim.engine.tasks.logreg import contiguous_chunks, load_libsvm
from tests.conftest import BASE, scenario


def task_of(name: str, clients: int = 4, **params: object):
    data = copy.deepcopy(BASE)
    data.update(task={"name": name, "params": params}, clients={"count": clients})
    return make_task(scenario(data))


def numpy_logreg_gradient(a: np.ndarray, b: np.ndarray, x: np.ndarray, lam: float) -> np.ndarray:
    margins = -b * (a @ x)
    return a.T @ (-b / (1 + np.exp(-margins))) / len(b) + lam * 2 * x / (1 + x ** 2) ** 2


def test_contiguous_chunks_give_the_remainder_to_the_last_client() -> None:
    chunks = contiguous_chunks(10, 3)
    assert [c.tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_logreg_reports_the_gradient_norm_of_the_mean_of_the_local_objectives() -> None:
    task = task_of("logreg", clients=3)
    torch.manual_seed(0)
    model = task.make_model()
    x = model.x.detach().numpy()
    local = [task.train_data(i) for i in range(3)]
    gradient = np.mean([numpy_logreg_gradient(d.x.numpy(), d.y.numpy(), x, 0.1) for d in local],
                       axis=0)
    metrics = task.evaluate(model, task.test_data(None))
    assert np.isclose(metrics["grad_norm_sq"], gradient @ gradient, rtol=1e-10)
    assert {"loss", "accuracy"} <= set(metrics)


def test_logreg_smoothness_constants_follow_the_ef21_formula() -> None:
    task = task_of("logreg", clients=3, dataset="digits_binary")
    local, L = task.smoothness()
    a0 = task.train_data(0).x.numpy()
    assert np.isclose(local[0], np.linalg.eigvalsh(a0.T @ a0 / (4 * len(a0)))[-1] + 0.2)
    assert np.mean(local) + 1e-12 >= L  # λ_max is convex: L ≤ L_AM


def test_libsvm_loader_reads_sparse_rows_and_maps_labels(tmp_path: Path) -> None:
    path = tmp_path / "tiny.libsvm"
    path.write_text("+1 1:0.5 3:2\n-1 2:1\n# comment\n+1 3:-1 1:1\n-1\n")
    features, labels = load_libsvm(path)
    assert features.tolist() == [[0.5, 0, 2], [0, 1, 0], [1, 0, -1], [0, 0, 0]]
    assert labels.tolist() == [1, -1, 1, -1]
    task = task_of("logreg", clients=2, dataset="libsvm", path=str(path), standardize=False)
    assert len(task.train_data(0)) == 2 and task.smoothness()[0].shape == (2,)


def test_least_squares_optimum_has_zero_gradient_and_heterogeneous_smoothness() -> None:
    task = task_of("least_squares", clients=10, init="optimum")
    model = task.make_model()
    metrics = task.evaluate(model, task.test_data(None))
    assert metrics["grad_norm_sq"] < 1e-20 and metrics["dist_sq"] == 0.0
    local, _ = task.smoothness()
    assert local.max() / local.min() > 10
