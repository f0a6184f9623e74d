"""FedHyper (spec part-a section 2(f)): the three lr schedulers on the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsim.core.codec import flatten, model_to_arrays
from fedsim.core.training import TrainConfig
from fedsim.engine.pool import ClientWorker, Job, WorkerSpec
from fedsim.engine.tasks import make_task
from fedsim.runner import CLIENT_APP, run_config, simulate
from strategies.fedhyper import DELTA_KEY, MESSAGE_TYPE, FedHyper, _as_float64_record
from tests.conftest import quadratic, scenario

LR = 0.05
FEDHYPER_KEYS = {"wall_time_s", "train_eta_g", "train_server_local_lr", "train_local_lr_mean",
                 "train_local_lr_last"}


def _digits(strategy: dict) -> dict:
    return dict(rounds=3, clients__count=6, training={"lr": LR, "local_epochs": 1,
                                                      "batch_size": 16}, strategy=strategy)


def _fedhyper(**params: object) -> dict:
    return {"name": "fedhyper", "params": {"fraction_train": 0.5, "fraction_evaluate": 0.0,
                                           **params}}


def _records(records: list[dict], drop: set[str]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


@pytest.fixture(scope="module")
def fedavg_digits():
    return simulate(scenario(**_digits({"name": "fedavg", "params": {
        "fraction_train": 0.5, "fraction_evaluate": 0.0}})))


@pytest.mark.parametrize("params", [
    {"schedulers": ["G"], "beta_g": 0.0},
    {"schedulers": ["SL"], "local_lr_bounds": [LR, LR]},
    {"schedulers": ["CL"], "local_lr_bounds": [LR, LR]},
    {"schedulers": ["CL"], "local_lr_bounds": [LR, LR], "cl_form": "multiplicative"},
    {"schedulers": ["G", "SL", "CL"], "beta_g": 0.0, "local_lr_bounds": [LR, LR]},
], ids=["G", "SL", "CL-additive", "CL-multiplicative", "G+SL+CL"])
def test_zero_hyper_rates_reproduce_flower_fedavg_bit_for_bit(params, fedavg_digits):
    fedavg = fedavg_digits
    hyper = simulate(scenario(**_digits(_fedhyper(**params))))
    np.testing.assert_array_equal(flatten(hyper.arrays), flatten(fedavg.arrays))
    # CL sends Δ^{t-1} down with the model by design: only the downlink bytes may differ
    drop = FEDHYPER_KEYS | ({"bytes_down"} if "CL" in params["schedulers"] else set())
    assert _records(hyper.records, drop) == _records(fedavg.records, drop)
    assert all(r["train_eta_g"] == 1.0 for r in hyper.records[1:])
    assert hyper.records[-1]["failures"] == 0


def test_nonzero_global_hyper_rate_departs_from_fedavg(fedavg_digits):
    """Guards the test above: the zero-rate equality is not vacuous."""
    fedavg = fedavg_digits
    hyper = simulate(scenario(**_digits(_fedhyper(schedulers=["G"], beta_g=1.0))))
    assert hyper.records[-1]["train_eta_g"] != 1.0
    assert not np.array_equal(flatten(hyper.arrays), flatten(fedavg.arrays))


def _one_client(lr: float, rounds: int, **params: object):
    params = {"global_lr_bounds": [1 / 3, 3], "fraction_train": 1.0, **params}
    return simulate(quadratic([0.0], rounds=rounds, training__lr=lr, task__params__init=10.0,
                              strategy=_fedhyper(**params)))


def test_global_lr_grows_every_round_while_consecutive_updates_agree():
    """Check 2: F = x²/2, K = 1, η_l = 0.01, η_g^0 = 1, β_g = 1, x0 = 10, clip [1/3, 3]."""
    result = _one_client(0.01, rounds=6, schedulers=["G"])
    eta_g = [r["train_eta_g"] for r in result.records[1:]]
    assert eta_g == pytest.approx([1.0, 1.0099, 1.0196, 1.0291, 1.0384, 1.0475], abs=5e-5)
    assert np.all(np.diff(eta_g) > 0)


def test_global_lr_first_moves_down_to_the_lower_clip_when_updates_oscillate():
    """Check 3: η_l = 1.5 overshoots, so ⟨Δ^1, Δ^0⟩ < 0."""
    result = _one_client(1.5, rounds=2, schedulers=["G"])
    assert [r["train_eta_g"] for r in result.records[1:]] == pytest.approx([1.0, 1 / 3])


def test_server_local_lr_persists_and_grows_across_rounds():
    """SL: the broadcast lr accumulates across rounds (the released code resets it)."""
    result = _one_client(0.01, rounds=6, schedulers=["SL"])
    sent = [r["train_server_local_lr"] for r in result.records[1:]]
    assert sent[0] == 0.01 and np.all(np.diff(sent[1:]) > 0)
    # the clients really used it: x moves further than under FedAvg's fixed 0.01
    fedavg = _one_client(0.01, rounds=6, schedulers=[])
    assert flatten(result.arrays)[0] < flatten(fedavg.arrays)[0] - 1e-4


def _cl_lr_after_two_steps(strategy: FedHyper, global_delta: float | None) -> float:
    """Run the real CL client half for two local steps from x = 10 (F = x²/2, η_l^0 = 0.01)."""
    s = quadratic([0.0], task__params__init=10.0, training__local_steps=2, training__lr=0.01,
                  strategy=_fedhyper(schedulers=["CL"]))
    task = make_task(s)
    base = TrainConfig.from_spec(s.training).to_record()
    content = RecordDict({"arrays": model_to_arrays(task.make_model()),
                          "config": strategy.cl_config(ConfigRecord(dict(base)), 1)})
    if global_delta is not None:
        content[DELTA_KEY] = _as_float64_record(np.array([global_delta]))
    worker = ClientWorker(WorkerSpec(CLIENT_APP, 1, 1, run_config(s)))
    [result] = worker.run([Job(1000, 0, MESSAGE_TYPE, "m", "g", 0, seed=0)], [content])
    assert result.content is not None, result.error_reason
    return float(result.content["metrics"]["local_lr_last"])


@pytest.mark.parametrize("form", ["additive", "multiplicative"])
def test_cl_global_term_raises_lr_when_last_global_step_agrees_with_descent(form):
    """Check 4: Δ^{t-1} > 0 means the last global step went down, like this client's step."""
    strategy = FedHyper(schedulers=["CL"], cl_form=form, beta_l=1e-4 if form == "additive" else 1,
                        local_lr_bounds=(0.001, 0.1))
    agree, oppose, none = (_cl_lr_after_two_steps(strategy, d) for d in (1.0, -1.0, None))
    assert agree > none > oppose


