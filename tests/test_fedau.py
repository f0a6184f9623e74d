"""FedAU (Wang & Ji, ICLR 2024; official code ``IBM/fedau``) and its participation models.

Scalar clients F_n = (x - c_n)^2 / 2 with c = (0, 1, 2): the target is mean(c) = 1.
Runs go through `simulate` with the real strategy classes; participation comes
from the engine's availability models. The long statistical checks of the
weight estimator run on a precomputed participation matrix instead (100000
rounds would take far too long through the simulator). Long-run reference values in
the comments come from an independent seeded numpy simulation (not in this repository).
"""

from __future__ import annotations

import numpy as np
import pytest

import strategies.fedau as fedau
from fedsim.core.codec import flatten
from fedsim.core.schema import LabelCorrelation
from fedsim.core.seeding import rng
from fedsim.engine.devices import DevicePopulation, label_correlated_p, label_distributions
from fedsim.engine.tasks import make_task
from fedsim.runner import simulate
from strategies.fedau import IntervalEstimator
from tests.conftest import quadratic, scenario

CENTERS = (0.0, 1.0, 2.0)
PERIODS = (1, 2, 4)
BERNOULLI_P = (0.5, 0.2, 0.05)
PERIODIC_TIERS = [
    {"name": "every-round"},
    {"name": "every-2nd", "availability": {"kind": "cyclic", "period": 2, "p": 0.5, "phase": 0}},
    {"name": "every-4th", "availability": {"kind": "cyclic", "period": 4, "p": 0.25, "phase": 0}},
]


@pytest.fixture
def fedau_models(monkeypatch: pytest.MonkeyPatch) -> list[tuple[fedau.FedAU, list[float]]]:
    """Record each FedAU built by `simulate` and its model after every round."""
    runs: list[tuple[fedau.FedAU, list[float]]] = []

    class Recording(fedau.FedAU):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            runs.append((self, []))

        def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
            arrays, metrics = super().aggregate_train(server_round, replies)
            current = arrays if arrays is not None else self._sent
            runs[-1][1].append(float(flatten(current)[0]))
            return arrays, metrics

    monkeypatch.setattr(fedau, "FedAU", Recording)
    return runs


def periodic(strategy: str, rounds: int, lr: float, **overrides: object):
    """Client with center c_k online exactly in rounds t = 0 mod PERIODS[k] (t from 1)."""
    probe = quadratic([0.0] * 3, clients__devices=PERIODIC_TIERS)
    tier_of = DevicePopulation(probe.clients, probe.seed).tier_of  # tiers are shuffled
    return quadratic([CENTERS[t] for t in tier_of], rounds=rounds, training__lr=lr,
                     training__local_steps=5, evaluation__centralized_every=1,
                     clients__devices=PERIODIC_TIERS, strategy__name=strategy,
                     **overrides), tier_of


def bernoulli(rounds: int, lr: float, **overrides: object):
    devices = [{"availability": {"kind": "bernoulli", "p": 0.1,
                                 "p_per_device": list(BERNOULLI_P)}}]
    return quadratic(list(CENTERS), rounds=rounds, training__lr=lr, training__local_steps=5,
                     evaluation__centralized_every=0, clients__devices=devices,
                     strategy__name="fedau", **overrides)


