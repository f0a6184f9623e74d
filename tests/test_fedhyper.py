"""FedHyper: the three lr schedulers on the simulator.

Wang, Wang, Li, "FedHyper: A Universal and Robust Learning Rate Scheduler for Federated Learning
with Hypergradient Descent", ICLR 2024 (arXiv 2310.03156); official code
https://github.com/ATP-1010/FedHyper. The CL and GM tests re-implement the official code's rules
in numpy here and compare them with what the real strategy and client half produce.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsim.core.codec import flatten, model_to_arrays
from fedsim.core.training import TrainConfig
from fedsim.engine.pool import ClientWorker, Job, WorkerSpec
from fedsim.engine.tasks import make_task
from fedsim.runner import CLIENT_APP, run_config, simulate
from strategies.fedhyper import DELTA_KEY, MESSAGE_TYPE, FedHyper, _as_float64_record, global_band
from tests.conftest import quadratic, scenario

LR = 0.05
FEDHYPER_KEYS = {"wall_time_s", "eta_g", "server_local_lr", "local_lr_mean",
                 "local_lr_last"}


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
    assert all(r["eta_g"] == 1.0 for r in hyper.records[1:])
    assert hyper.records[-1]["failures"] == 0


def test_nonzero_global_hyper_rate_departs_from_fedavg(fedavg_digits):
    """Guards the test above: the zero-rate equality is not vacuous."""
    fedavg = fedavg_digits
    hyper = simulate(scenario(**_digits(_fedhyper(schedulers=["G"], beta_g=1.0))))
    assert hyper.records[-1]["eta_g"] != 1.0
    assert not np.array_equal(flatten(hyper.arrays), flatten(fedavg.arrays))


def _one_client(lr: float, rounds: int, **params: object):
    params = {"global_lr_bounds": [1 / 3, 3], "fraction_train": 1.0, **params}
    return simulate(quadratic([0.0], rounds=rounds, training__lr=lr, task__params__init=10.0,
                              strategy=_fedhyper(**params)))


def test_global_lr_grows_every_round_while_consecutive_updates_agree():
    """F = x²/2, K = 1, η_l = 0.01 (too small), η_g^0 = 1, β_g = 1, x0 = 10, clip [1/3, 3]."""
    result = _one_client(0.01, rounds=6, schedulers=["G"])
    eta_g = [r["eta_g"] for r in result.records[1:]]
    assert eta_g == pytest.approx([1.0, 1.0099, 1.0196, 1.0291, 1.0384, 1.0475], abs=5e-5)
    assert np.all(np.diff(eta_g) > 0)


def test_global_lr_first_moves_down_to_the_lower_clip_when_updates_oscillate():
    """η_l = 1.5 overshoots, so ⟨Δ^1, Δ^0⟩ < 0 and η_g drops to the band's floor."""
    result = _one_client(1.5, rounds=2, schedulers=["G"])
    assert [r["eta_g"] for r in result.records[1:]] == pytest.approx([1.0, 1 / 3])


def test_server_local_lr_persists_and_grows_across_rounds():
    """SL: the broadcast lr accumulates across rounds (the released code resets it)."""
    result = _one_client(0.01, rounds=6, schedulers=["SL"])
    sent = [r["server_local_lr"] for r in result.records[1:]]
    assert sent[0] == 0.01 and np.all(np.diff(sent[1:]) > 0)
    # the clients really used it: x moves further than under FedAvg's fixed 0.01
    fedavg = _one_client(0.01, rounds=6, schedulers=[])
    assert flatten(result.arrays)[0] < flatten(fedavg.arrays)[0] - 1e-4


