"""FedFix-Δt, asynchronous FedAvg, FedBuff on the 3-client scalar problem.

The checks of Fraboni et al., "A General Theory for Federated Optimization with Asynchronous
and Heterogeneous Clients Updates", JMLR 2023 (arXiv 2206.10189), on a toy problem:

Clients F_i(θ) = ½(θ − c_i)², c = (0, 1, 2) (true optimum 1.0), job times τ = (1.0, 0.6, 0.2)
virtual seconds (device speed 1/τ_i samples/s, one sample per local step, ideal links),
K = 1, η_l = 0.01, η_g = 1, θ0 = 0. Fixed points are the time-weighted mean of θ over the
last quarter of the virtual-time budget T, the smallest budget where the scheme has converged
(time constants: Async ≈ 13 s, FedFix-0.5 weight ≈ 50 s, FL ≈ 100 s), since every server step
is a real simulated client job.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.core.codec import flatten
from fedsim.core.training import TrainConfig
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.tasks import make_task
from fedsim.engine.tasks.quadratic import QuadraticTask
from fedsim.runner import simulate
from strategies import BuildContext, build_strategy
from strategies.fedfix import MESSAGE_TYPE, FedFix, train_fedfix
from tests.conftest import quadratic
from tests.opaque_grid import OpaqueGrid, as_server_app

CENTERS = [0.0, 1.0, 2.0]
TAUS = (1.0, 0.6, 0.2)
TRAINING = {"lr": 0.01, "local_steps": 1, "batch_size": 1}


@pytest.fixture(autouse=True)
def record_theta(monkeypatch):
    """Central evaluation also reports θ itself (the quadratic task reports only |θ − 1|)."""
    evaluate = QuadraticTask.evaluate

    def with_theta(self, model, data):
        return {**evaluate(self, model, data), "theta": float(model.x.detach()[0])}

    monkeypatch.setattr(QuadraticTask, "evaluate", with_theta)


def _scenario(strategy: str, params: dict, taus=TAUS, rounds: int = 100_000):
    """Three single-device tiers whose speeds give partition i the job time taus[i]."""
    probe = quadratic(CENTERS, clients={"count": 3, "devices": [
        {"name": f"t{t}", "share": 1} for t in range(3)]})
    tier_of = list(DevicePopulation(probe.clients, probe.seed).tier_of)  # shuffled by seed
    tiers = [{"name": f"t{t}", "share": 1, "speed": 1.0 / taus[tier_of.index(t)]}
             for t in range(3)]
    return quadratic(CENTERS, rounds=rounds, training=TRAINING,
                     clients={"count": 3, "devices": tiers},
                     strategy={"name": strategy, "params": params})


def _stationary(strategy: str, budget_s: float, **params) -> float:
    """Time-weighted mean of θ over the last quarter of [0, budget_s]."""
    records = simulate(_scenario(strategy, {**params, "time_budget_s": budget_s})).records
    return _time_average(records, budget_s)


def _time_average(records: list[dict], budget_s: float) -> float:
    t = np.array([r["virtual_time_s"] for r in records])
    theta = np.array([r["theta"] for r in records])
    ends = np.minimum(np.append(t[1:], budget_s), budget_s)
    held = np.clip(ends - np.maximum(t, 0.75 * budget_s), 0, None)
    return float((held * theta).sum() / held.sum())


def test_job_times_come_from_the_devices():
    strategy = build_strategy(_scenario("fedfix", {}), _context(_scenario("fedfix", {})))
    np.testing.assert_allclose(strategy.expected_job_times, TAUS)


def _context(s):
    return BuildContext(s, s.clients.count, make_task(s), DevicePopulation(s.clients, s.seed))


def test_fedfix_weight_scales_by_ceil_tau_over_period_and_without_it_is_the_biased_weight():
    s = _scenario("fedfix", {"period_s": 0.5})
    with_ceil = build_strategy(s, _context(s))
    with_ceil._num_nodes = 3
    assert [with_ceil.design_weight(i) for i in range(3)] == pytest.approx([2 / 3, 2 / 3, 1 / 3])
    s = _scenario("fedfix", {"period_s": 0.5, "ceil_factor": False})
    without = build_strategy(s, _context(s))
    without._num_nodes = 3
    assert [without.design_weight(i) for i in range(3)] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(("period_s", "staleness"), [(0.5, 1), (0.2, 4)])
def test_fedfix_slowest_client_is_ceil_tau_over_period_minus_one_versions_stale(period_s,
                                                                                 staleness):
    records = simulate(_scenario("fedfix", {"period_s": period_s}, rounds=30)).records
    # client 0 (τ = 1) is the stalest; it contributes every ⌈1/Δt⌉ ticks
    maxima = [r["staleness_max"] for r in records[1:] if r["clients"] > 0]
    assert max(maxima) == staleness
    with_client0 = [r["round"] for r in records[1:] if r.get("staleness_max") == staleness]
    assert np.all(np.diff(with_client0) == round(1 / period_s))


def test_fedfix_with_equal_speeds_and_period_one_is_synchronous_fedavg_step_for_step():
    taus = (1.0, 1.0, 1.0)
    fedfix = simulate(_scenario("fedfix", {"period_s": 1.0}, taus=taus, rounds=25)).records
    fedavg = simulate(_scenario("fedavg", {"fraction_evaluate": 0.0}, taus=taus,
                                rounds=25)).records
    np.testing.assert_allclose([r["theta"] for r in fedfix], [r["theta"] for r in fedavg],
                               rtol=1e-12, atol=1e-15)
    assert [r["virtual_time_s"] for r in fedfix] == [r["virtual_time_s"] for r in fedavg]
    assert fedfix[-1]["theta"] > 0.2  # it moved


def test_async_clients_restart_at_once_and_each_arrival_is_one_server_step():
    records = simulate(_scenario("async_fedavg", {"weighting": "identical"}, rounds=12)).records
    times = [r["virtual_time_s"] for r in records[1:]]
    assert all(r["clients"] == 1 for r in records[1:])
    # arrivals of τ = 0.2, 0.6 and 1.0 jobs restarted at once: 0.2, 0.4, 0.6 (two), 0.8, 1.0 (two)
    np.testing.assert_allclose(times[:7], [0.2, 0.4, 0.6, 0.6, 0.8, 1.0, 1.0], atol=1e-9)


@pytest.mark.slow
def test_async_identical_is_biased_toward_fast_clients_and_weight_removes_the_bias():
    assert _stationary("async_fedavg", 100, weighting="identical") == pytest.approx(1.51, abs=0.02)
    assert _stationary("async_fedavg", 100, weighting="weight") == pytest.approx(1.0, abs=0.02)


@pytest.mark.slow
def test_fedfix_weight_converges_to_the_true_optimum_and_identical_to_the_surrogate():
    assert _stationary("fedfix", 300, period_s=0.5) == pytest.approx(1.0, abs=0.015)
    assert _stationary("fedfix", 150, period_s=0.5,
                       weighting="identical") == pytest.approx(1.25, abs=0.01)


@pytest.mark.slow
def test_fedfix_without_the_ceil_factor_moves_the_fixed_point_to_one_and_a_quarter():
    # η_g only scales the speed of convergence, not the fixed point; 3 makes it converge by T
    assert _stationary("fedfix", 150, period_s=0.5, ceil_factor=False,
                       server_lr=3.0) == pytest.approx(1.25, abs=0.01)


@pytest.mark.slow
def test_synchronous_fedavg_reaches_the_true_optimum():
    records = simulate(_scenario("fedavg", {"fraction_evaluate": 0.0}, rounds=600)).records
    assert _time_average(records, records[-1]["virtual_time_s"]) == pytest.approx(1.0, abs=0.01)


def test_fedbuff_paper_form_aggregates_c_distinct_clients_and_finishers_wait():
    records = simulate(_scenario("fedbuff", {"buffer_size": 2, "weighting": "identical"},
                                 rounds=4)).records
    # 0.2: client 2 back; 0.6: client 1 -> step {2, 1}; 0.8: client 2; 1.0: client 0 -> step
    np.testing.assert_allclose([r["virtual_time_s"] for r in records[1:]], [0.6, 1.0, 1.2, 1.8],
                               atol=1e-9)
    assert all(r["clients"] == 2 for r in records[1:])


def test_fedbuff_original_restarts_at_once_and_may_buffer_one_client_twice():
    records = simulate(_scenario("fedbuff", {"buffer_size": 2, "weighting": "identical",
                                             "restart": "immediately"}, rounds=3)).records
    # client 2 (τ = 0.2) fills the first buffer alone: back at 0.2 and 0.4
    assert records[1]["virtual_time_s"] == pytest.approx(0.4)
    assert records[1]["staleness_max"] == 0  # its second job started on θ^0 too
    assert torch.isfinite(torch.tensor(records[-1]["theta"]))


def test_deployed_without_a_device_model_plans_from_measured_job_times():
    """No devices (a deployed grid): τ_i is measured, never read from a device table; p_i for
    `importance: samples` is the shard size of partition i."""
    s = _scenario("fedbuff", {"importance": "samples"})
    strategy = build_strategy(s, BuildContext(s, 3, make_task(s), devices=None))
    assert strategy.expected_job_times is None
    np.testing.assert_array_equal(strategy.importance, [1, 1, 1])  # one sample per client


def test_fedfix_on_opaque_node_ids_restarts_and_weighs_each_client_by_its_partition(
        monkeypatch):
    """On a grid whose node ids are ≥ 2^63 in shuffled order (the strategy built by hand, so
    it learns the partition map by asking), client i's job goes to the node holding partition
    i and its Δ_i gets p_i; the node of partition 1 is offline and never gets a job.

    Every job is back at once (wall clock, Δt = 20 ms), so each tick aggregates the online
    clients' fresh updates: θ ← θ − η Σ_{i ∈ {0, 2}} p_i (θ − c_i)."""
    s = _scenario("fedfix", {})
    task = make_task(s)
    as_server_app(monkeypatch, task)
    grid = OpaqueGrid(3, {MESSAGE_TYPE: train_fedfix}, seed=1, offline=[1])
    importance = np.array([1.0, 2.0, 7.0])
    strategy = FedFix(period_s=0.02, importance=importance.tolist(),
                      expected_job_times=[0.001] * 3)  # ⌈τ/Δt⌉ = 1: d_i = p_i
    steps = 3
    result = strategy.start(grid, task.initial_arrays(), num_rounds=steps,  # type: ignore[arg-type]
                            train_config=TrainConfig.from_spec(s.training).to_record())
    sent = [m for m in grid.sent if m.metadata.message_type == MESSAGE_TYPE]
    assert [grid.partition_of[m.metadata.dst_node_id] for m in sent] == [0, 2] * (steps + 1)
    p, theta = importance / importance.sum(), 0.0
    for _ in range(steps):
        theta -= TRAINING["lr"] * sum(p[i] * (theta - CENTERS[i]) for i in (0, 2))
    assert flatten(result.arrays)[0] == pytest.approx(theta, rel=1e-12)
