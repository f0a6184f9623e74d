"""Gradient coding (arXiv 1612.03301) and sequential gradient coding (arXiv 2211.13802) on SimGrid.

The real strategies run through ``fedsim.runner.simulate`` on SimGrid with the ``least_squares``
task (float64, equal shards), whose objective F(x) = ‖Ax − b‖²/(2N) has the exact gradient
∇F(x) = Aᵀ(Ax − b)/N used by the numpy references below.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from fedsim.core.codec import flatten
from fedsim.core.schema import ClientsSpec
from fedsim.core.stragglers import conforms
from fedsim.engine.devices import DevicePopulation
from fedsim.engine.tasks import make_task
from fedsim.runner import RunResult, simulate
from fedsim.scenario import load_scenario
from strategies.sequential_gradient_coding import (
    m_sgc_delay,
    sr_sgc_delay,
)
from tests.conftest import BASE, scenario

LR = 0.05


def _scenario(strategy: str, params: dict[str, Any], straggling: dict | None = None,
              rounds: int = 10, n: int = 6, seed: int = 0):
    data = copy.deepcopy(BASE)
    data.update(seed=seed, rounds=rounds)
    data["task"] = {"name": "least_squares", "params": {"dim": 5, "samples_per_client": 24}}
    tier: dict[str, Any] = {"speed": 100.0}
    if straggling:
        tier["straggling"] = straggling
    data["clients"] = {"count": n, "devices": [tier]}
    data["training"] = {"lr": LR}
    data["strategy"] = {"name": strategy, "params": params}
    return scenario(data)


def _gd_reference(s, steps: int, delay: int = 0) -> list[np.ndarray]:
    """Iterates of x_{t+1} = x_t − γ ∇F(x_{t−T}) (x_{t+1} = x_t while t < T), from numpy."""
    task = make_task(s)
    data = task.test_data(None)
    A, b = data.x.numpy(), data.y.numpy()
    xs = [flatten(task.initial_arrays())]
    grads = []
    for t in range(steps):
        grads.append(A.T @ (A @ xs[t] - b) / len(b))
        step = grads[t - delay] if t >= delay else 0.0
        xs.append(xs[t] - LR * step)
    return xs


def _losses(run: RunResult) -> np.ndarray:
    return np.array([r["loss"] for r in run.records])


def _recorded(run: RunResult, key: str) -> list[float]:
    return [r[key] for r in run.records[1:]]


@pytest.mark.parametrize("params", [{"s": 2}, {"s": 2, "scheme": "frc"}])
def test_gc_without_stragglers_takes_exactly_the_uncoded_gd_steps(params):
    coded = simulate(_scenario("gradient_coding", params))
    uncoded = simulate(_scenario("gradient_coding", {"s": 0}))
    reference = _gd_reference(_scenario("gradient_coding", {"s": 0}), 10)
    np.testing.assert_allclose(flatten(coded.arrays), reference[-1], atol=1e-10, rtol=0)
    np.testing.assert_allclose(flatten(uncoded.arrays), reference[-1], atol=1e-10, rtol=0)
    np.testing.assert_allclose(_losses(coded), _losses(uncoded), atol=1e-10, rtol=0)
    assert _recorded(uncoded, "decoded_from") == [6.0] * 10  # s = 0 waits for all
    # redundancy costs compute time: s+1 shards per worker
    assert coded.summary["virtual_time_s"] > uncoded.summary["virtual_time_s"]


IID_STRAGGLERS = {"kind": "iid", "p": 0.1, "slowdown": 10}


def test_gc_under_stragglers_is_exact_gd_and_beats_waiting_for_all(capsys):
    steps = 20
    runs = {name: simulate(_scenario(strategy, params, IID_STRAGGLERS, rounds=steps))
            for name, (strategy, params) in {
                "gc_crc": ("gradient_coding", {"s": 2}),
                "gc_frc": ("gradient_coding", {"s": 2, "scheme": "frc"}),
                "wait_for_all": ("gradient_coding", {"s": 0}),
                "ignore": ("ignore_stragglers_gd", {"s": 2})}.items()}
    reference = _gd_reference(_scenario("gradient_coding", {"s": 0}), steps)
    for name in ("gc_crc", "gc_frc", "wait_for_all"):
        np.testing.assert_allclose(flatten(runs[name].arrays), reference[-1], atol=1e-10, rtol=0)
    gc = runs["gc_crc"]
    assert sum(_recorded(gc, "ignored")) > 0  # it really decoded without some workers
    # replies still in flight at the decode are the grid's stragglers (through its services)
    assert 0 < gc.summary["total_stragglers"] <= sum(_recorded(gc, "ignored"))
    assert min(_recorded(gc, "decoded_from")) == 4  # n − s = 4 replies
    times = {name: run.summary["virtual_time_s"] for name, run in runs.items()}
    assert times["gc_crc"] < times["wait_for_all"]
    assert times["gc_frc"] < times["wait_for_all"]
    # ignore-stragglers is the fastest but inexact: it is not on the GD trajectory
    ignore = runs["ignore"]
    assert times["ignore"] < times["gc_crc"]
    assert np.abs(flatten(ignore.arrays) - reference[-1]).max() > 1e-3
    with capsys.disabled():
        print(f"\n{steps} exact GD steps, n=6, s=2, iid p=0.1 slowdown 10: virtual time "
              + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f"; final loss GD {gc.records[-1]['loss']:.5f}, "
              f"ignore-stragglers {ignore.records[-1]['loss']:.5f}")


SGC_CASES = [("sr_sgc", 2, 3, 3), ("m_sgc", 2, 3, 3), ("m_sgc", 1, 2, 3), ("m_sgc", 2, 4, 2)]


@pytest.mark.parametrize(("strategy", "B", "W", "lam"), SGC_CASES,
                         ids=[f"{c[0]}-{c[1]}{c[2]}{c[3]}" for c in SGC_CASES])
def test_sgc_decodes_every_job_by_its_deadline_and_equals_delayed_gd(strategy, B, W, lam):
    bursty = {"kind": "bursty", "B": B, "W": W, "lam": lam, "slowdown": 10,
              "start_prob": 0.4, "continue_prob": 0.9}
    delay = (sr_sgc_delay if strategy == "sr_sgc" else m_sgc_delay)(B, W, lam)
    rounds, n = 12, 8
    s = _scenario(strategy, {"B": B, "W": W, "lam": lam}, bursty, rounds=rounds, n=n)
    run = simulate(s)
    jobs = rounds - delay
    assert [j for j in _recorded(run, "decoded_job") if j >= 0] == list(range(jobs))
    assert _recorded(run, "decoded_job")[delay:] == list(range(jobs))  # each at round t + T
    assert sum(_recorded(run, "waited_for_all")) == 0  # conforming pattern: never waits for all
    assert sum(_recorded(run, "stragglers_cut")) > 0
    reference = _gd_reference(s, rounds, delay)
    np.testing.assert_allclose(flatten(run.arrays), reference[-1], atol=1e-10, rtol=0)
    # the device population's pattern, as the master saw it, conforms to the model
    devices = DevicePopulation(s.clients, s.seed)
    pattern = np.array([[devices.slowdown(i, r, 0) > 1 for i in range(n)] for r in range(rounds)])
    assert conforms(pattern, B, W, lam) and pattern.any()


def test_bursty_straggling_conforms_is_seeded_and_does_not_depend_on_query_order():
    spec = ClientsSpec.model_validate({"count": 8, "devices": [{"straggling": {
        "kind": "bursty", "B": 2, "W": 3, "lam": 3, "slowdown": 10, "start_prob": 0.5}}]})
    late_first = DevicePopulation(spec, seed=3)
    late_first.slowdown(0, 100, 0)  # draws far ahead first
    early_first = DevicePopulation(spec, seed=3)

    def pattern(devices):
        return np.array([[devices.slowdown(i, r, 0) > 1 for i in range(8)] for r in range(120)])

    a, b = pattern(early_first), pattern(late_first)
    np.testing.assert_array_equal(a, b)
    assert conforms(a, 2, 3, 3)
    assert a.sum() > 20
    assert not np.array_equal(a, pattern(DevicePopulation(spec, seed=4)))
    assert {late_first.slowdown(i, 5, 0) for i in range(8)} <= {1.0, 10.0}


@pytest.mark.parametrize("path", ["scenarios/gradient_coding.yaml", "scenarios/sgc.yaml"])
def test_example_scenarios_run(path):
    run = simulate(load_scenario(path, ["rounds=6", "backend.kind=inline"]))
    assert np.isfinite(run.records[-1]["loss"])
