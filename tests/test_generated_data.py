"""Offline data that is real enough for the papers' effects: MNIST-1D and Synthetic(α, β);
the project's models by name."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from fedsim.core.errors import ScenarioError
from fedsim.engine.tasks import make_task
from fedsim.engine.tasks.models import build_model
from tests.conftest import BASE, scenario


def _synthetic(**params):
    data = copy.deepcopy(BASE)
    data["task"] = {"name": "leaf_synthetic", "params": params}
    data["clients"] = {"count": 8}
    return scenario(data)


def test_mnist1d_is_generated_offline_the_same_each_time_and_leaves_global_random_state():
    from fedsim.engine.tasks.mnist1d import generate

    generate.cache_clear()  # generated in this test, whatever ran before
    random.seed(5)
    np.random.seed(5)
    before = random.random(), np.random.random()
    random.seed(5)
    np.random.seed(5)
    task = make_task(scenario(task={"name": "mnist1d", "model": "cnn",
                                    "partition": {"kind": "dirichlet", "alpha": 0.1}}))
    x, y, x_test = task._arrays[:3]
    assert (random.random(), np.random.random()) == before  # the generator's seed(42) undone
    # of mnist1d's 4000 training samples, 10% (task.validation_share) are held out
    assert x.shape == (3600, 1, 40) and x_test.shape == (1000, 1, 40)
    assert len(task.validation_data()) == 400
    assert set(np.unique(y)) == set(range(10))
    assert sum(len(task.train_data(i)) + len(task.test_data(i)) for i in range(6)) == 3600
    assert task.make_model()(task.train_data(0).x).shape[1] == 10
    # Dirichlet 0.1: most of a client's samples are of one or two labels
    top = [np.bincount(task.train_data(i).y.numpy(), minlength=10) for i in range(6)]
    assert np.mean([np.sort(c)[-2:].sum() / c.sum() for c in top]) > 0.7


def test_synthetic_alpha_beta_is_deterministic_natural_and_beta_spreads_the_inputs():
    task = make_task(_synthetic(alpha=0.0, beta=0.0))
    again = make_task(_synthetic(alpha=0.0, beta=0.0))
    for k in range(8):
        train, test = task.train_data(k), task.test_data(k)
        assert torch.equal(train.x, again.train_data(k).x)
        assert 50 <= len(train) + len(test) <= 2000 and train.x.shape[1] == 60
    assert len(task.test_data()) == sum(len(task.test_data(k)) for k in range(8))

    def spread(beta: float) -> float:
        t = make_task(_synthetic(alpha=0.0, beta=beta))
        means = np.stack([t.train_data(k).x.numpy().mean(axis=0) for k in range(8)])
        return float(means.mean(axis=1).std())

    assert spread(10.0) > 3 * spread(0.0)
    with pytest.raises(ScenarioError, match=r"leave task\.partition out"):
        scenario(_synthetic().model_dump(mode="json"), task__partition={"kind": "dirichlet"})


@pytest.mark.parametrize(("name", "shape", "classes", "weights"), [
    ("fedavg_cnn", (1, 28, 28), 10, 1_663_370),  # the FedAvg paper's count for MNIST
    ("fedavg_cnn", (1, 28, 28), 62, 1_690_046), ("fedavg_cnn", (3, 32, 32), 10, 2_156_490),
    ("resnet18_gn", (3, 32, 32), 10, 11_173_962), ("char_lstm", (80,), 81, 820_185),
    ("mlp", (1, 40), 10, 50_410)])
def test_models_by_name_have_the_papers_shapes(name, shape, classes, weights):
    model = build_model(name, shape, classes)
    assert sum(p.numel() for p in model.parameters()) == weights
    x = torch.zeros(2, *shape, dtype=torch.int64 if name == "char_lstm" else torch.float32)
    assert model(x).shape == (2, classes)
    with pytest.raises(ScenarioError, match="needs images"):
        build_model("fedavg_cnn", (40,), 10)
