"""Vectorised client groups (`backend.vectorize`): the same models as one client at a time,
the same bits whatever the workers, and refused where a group cannot train as its clients
would."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedsim.checks import check_run
from fedsim.core import vectorize
from fedsim.core.codec import flatten
from fedsim.core.errors import ScenarioError
from fedsim.core.vectorize import train_group, unsupported_layer
from fedsim.engine import pool
from fedsim.engine.placement import ActorGroup
from fedsim.engine.tasks import models
from fedsim.engine.tasks.digits import DigitsTask
from fedsim.runner import simulate
from tests.conftest import scenario

# 8 clients of unequal size (Dirichlet), 6 a round: groups of 4 and 2; batches of 16 leave
# short last batches and clients with fewer steps than others, so padding and masking show
LOGREG: dict[str, Any] = {
    "name": "vectorize", "seed": 3, "rounds": 5,
    "task": {"name": "digits", "model": "logreg",
             "partition": {"kind": "dirichlet", "alpha": 0.5}},
    "training": {"lr": 0.05, "local_epochs": 2, "batch_size": 16, "momentum": 0.9,
                 "weight_decay": 1e-3},
    "clients": {"count": 8},
    "strategy": {"name": "fedavg", "params": {"fraction_train": 0.75, "fraction_evaluate": 0.0}},
    "evaluation": {"centralized_every": 0, "federated_every": 0},
    "backend": {"kind": "inline"},
}
CNN: dict[str, Any] = {
    **LOGREG,
    "task": {"name": "synthetic_images", "model": "fedavg_cnn",
             "params": {"num_samples": 30, "num_test_samples": 4, "server_test_samples": 8,
                        "image_shape": [3, 8, 8]}},
    "training": {"lr": 0.05, "local_epochs": 1, "batch_size": 8, "momentum": 0.5},
    "clients": {"count": 5},
    "strategy": {"name": "fedavg", "params": {"fraction_train": 1.0, "fraction_evaluate": 0.0}},
}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _run(base: dict[str, Any], **overrides: Any) -> Any:
    return simulate(scenario(base, **overrides))


def _without_wall_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


def test_logreg_group_is_the_per_client_path_within_1e6(monkeypatch):
    per_client = _run(LOGREG)
    sizes: list[int] = []

    def spy(task: Any, jobs: Any) -> Any:
        sizes.append(len(jobs))
        return train_group(task, jobs)

    monkeypatch.setattr(vectorize, "train_group", spy)
    vectorised = _run(LOGREG, backend__vectorize=4)
    assert sizes == [4, 2] * 5  # 6 clients a round in groups of 4 and 2: it did run grouped
    assert _relative(flatten(vectorised.arrays), flatten(per_client.arrays)) <= 1e-6
    losses = [r["train_loss"] for r in per_client.records[1:]]
    np.testing.assert_allclose([r["train_loss"] for r in vectorised.records[1:]], losses,
                               rtol=1e-5)
    # virtual time comes from each client's reported work: the same clock
    assert ([r["virtual_time_s"] for r in vectorised.records]
            == [r["virtual_time_s"] for r in per_client.records])


def test_fedprox_group_keeps_the_proximal_term():
    fedprox = {**LOGREG, "strategy": {"name": "fedprox", "params": {
        "proximal_mu": 1.0, "fraction_train": 0.75, "fraction_evaluate": 0.0}}}
    per_client = _run(fedprox)
    vectorised = _run(fedprox, backend__vectorize=4)
    assert _relative(flatten(vectorised.arrays), flatten(per_client.arrays)) <= 1e-6
    # and the term matters: without it the model is another one
    plain = _run(LOGREG, backend__vectorize=4)
    assert _relative(flatten(plain.arrays), flatten(vectorised.arrays)) > 1e-3


def test_cnn_group_is_the_per_client_path_within_1e4():
    per_client = _run(CNN)
    vectorised = _run(CNN, backend__vectorize=3)  # groups of 3 and 2
    assert _relative(flatten(vectorised.arrays), flatten(per_client.arrays)) <= 1e-4


def test_groups_are_the_scenarios_whatever_the_workers():
    """G consecutive train jobs in push order form a group, on one worker, for any number of
    workers."""
    jobs = [pool.Job(node_id=100 + i, partition_id=i, message_type="train", message_id=str(i),
                     group_id="1", content_index=0, seed=i) for i in range(7)]
    for workers in (1, 2, 5):
        batches = pool._Groups([ActorGroup(workers)], vectorize=3).split(jobs, {})
        placed = {job.message_id: (job.together, w) for w, b in batches.items() for job in b}
        assert [placed[str(i)][0] for i in range(7)] == [0, 0, 0, 1, 1, 1, 2]
        for group in range(3):
            assert len({w for together, w in placed.values() if together == group}) == 1


def test_vectorised_runs_are_bit_identical_across_workers_and_backends(ray_cluster):
    """The CNN: a batched convolution's bits depend on the group it computes (groups fixed
    by the number of workers make this fail; logreg's would not show it)."""
    one = _run(CNN, backend__vectorize=3)
    three = _run(CNN, backend={"kind": "inline", "num_actors": 3, "vectorize": 3})
    on_ray = _run(CNN, backend={"kind": "ray", "num_actors": 2, "vectorize": 3})
    for other in (three, on_ray):
        np.testing.assert_array_equal(flatten(other.arrays), flatten(one.arrays))
        assert _without_wall_time(other.records) == _without_wall_time(one.records)


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"strategy": {"name": "fedspeed"}}, "strategy 'fedspeed' trains with client halves"),
    ({"task": {"name": "quadratic", "params": {"centers": [0.0, 1.0]}},
      "clients": {"count": 2}}, "task 'quadratic' has a loss of its own"),
    ({"client_mods": {"train": ["flwr.clientapp.mod:fixedclipping_mod"]}},
     "client_mods.train wraps each client's train message"),
])
def test_what_a_group_cannot_train_is_refused(overrides, expected):
    data = {**LOGREG, **overrides, "backend": {"kind": "inline", "vectorize": 2}}
    with pytest.raises(ScenarioError, match="^backend.vectorize: " + expected):
        check_run(scenario(data))


def test_a_model_with_dropout_is_refused(monkeypatch):
    def with_dropout(self: DigitsTask) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                   torch.nn.Linear(64, 10))

    monkeypatch.setattr(DigitsTask, "make_model", with_dropout)
    data = {**LOGREG, "backend": {"kind": "inline", "vectorize": 2}}
    with pytest.raises(ScenarioError, match=r"^backend.vectorize: task.model 'logreg' has "
                                            r"layer 1 \(Dropout\)"):
        check_run(scenario(data))
    check_run(scenario(data, backend__vectorize=0))  # one client at a time: fine


def test_unsupported_layers_are_found_anywhere_in_the_model():
    assert unsupported_layer(models.build_model("fedavg_cnn", (3, 8, 8), 10)) is None
    nested = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3),
                                                     torch.nn.BatchNorm2d(2)))
    assert unsupported_layer(nested) == "0.1 (BatchNorm2d)"
    assert unsupported_layer(torch.nn.LSTM(2, 2)) == "model (LSTM)"