def test_cl_without_the_global_term_gives_equal_lrs_whatever_the_last_global_step():
    """Check 4, failure variant: with the global term scaled to 0 the three runs agree."""
    strategy = FedHyper(schedulers=["CL"], beta_l=1e-4, cl_global_scale=0.0,
                        local_lr_bounds=(0.001, 0.1))
    agree, oppose, none = (_cl_lr_after_two_steps(strategy, d) for d in (1.0, -1.0, None))
    assert agree == oppose == none
    assert none > 0.01  # the local term still works: consecutive gradients agree


def test_global_momentum_variant_steps_by_delta_plus_excess_lr_times_momentum():
    """GM (code's FedHyper-GM): w^{t+1} = w^t − Δ^t − (η_g^t − 1)·m^t, m^t = Δ^t + μ m^{t-1}."""
    result = _one_client(0.01, rounds=3, schedulers=["G"], server_momentum=0.9,
                         global_lr_bounds=[0.8, 5])
    x, m, eta = 10.0, 0.0, 1.0
    for _ in range(3):
        delta = 0.01 * x
        eta = min(max(eta + delta * m, 0.8), 5.0)
        m = delta + 0.9 * m
        x = x - delta - (eta - 1.0) * m
    assert flatten(result.arrays)[0] == pytest.approx(x, rel=1e-12)
    assert result.records[-1]["train_eta_g"] == pytest.approx(eta) and eta > 1.0


def test_cl_is_rejected_with_momentum_in_local_training():
    from fedsim.core.schema import ScenarioError

    with pytest.raises(ScenarioError, match="momentum"):
        simulate(scenario(**_digits(_fedhyper(schedulers=["CL"])), training__momentum=0.9))


def test_cl_first_round_uses_the_initial_local_lr():
    """Δ^{-1} = 0 and K = 1: no product is available yet, so the lr stays η_l^0."""
    result = simulate(quadratic([0.0, 2.0], rounds=1, training__lr=0.01,
                                strategy=_fedhyper(schedulers=["CL"], fraction_train=1.0)))
    assert result.records[1]["train_local_lr_last"] == pytest.approx(0.01)
