"""FedSpeed on two quadratics with different curvatures.

Sun, Shen, Huang, Ding, Tao, "FedSpeed: Larger Local Interval, Less Communication Round, and
Higher Generalization Accuracy", ICLR 2023 (arXiv 2302.10429); official code
https://github.com/woodenchild95/FL-Simulator.

F_1 = ½·1·(x − 0)², F_2 = ½·4·(x − 1)², x* = 0.8; full participation, exact gradients,
K = 10, η_l = 0.1, ρ = 0 unless said otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedsim.core.codec import flatten, model_to_arrays, unflatten
from fedsim.core.training import TrainConfig
from fedsim.engine.pool import ClientWorker, Job, WorkerSpec
from fedsim.engine.tasks import make_task
from fedsim.runner import CLIENT_APP, run_config, simulate
from strategies.fedspeed import CORRECTION_KEY, MESSAGE_TYPE, FedSpeed, FedSpeedParams
from tests.conftest import quadratic

TOL = 1e-4


def _two_quadratics(strategy: dict, rounds: int, **overrides: object):
    result = simulate(quadratic([0.0, 1.0], rounds=rounds, task__params__curvatures=[1.0, 4.0],
                                training__local_steps=10, training__lr=0.1,
                                evaluation__centralized_every=0, strategy=strategy, **overrides))
    assert all(r["failures"] == 0 for r in result.records[1:])
    return result


def _fedspeed(**params: object) -> dict:
    return {"name": "fedspeed", "params": {"rho": 0.0, "fraction_evaluate": 0.0, **params}}


def _train_config(s) -> ConfigRecord:
    return TrainConfig.from_spec(s.training).to_record()


def _x(result) -> float:
    return float(flatten(result.arrays)[0])


@pytest.mark.parametrize(("prox_lambda", "rounds", "tol"), [
    (1.0, 30, 1e-6),
    (10.0, 170, TOL),
    pytest.param(100.0, 1700, TOL, marks=pytest.mark.slow),
])
def test_fedspeed_reaches_the_exact_optimum_under_heterogeneity(prox_lambda, rounds, tol):
    assert _x(_two_quadratics(_fedspeed(prox_lambda=prox_lambda), rounds)) == pytest.approx(
        0.8, abs=tol)


def test_flower_fedavg_stalls_at_its_biased_fixed_point():
    fedavg = {"name": "fedavg", "params": {"fraction_evaluate": 0.0}}
    assert _x(_two_quadratics(fedavg, 30)) == pytest.approx(0.6041, abs=TOL)


def test_correction_held_at_zero_is_flower_fedprox_with_mu_one_over_lambda():
    """Failure test of the optimum: without ĝ_i lines 11/13/14 are FedProx, biased to 0.6081."""
    fedprox = _two_quadratics({"name": "fedprox", "params": {"proximal_mu": 0.1,
                                                             "fraction_evaluate": 0.0}}, 30)
    held = _two_quadratics(_fedspeed(prox_lambda=10.0, prox_correction=False), 30)
    assert _x(fedprox) == pytest.approx(0.6081, abs=TOL)
    assert _x(held) == pytest.approx(_x(fedprox), abs=1e-12)


@pytest.mark.slow
def test_unnormalised_perturbation_bias_is_the_predicted_fixed_point():
    """Unnormalised ascent: quasi-gradient (1 + αρa_i)a_i(x − c_i) moves the fixed point to 0.8331.
    """
    result = _two_quadratics(_fedspeed(rho=0.1, alpha=0.9, perturb_normalize=False), 220)
    assert _x(result) == pytest.approx(0.8331, abs=TOL)


def test_normalised_perturbation_stays_within_order_rho_of_the_optimum():
    result = _two_quadratics(_fedspeed(prox_lambda=1.0, rho=0.1, alpha=0.9), 40)
    assert abs(_x(result) - 0.8) < 0.1


def test_official_and_paper_server_rules_agree_under_full_participation():
    """mean(x_K) + mean_N(h) = mean(x_K + h) when every client is active."""
    paper = _two_quadratics(_fedspeed(server_rule="paper"), 15)
    official = _two_quadratics(_fedspeed(server_rule="official"), 15)
    assert _x(official) == pytest.approx(_x(paper), abs=1e-12)


def test_official_server_rule_differs_under_partial_participation():
    """H averages h over all N clients, the paper's x̂ only over the active ones."""
    kwargs = dict(fraction_train=0.5, min_train_nodes=1)
    paper = _two_quadratics(_fedspeed(server_rule="paper", **kwargs), 6)
    official = _two_quadratics(_fedspeed(server_rule="official", **kwargs), 6)
    assert abs(_x(official) - _x(paper)) > 1e-6