def last_quarter(xs: list[float]) -> float:
    return float(np.mean(xs[3 * len(xs) // 4:]))


# ---------------------------------------------------------------- check 1: periodic


def test_periodic_participation_fedau_reaches_the_true_optimum(fedau_models):
    # Reference: eta = 0.002 over 20000 rounds gives 1.002; the bias grows ~1.1 eta
    # (1.011 at eta = 0.01, which converges within the 200 rounds we can afford).
    sc, tier_of = periodic("fedau", rounds=200, lr=0.01)
    simulate(sc)
    strategy, xs = fedau_models[0]
    assert abs(last_quarter(xs) - 1.0) < 0.02
    weights = strategy.estimator.by_node()
    partition_of = strategy.services.partitions.partition_of
    assert {partition_of(node): w for node, w in weights.items()} == {
        i: float(PERIODS[t]) for i, t in enumerate(tier_of)}


def test_periodic_participation_biases_average_participating_fedavg():
    # Theory: per-period weights (17/6, 5/6, 1/3) on c = (0, 1, 2) give 3/8.
    sc, _ = periodic("fedavg", rounds=200, lr=0.01)
    records = simulate(sc).records[1:]
    xs = [1.0 - r["distance"] for r in records]  # x stays below the optimum 1
    assert last_quarter(xs) == pytest.approx(0.375, abs=0.005)


def test_round_weight_uses_only_earlier_intervals(fedau_models):
    """Round 4 is the r = 4 client's first: its weight is 1, not the interval 4 ending now."""
    lr, steps = 0.01, 5
    beta = 1 - (1 - lr) ** steps  # 5 GD steps on (x - c)^2 / 2 move x by beta (c - x)
    # weights of (r=1, r=2, r=4) in rounds 1..4, Algorithm 2's order / the ablation's
    right = [(1, 0, 0), (1, 1, 0), (1, 0, 0), (1, 2, 1)]
    wrong = [(1, 0, 0), (1, 2, 0), (1, 0, 0), (1, 2, 4)]
    for flag, omegas in ((False, right), (True, wrong)):
        sc, _ = periodic("fedau", rounds=4, lr=lr,
                         strategy__params={"estimate_includes_current_round": flag})
        simulate(sc)
        x = 0.0
        for omega in omegas:
            x += sum(w * beta * (c - x) for w, c in zip(omega, CENTERS, strict=True)) / 3
        assert fedau_models[-1][1][-1] == pytest.approx(x, rel=1e-12)


# ---------------------------------------------------------------- checks 2, 3: the estimator


def bernoulli_matrix(rounds: int) -> np.ndarray:
    return rng(0, "test-fedau").random((rounds, 3)) < np.array(BERNOULLI_P)


@pytest.mark.parametrize("cutoff", [fedau.NO_CUTOFF, 5])
def test_bernoulli_weights_converge_to_truncated_mean_interval(cutoff):
    """omega_n -> E[min(Geom(p), K)] = (1 - (1 - p)^K) / p: 1/p without a cutoff."""
    participation = bernoulli_matrix(100_000)
    estimator = IntervalEstimator(cutoff)
    estimator.weights([0, 1, 2])  # the three nodes, in order
    for row in participation:
        estimator.observe(np.flatnonzero(row).tolist())
    p = np.array(BERNOULLI_P)
    expected = (1 - (1 - p) ** cutoff) / p
    weights = np.array([estimator.by_node()[n] for n in range(3)])
    # 1/p: (2, 5, 20); with K = 5: (1.9375, 3.3616, 4.5244). Standard errors:
    # about 0.3 % (p = 0.5) to 1.4 % (p = 0.05, 5000 intervals) of the value.
    assert weights == pytest.approx(expected, rel=0.05 if cutoff > 5 else 0.02)


def test_nodes_never_seen_advance_their_counters():
    """A node first seen in round 8 has the state of one absent in rounds 1..7."""
    known, lazy = IntervalEstimator(cutoff=5), IntervalEstimator(cutoff=5)
    known.weights([7])
    for _ in range(7):
        known.observe([])
        lazy.observe([])
    assert lazy.weights([7])[0] == known.weights([7])[0] == 5.0  # one cut-off interval
    known.observe([7])
    lazy.observe([7])
    assert lazy.by_node() == known.by_node() == {7: 4.0}  # mean of the intervals 5 and 3
    mean, largest = IntervalEstimator(cutoff=5).summary(num_nodes=4)
    assert (mean, largest) == (1.0, 1.0)


@pytest.mark.slow
def test_bernoulli_fixed_point_is_the_true_optimum(fedau_models):
    """Reference: 0.997 after 100000 rounds. 2000 rounds: std over seeds about 0.07.

    Average-participating FedAvg goes to 0.344 and average-all FedAvg to 0.4.
    """
    simulate(bernoulli(rounds=2000, lr=0.02))
    strategy, xs = fedau_models[0]
    assert abs(last_quarter(xs) - 1.0) < 0.25
    weights = strategy.estimator.by_node()
    node_of = strategy.services.partitions.node_of
    assert weights[node_of(0)] == pytest.approx(2.0, rel=0.15)
    assert weights[node_of(2)] == pytest.approx(20.0, rel=0.5)


# ---------------------------------------------------------------- check 4: full participation


def test_full_participation_is_fedavg_over_all_clients(fedau_models):
    finals = []
    for name in ("fedau", "fedavg"):
        sc = quadratic(list(CENTERS), rounds=20, training__lr=0.1, training__local_steps=5,
                       strategy__name=name)
        finals.append(flatten(simulate(sc).arrays))
    assert np.array_equal(finals[0], finals[1])  # bit for bit
    assert set(fedau_models[0][0].estimator.by_node().values()) == {1.0}


def test_global_lr_scales_the_step(fedau_models):
    sc = quadratic(list(CENTERS), rounds=1, training__lr=0.1, training__local_steps=1,
                   strategy__name="fedau", strategy__params={"global_lr": 0.5})
    simulate(sc)
    assert fedau_models[0][1] == [pytest.approx(0.5 * 0.1 * 1.0)]  # x + gamma mean(Delta)


# ---------------------------------------------------------------- participation models


@pytest.mark.parametrize("model", [
    {"kind": "bernoulli", "p": 0.1},
    {"kind": "markov", "p": 0.1, "q": 0.2},
    {"kind": "cyclic", "p": 0.1, "period": 20},
])
def test_p_per_device_sets_each_devices_long_run_rate(model):
    sc = quadratic(list(CENTERS), clients__devices=[
        {"availability": {**model, "p_per_device": list(BERNOULLI_P)}}])
    devices = DevicePopulation(sc.clients, sc.seed)
    online = np.array([devices.available(r) for r in range(4000)])
    np.testing.assert_allclose(online.mean(axis=0), BERNOULLI_P, rtol=0.15, atol=0.01)
    np.testing.assert_array_equal(devices.online_p, BERNOULLI_P)


def test_label_correlated_p_keeps_the_mean_above_the_floor():
    q = np.kron(np.eye(10), np.ones((5, 1)))  # 50 clients, 5 per label: balanced labels
    spec = LabelCorrelation()
    p = label_correlated_p(q, 0.1, spec, rng(0, "m"))
    unfloored = label_correlated_p(q, 0.1, LabelCorrelation(p_min=1e-12), rng(0, "m"))
    assert unfloored.mean() == pytest.approx(0.1)  # L p_mean sum_l mean_n(q_nl) m_l
    assert p.min() >= spec.p_min
    assert 0.1 <= p.mean() <= 0.1 + spec.p_min
    assert p.max() > 0.5  # alpha = 0.1: a few labels are strongly favoured


def digits_with_label_correlation(seed: int):
    return scenario(seed=seed, clients__count=20, task__partition={"kind": "shards"},
                    clients__devices=[{"availability": {
                        "kind": "bernoulli", "p": 0.1, "label_correlation": {}}}])


def label_population(sc):
    task = make_task(sc)
    return task, DevicePopulation(sc.clients, sc.seed, labels=lambda i: task.train_data(i).y)


def test_label_correlated_availability_favours_clients_with_favoured_labels():
    task, devices = label_population(digits_with_label_correlation(seed=0))
    q = label_distributions([task.train_data(i).y for i in range(20)])
    m = rng(0, "label-participation").dirichlet(np.full(10, 0.1))
    score = q @ m
    assert np.corrcoef(score, devices.online_p)[0, 1] > 0.9
    favoured = q[:, np.argmax(m)] > 0
    assert devices.online_p[favoured].mean() > 3 * devices.online_p[~favoured].mean()
    online = np.array([devices.available(r) for r in range(2000)]).mean(axis=0)
    np.testing.assert_allclose(online, devices.online_p, atol=0.05)


def test_label_correlated_availability_is_deterministic_per_seed():
    first = label_population(digits_with_label_correlation(seed=0))[1]
    again = label_population(digits_with_label_correlation(seed=0))[1]
    other = label_population(digits_with_label_correlation(seed=1))[1]
    np.testing.assert_array_equal(first.online_p, again.online_p)
    np.testing.assert_array_equal(first.available(7), again.available(7))
    assert not np.array_equal(first.online_p, other.online_p)


def test_simulate_gives_devices_their_labels():
    """The quadratic task has one label: every p_n is then the mean p."""
    sc = quadratic(list(CENTERS), rounds=3, strategy__name="fedau", clients__devices=[
        {"availability": {"kind": "bernoulli", "p": 0.3, "label_correlation": {}}}])
    assert len(simulate(sc).records) == 4
    np.testing.assert_allclose(label_population(sc)[1].online_p, 0.3)
