"""EF21 and its variants (arXiv 2106.05203, 2110.03294, 2402.10774) on SimGrid."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.core.codec import flatten
from fedsim.engine.tasks import make_task
from fedsim.runner import simulate
from strategies.compressors import Identity
from strategies.ef21 import EF21W, ef21_step
from tests.conftest import BASE, scenario
from tests.opaque_grid import OpaqueGrid, as_server_app, replying

TOP2 = {"name": "top_k", "k": 2}


def least_squares(strategy: str, rounds: int, init: str = "zeros",
                  **params: Any):
    """The check problem: n = 10 least-squares clients, d = 20, heterogeneous scales."""
    data = copy.deepcopy(BASE)
    data.update(task={"name": "least_squares", "params": {"init": init}}, clients={"count": 10},
                rounds=rounds, evaluation={"centralized_every": 1},
                strategy={"name": strategy, "params": params})
    return scenario(data)


def run(strategy: str, rounds: int, init: str = "zeros", **params: Any
        ) -> tuple[np.ndarray, list[dict]]:
    result = simulate(least_squares(strategy, rounds, init, **params))
    return flatten(result.arrays), result.records


def test_ef21_with_identity_compressor_is_gradient_descent() -> None:
    x, records = run("ef21", 20, compressor={"name": "identity"})
    task = make_task(least_squares("ef21", 20))
    _, L = task.smoothness()
    assert records[-1]["step_size"] == pytest.approx(1 / L)  # α = 1: γ = 1/L
    reference = np.zeros(20)
    for _ in range(20):
        gradient = np.zeros(20)
        for i in range(10):
            data = task.train_data(i)
            a, b = data.x.numpy(), data.y.numpy()
            gradient += a.T @ (a @ reference - b) / len(b) / 10
        reference = reference - gradient / L
    assert np.max(np.abs(x - reference)) < 1e-12


def test_ef21_w_equals_ef21_for_top_k_at_the_same_step() -> None:
    x_ef21, rec_ef21 = run("ef21", 30, compressor=TOP2, lr=0.005)
    x_w, rec_w = run("ef21_w", 30, compressor=TOP2, lr=0.005)
    assert np.max(np.abs(x_ef21 - x_w)) < 1e-12
    assert rec_ef21[-1]["grad_norm_sq"] == pytest.approx(rec_w[-1]["grad_norm_sq"], rel=1e-9)


def test_ef21_pp_with_full_participation_equals_ef21() -> None:
    x_ef21, _ = run("ef21", 20, compressor=TOP2, lr=0.005)
    x_pp, _ = run("ef21_pp", 20, compressor=TOP2, lr=0.005, participation=1.0)
    assert np.max(np.abs(x_ef21 - x_pp)) < 1e-12


def test_ef21_pp_updates_only_the_sampled_clients() -> None:
    _, records = run("ef21_pp", 4, compressor=TOP2, lr=0.005, participation=0.5)
    assert [r["replies"] for r in records[1:]] == [10, 5, 5, 5]  # round 1 sets every g_i
    assert records[2]["bytes_up"] * 2 == records[3]["bytes_up"] * 2 < records[1]["bytes_up"]


def test_theory_steps_use_the_quadratic_and_arithmetic_means() -> None:
    task = make_task(least_squares("ef21", 1))
    local, L = task.smoothness()
    assert np.mean(local) < np.sqrt(np.mean(local ** 2))  # L_AM < L_QM: heterogeneous
    _, ef21 = run("ef21", 1, compressor=TOP2)
    _, ef21_w = run("ef21_w", 1, compressor=TOP2)
    assert ef21[-1]["step_size"] == pytest.approx(
        ef21_step(0.1, float(np.sqrt(np.mean(local ** 2))), L))
    assert ef21_w[-1]["step_size"] == pytest.approx(ef21_step(0.1, float(np.mean(local)), L))
    assert ef21_w[-1]["step_size"] > ef21[-1]["step_size"]


def test_replies_carry_top_k_values_and_indices() -> None:
    _, records = run("ef21", 2, compressor=TOP2, lr=0.005)
    first, second = records[1], records[2]
    assert first["uplink_value_bits"] == 10 * 20 * 64  # uncompressed first messages
    assert first["uplink_index_bits"] == 0
    assert second["uplink_value_bits"] == 10 * 2 * 64
    assert second["uplink_index_bits"] == 10 * 2 * 5  # ⌈log2 20⌉ = 5 bits per index
    assert second["bytes_up"] == 10 * (2 * 8 + 2)  # two float64 values, 10 packed index bits


@pytest.mark.slow
def test_ef21_w_theory_step_reaches_a_lower_gradient_norm() -> None:
    _, ef21 = run("ef21", 60, compressor=TOP2)
    _, ef21_w = run("ef21_w", 60, compressor=TOP2)
    assert ef21_w[-1]["grad_norm_sq"] < 0.5 * ef21[-1]["grad_norm_sq"]
    assert ef21[-1]["grad_norm_sq"] < 0.5 * ef21[0]["grad_norm_sq"]


@pytest.mark.slow
def test_naive_top_k_without_error_feedback_is_worse_than_ef21() -> None:
    """Heterogeneous clients: C(γ∇f_i) does not average to 0 at x*, so naive Top-K stalls."""
    _, ef21 = run("ef21", 60, compressor=TOP2, step_factor=4.0)
    _, naive = run("ef14", 60, compressor=TOP2, step_factor=4.0, error_feedback=False)
    assert ef21[-1]["grad_norm_sq"] < 0.1 * naive[-1]["grad_norm_sq"]


def test_ef21_w_scales_and_weights_each_client_by_its_partition_with_opaque_ids(monkeypatch
                                                                               ) -> None:
    """s_i = 1/(n w_i) goes to the node holding partition i, and a_i = w_i weighs its reply."""
    as_server_app(monkeypatch)
    n, gamma = 5, 0.1
    local = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    w = local / local.sum()

    def answer(message: Message, partition: int) -> RecordDict:
        sent = Identity()(np.full(3, partition + 1.0), np.random.default_rng(0))
        return RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v))
                                   for k, v in sent.to_arrays().items()}),
            "metrics": MetricRecord({"num-examples": 1, "train_loss": 0.0,
                                     "value_bits": sent.value_bits(),
                                     "index_bits": sent.index_bits()})})

    grid = OpaqueGrid(n, replying(answer))
    strategy = EF21W(num_nodes=n, seed=0, lr=gamma, smoothness=(local, 20.0))
    start = ArrayRecord({"x": Array(np.zeros(3))})
    messages = list(strategy.configure_train(1, start, ConfigRecord(), grid))  # type: ignore[arg-type]
    assert [m.metadata.dst_node_id for m in messages] == grid.ids  # partition order
    assert [m.content["config"]["ef-scale"] for m in messages] == [
        pytest.approx(1 / (n * w[i])) for i in range(n)]
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    direction = sum(w[i] * (i + 1.0) for i in range(n))  # Σ a_i c_i, c_i = (i + 1)·1
    assert arrays is not None
    np.testing.assert_array_equal(flatten(arrays), np.full(3, -gamma * direction))