@pytest.mark.parametrize("prox_lambda", [1.0, 10.0, 100.0])
def test_upload_is_local_model_plus_accumulated_drift(prox_lambda):
    """x̂_i − x_{i,K} = Σ_past (x_{i,K} − x^t) for any λ, with ĝ_i kept in the state."""
    s = quadratic([1.0], task__params__curvatures=[4.0], training__local_steps=10,
                  training__lr=0.1, strategy__name="fedspeed")
    task = make_task(s)
    config = FedSpeed(prox_lambda=prox_lambda, rho=0.0).client_config(_train_config(s))
    worker = ClientWorker(WorkerSpec(CLIENT_APP, 1, 1, run_config(s)))
    like = model_to_arrays(task.make_model())
    accumulated = 0.0
    for t, start in enumerate([0.0, 0.5, -0.3]):  # any sequence of global models
        arrays = unflatten(np.array([start]), like)
        [result] = worker.run([Job(1000, 0, MESSAGE_TYPE, f"m{t}", "g", 0, seed=t)],
                              [RecordDict({"arrays": arrays, "config": config})])
        assert result.content is not None, result.error_reason
        upload = flatten(result.content["arrays"])[0]
        g_hat = flatten(worker.contexts[1000].state[CORRECTION_KEY])[0]
        local = upload + prox_lambda * g_hat  # x_{i,K}, from line 14
        accumulated += local - start
        assert upload - local == pytest.approx(accumulated, abs=1e-12)
        # the accumulated drift is nonzero and its upload does not depend on λ
        assert accumulated != 0.0


def test_correction_is_unchanged_on_nodes_not_sampled():
    """ĝ_i lives in the node's Context.state; a node idle in a round keeps it."""
    s = quadratic([0.0, 1.0], task__params__curvatures=[1.0, 4.0], strategy__name="fedspeed")
    worker = ClientWorker(WorkerSpec(CLIENT_APP, 1, 2, run_config(s)))
    config = FedSpeed(rho=0.0).client_config(_train_config(s))
    arrays = model_to_arrays(make_task(s).make_model())
    payload = RecordDict({"arrays": arrays, "config": config})
    worker.run([Job(1000, 0, MESSAGE_TYPE, "a", "g", 0, 0), Job(1001, 1, MESSAGE_TYPE, "b", "g",
                                                                 0, 1)], [payload])
    idle = flatten(worker.contexts[1001].state[CORRECTION_KEY]).copy()
    worker.run([Job(1000, 0, MESSAGE_TYPE, "c", "g", 0, 2)], [payload])
    np.testing.assert_array_equal(flatten(worker.contexts[1001].state[CORRECTION_KEY]), idle)
    assert idle[0] != 0.0


@pytest.mark.parametrize("eps", [None, 1e-7, 1e-12, 1e-3])
def test_normalised_ascent_step_divides_by_gradient_norm_plus_eps(eps):
    """y = x + ρ·g1/(‖g1‖ + ε), ε = 1e-7 by default (the official code's constant).

    One client, F = x²/2, one local step from x0 = 1e-7, so ‖g1‖ = 1e-7 and ε shows: the
    default ascends by ρ/2, where ε = 1e-12 would ascend by almost ρ.
    """
    x0, rho, lr = 1e-7, 0.1, 0.1
    params = {} if eps is None else {"perturb_eps": eps}
    result = simulate(quadratic([0.0], rounds=1, task__params__init=x0, training__lr=lr,
                                evaluation__centralized_every=0,
                                strategy=_fedspeed(rho=rho, alpha=1.0, **params)))
    g1 = x0
    y = x0 + rho * g1 / (abs(g1) + (1e-7 if eps is None else eps))
    x1 = x0 - lr * y  # g2 = ∇F(y) = y; ĝ = 0 and no prox pull yet on the first step
    upload = x1 + (x1 - x0)  # x̂ = x_K + h with h = x_K − x0
    assert _x(result) == pytest.approx(upload, rel=1e-12)
    assert FedSpeedParams.model_fields["perturb_eps"].description