def _cl_last_lr(strategy: FedHyper, global_delta: float | None, steps: int) -> float:
    """The lr of the real CL client half's last local step from x = 10 (F = x²/2, η_l^0 = 0.01)."""
    s = quadratic([0.0], task__params__init=10.0, training__local_steps=steps, training__lr=0.01,
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
    """Δ^{t-1} > 0 means the last global step went down, like this client's step.

    The additive form updates the lr before every step, so the second step's lr already shows
    the global term; the multiplicative one first updates after step 1, so the third step's does.
    """
    strategy = FedHyper(schedulers=["CL"], cl_form=form, beta_l=1e-4 if form == "additive" else 1,
                        local_lr_bounds=(0.001, 0.1))
    steps = 2 if form == "additive" else 3
    agree, oppose, none = (_cl_last_lr(strategy, d, steps) for d in (1.0, -1.0, None))
    assert agree > none > oppose


def test_cl_without_the_global_term_gives_equal_lrs_whatever_the_last_global_step():
    """Failure variant of the test above: with the global term scaled to 0 the three runs agree."""
    strategy = FedHyper(schedulers=["CL"], beta_l=1e-4, cl_global_scale=0.0,
                        local_lr_bounds=(0.001, 0.1))
    agree, oppose, none = (_cl_last_lr(strategy, d, 2) for d in (1.0, -1.0, None))
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
    assert result.records[-1]["eta_g"] == pytest.approx(eta) and eta > 1.0


def test_cl_is_rejected_with_momentum_in_local_training():
    from fedsim.core.errors import ScenarioError

    with pytest.raises(ScenarioError, match="momentum"):
        simulate(scenario(**_digits(_fedhyper(schedulers=["CL"])), training__momentum=0.9))


def test_cl_first_round_uses_the_initial_local_lr():
    """Δ^{-1} = 0 and K = 1: no product is available yet, so the lr stays η_l^0."""
    result = simulate(quadratic([0.0, 2.0], rounds=1, training__lr=0.01,
                                strategy=_fedhyper(schedulers=["CL"], fraction_train=1.0)))
    assert result.records[1]["local_lr_last"] == pytest.approx(0.01)


def test_default_global_bands_are_the_official_codes():
    """[0.2, 5] for G and [0.8, 5] for GM (times η_g^0); γ_α = 3 is the paper's band."""
    assert FedHyper().global_lr_bounds == (0.2, 5.0)
    assert FedHyper(server_momentum=0.9).global_lr_bounds == (0.8, 5.0)
    assert FedHyper(global_clip_factor=3.0).global_lr_bounds == pytest.approx((1 / 3, 3.0))
    assert FedHyper(global_clip_factor=3.0, global_lr_bounds=(0.5, 2.0)).global_lr_bounds == (
        0.5, 2.0)
    assert global_band(2.0, None, 0.0) == (0.4, 10.0)


def test_global_lr_drops_to_the_official_floor_by_default():
    """The overshooting problem above, through the scenario's params: η_g falls to 0.2."""
    result = simulate(quadratic([0.0], rounds=2, training__lr=1.5, task__params__init=10.0,
                                strategy=_fedhyper(schedulers=["G"], fraction_train=1.0)))
    assert [r["eta_g"] for r in result.records[1:]] == pytest.approx([1.0, 0.2])


# ------------------------------------------------- the official rules, re-implemented by hand

NUM_CLIENTS, LS_DIM, LS_LR, LS_STEPS = 3, 4, 0.1, 6


def _least_squares(**overrides: object):
    """3 weighted least-squares clients (4 unknowns, 10 samples each), full-batch local steps."""
    return scenario(task={"name": "wls", "params": {"dim": LS_DIM, "samples_per_client": 10}},
                    clients__count=NUM_CLIENTS, evaluation={"centralized_every": 0},
                    training={"lr": LS_LR, "local_steps": LS_STEPS, "batch_size": 10},
                    **overrides)


def _gradient(task, k: int):
    """∇ of client k's loss mean_n ω_n (y_n − x_n·w)², by hand."""
    x, y, weights = task.client_data(k)
    return lambda w: -2.0 * x.T @ (weights * (y - x @ w)) / len(y)


def _official_cl(gradient, w: np.ndarray, lr0: float, steps: int, d_prev: np.ndarray,
                 num_sampled: int) -> tuple[list[float], np.ndarray]:
    """The official client rule (src/update.py), written out: each step's lr, and the model.

    The lr is lr0·b with b = 1 at the start of the round. d_prev = D^{t-1} is the previous
    round's mean client model minus the global model. Step j changes w by δ_j. No update of b
    after step 0; after step j ≥ 1, b ← clip(b·min(1.1, 1 + 0.1⟨δ_j, D⟩/S + ⟨δ_j, δ_{j-1}⟩),
    0.1, 10), where δ_0 is replaced by D at j = 1.
    """
    b, last, lrs = 1.0, d_prev, []
    for j in range(steps):
        lrs.append(lr0 * b)
        change = -lr0 * b * gradient(w)
        w = w + change
        if j >= 1:
            gamma = 1.0 + 0.1 * float(change @ d_prev) / num_sampled + float(change @ last)
            b = min(max(b * min(1.1, gamma), 0.1), 10.0)
            last = change
    return lrs, w


@pytest.mark.parametrize("toward", [0.3, -0.3], ids=["global-step-agrees", "global-step-opposes"])
def test_cl_multiplicative_per_step_lrs_match_the_official_rule(toward):
    """One round of CL (multiplicative form) on 3 least-squares clients, every step's lr.

    The previous global step D^{t-1} moved `toward` × w* from the start w = 0. The real client
    half runs with local_steps = 1..K: its last step's lr is the k-th lr of the sequence, and
    the K-step model must be the one the hand-written rule gives.
    """
    s = _least_squares(strategy__name="fedhyper")
    task = make_task(s)
    d_prev = toward * task.closed_form
    strategy = FedHyper(schedulers=["CL"], cl_form="multiplicative")
    base = dict(TrainConfig.from_spec(s.training).to_record())
    payloads = []
    for steps in range(1, LS_STEPS + 1):
        config = strategy.cl_config(ConfigRecord({**base, "local-steps": steps}), NUM_CLIENTS)
        content = RecordDict({"arrays": model_to_arrays(task.make_model()), "config": config})
        content[DELTA_KEY] = _as_float64_record(-d_prev)  # the server sends Δ = −D
        payloads.append(content)
    worker = ClientWorker(WorkerSpec(CLIENT_APP, 1, NUM_CLIENTS, run_config(s)))
    jobs = [Job(1000 + k, k, MESSAGE_TYPE, f"m{k}-{i}", "g", i, seed=k)
            for k in range(NUM_CLIENTS) for i in range(LS_STEPS)]
    results = worker.run(jobs, payloads)
    assert all(r.content is not None for r in results), [r.error_reason for r in results]
    for k in range(NUM_CLIENTS):
        lrs, w = _official_cl(_gradient(task, k), np.zeros(LS_DIM), LS_LR, LS_STEPS, d_prev,
                              NUM_CLIENTS)
        mine = results[k * LS_STEPS:(k + 1) * LS_STEPS]
        got = [float(r.content["metrics"]["local_lr_last"]) for r in mine]  # type: ignore[index]
        assert got == pytest.approx(lrs, rel=1e-12, abs=0), f"client {k}"
        np.testing.assert_allclose(flatten(mine[-1].content["arrays"]), w,  # type: ignore[index]
                                   rtol=1e-12)
        assert lrs[0] == lrs[1] == LS_LR and len(set(lrs[1:])) == LS_STEPS - 1  # not vacuous


def test_full_variant_gm_plus_cl_matches_the_official_rules_over_rounds():
    """FedHyper-FULL (GM server, CL clients, default bands) for 6 rounds, against a hand port.

    Server (src/federated_main.py): D^t = mean client model − w^t, raw; from round 1 on,
    a ← clip(a + ⟨m, D^t⟩, −0.2, 4), w ← mean + a·(D^t + 0.9·m), m ← D^t + 0.9·m (m^0 = D^0).
    """
    rounds = 6
    s = _least_squares(rounds=rounds, training__local_steps=5, strategy=_fedhyper(
        schedulers=["G", "CL"], cl_form="multiplicative", server_momentum=0.9,
        fraction_train=1.0))
    result = simulate(s)
    task = make_task(s)
    gradients = [_gradient(task, k) for k in range(NUM_CLIENTS)]
    w, a, m, d_prev = np.zeros(LS_DIM), 0.0, None, np.zeros(LS_DIM)
    for _ in range(rounds):
        mean = np.mean([_official_cl(g, w, LS_LR, 5, d_prev, NUM_CLIENTS)[1] for g in gradients],
                       axis=0)
        d = mean - w
        if m is None:
            w, m = mean, d
        else:
            a = min(max(a + float(m @ d), -0.2), 4.0)
            w, m = mean + a * (d + 0.9 * m), d + 0.9 * m
        d_prev = d
    np.testing.assert_allclose(flatten(result.arrays), w, rtol=1e-10)
    assert result.records[-1]["eta_g"] == pytest.approx(1.0 + a, rel=1e-10)
    assert a != 0.0
