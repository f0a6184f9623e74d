"""Sanity checks of sequential gradient coding (Krishnan et al., ICLR 2023, arXiv 2211.13802)."""

import copy
from collections import defaultdict
from itertools import product

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedsim.core.codec import flatten
from fedsim.core.stragglers import conforms, round_conforms
from fedsim.engine.stragglers import sample_bursty_pattern
from fedsim.engine.tasks import make_task
from strategies.gradient_coding import gc_load
from strategies.sequential_gradient_coding import (
    IDLE,
    MESSAGE_TYPE,
    MultiplexedSGC,
    SelectiveRepeatSGC,
    SequentialGradientCodingGD,
    SequentialScheme,
    m_sgc_delay,
    m_sgc_load,
    sr_sgc_delay,
    sr_sgc_load,
    sr_sgc_tolerance,
    stopping_rule,
    train_sgc,
)

# (scheme class, n, (B, W, λ), GC scheme inside): every model shape the schemes allow, small n.
SCHEMES = [
    (SelectiveRepeatSGC, 8, (1, 2, 3), "crc"),
    (SelectiveRepeatSGC, 8, (2, 3, 3), "crc"),
    (SelectiveRepeatSGC, 9, (1, 3, 4), "frc"),
    (SelectiveRepeatSGC, 8, (2, 5, 5), "crc"),
    (MultiplexedSGC, 8, (1, 2, 3), "frc"),
    (MultiplexedSGC, 8, (2, 3, 3), "crc"),
    (MultiplexedSGC, 8, (2, 4, 2), "crc"),
    (MultiplexedSGC, 8, (1, 3, 7), "crc"),
    (MultiplexedSGC, 6, (2, 3, 6), "crc"),  # λ = n: repetition only
]


def _schemes(n_jobs: int):
    for cls, n, (B, W, lam), gc in SCHEMES:
        scheme = cls.create(n, B, W, lam, n_jobs, gc, seed=1)
        yield pytest.param(scheme, id=f"{cls.__name__}-n{n}-BWλ{B}{W}{lam}-{gc}")


def _decode_by_deadlines(scheme: SequentialScheme, pattern, job_partials) -> list[np.ndarray]:
    """Run the scheme's protocol round by round; decode each job at its deadline."""
    delivered = scheme.empty_delivered()
    received: dict[int, dict] = defaultdict(dict)
    decoded = []
    for r in range(scheme.n_rounds):
        delivered[r] = scheme.deliver(scheme.tasks(r, delivered[:r]), pattern[r])
        for worker, job, task in scheme.assignments(r, delivered[r]):
            held = np.zeros_like(job_partials[job])  # the worker sees only the parts it needs
            parts = scheme.parts_needed(worker, task)
            held[parts] = job_partials[job][parts]
            received[job][worker, task] = scheme.message(worker, task, held)
        if (due := r - scheme.delay) >= 0:
            decoded.append(scheme.decode_job(received.pop(due)))
    return decoded


def test_load_formulas_reproduce_the_reference_values():
    assert m_sgc_load(256, 1, 2, 27) == pytest.approx(56 / (256 * 29))
    assert round(m_sgc_load(256, 1, 2, 27), 4) == 0.0075  # repo's best M-SGC load
    assert sr_sgc_tolerance(2, 3, 23) == 12
    assert sr_sgc_load(256, 2, 3, 23) == pytest.approx(13 / 256)
    assert round(sr_sgc_load(256, 2, 3, 23), 3) == 0.051
    assert gc_load(256, 15) == 0.0625
    for n, B, W in [(256, 1, 2), (10, 2, 5), (7, 3, 4)]:
        assert m_sgc_load(n, B, W, 0) == pytest.approx(1 / n)
    assert m_sgc_load(6, 2, 3, 6) == pytest.approx(4 / 12)
    assert (sr_sgc_delay(2, 3, 23), m_sgc_delay(1, 2, 27), m_sgc_delay(2, 5, 3)) == (2, 1, 5)


def test_m_sgc_load_is_a_full_round_of_equal_minitasks_and_the_parts_cover_a_job():
    for n, B, W, lam in [(256, 1, 2, 27), (8, 2, 3, 3), (6, 2, 3, 6)]:
        scheme = MultiplexedSGC.create(n, B, W, lam, n_jobs=1, gc_scheme="crc")
        chunk, partition = scheme.part_fractions()
        d2_parts = scheme.n_parts - scheme.n_d1_parts
        assert scheme.n_d1_parts * chunk + d2_parts * partition == pytest.approx(1.0)
        assert scheme.n_slots * chunk == pytest.approx(m_sgc_load(n, B, W, lam)) == scheme.load
        if lam < n:
            assert chunk == pytest.approx((lam + 1) * partition)  # one GC task = λ+1 partitions
        parts = scheme.split_job_indices(100_000)
        assert len(parts) == scheme.n_parts
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(100_000))
        assert abs(len(parts[0]) - chunk * 100_000) <= 1


def test_scheme_properties_use_the_load_and_delay_formulas():
    sr = SelectiveRepeatSGC.create(8, 2, 5, 5, n_jobs=4)
    assert (sr.s, sr.delay, sr.n_rounds, sr.load) == (2, 2, 6, sr_sgc_load(8, 2, 5, 5))
    assert sr.deadline(3) == 5
    m = MultiplexedSGC.create(8, 2, 4, 2, n_jobs=4)
    assert (m.delay, m.n_rounds, m.n_slots, m.load) == (4, 8, 5, m_sgc_load(8, 2, 4, 2))


@pytest.mark.parametrize(("B", "W", "lam"), [(1, 2, 3), (2, 3, 3), (2, 5, 2), (3, 4, 5), (1, 1, 2)])
def test_sampled_patterns_conform_and_reach_the_model_limits(B, W, lam):
    rng = np.random.default_rng(0)
    pattern = sample_bursty_pattern(200, 8, B, W, lam, rng, start_prob=0.5, continue_prob=0.9)
    assert conforms(pattern, B, W, lam)
    distinct_per_window = [pattern[r : r + W].any(axis=0).sum() for r in range(200 - W + 1)]
    assert max(distinct_per_window) == lam


def test_conforms_detects_spatial_and_temporal_violations():
    n = 4
    pattern = np.zeros((6, n), dtype=bool)
    pattern[0, 0] = pattern[1, 0] = True  # a burst of exactly B = 2
    pattern[4, 0] = True  # only 3 < W rounds after round 1
    assert not conforms(pattern, B=2, W=4, lam=2)
    pattern[4, 0], pattern[5, 0] = False, True  # W rounds after round 1: allowed
    assert conforms(pattern, B=2, W=4, lam=2)
    pattern[2, 0] = True  # a burst of B + 1 rounds
    assert not conforms(pattern, B=2, W=4, lam=2)
    pattern[2, 0] = False
    pattern[3, [1, 2]] = True  # workers 0, 1, 2 within one window of W = 4
    assert not conforms(pattern, B=2, W=4, lam=2)
    assert conforms(pattern, B=2, W=4, lam=3)


def test_gc_per_round_model_is_the_1_1_s_model():
    pattern = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    assert conforms(pattern, 1, 1, 2)
    assert not conforms(pattern, 1, 1, 1)


@pytest.mark.parametrize("scheme", _schemes(n_jobs=12))
def test_every_job_decodes_by_its_deadline_on_conforming_patterns(scheme):
    rng = np.random.default_rng(3)
    for _ in range(15):
        pattern = sample_bursty_pattern(
            scheme.n_rounds, scheme.n, scheme.B, scheme.W, scheme.lam, rng, 0.4, 0.9
        )
        assert scheme.missed_deadlines(scheme.simulate(pattern)) == []


@pytest.mark.parametrize(
    "scheme",
    [
        SelectiveRepeatSGC.create(4, 1, 2, 2, n_jobs=3),
        SelectiveRepeatSGC.create(3, 2, 3, 2, n_jobs=2),
        MultiplexedSGC.create(4, 1, 3, 2, n_jobs=2),
        MultiplexedSGC.create(3, 2, 3, 2, n_jobs=1),  # M-SGC jobs do not interact
    ],
    ids=["SR-4-122", "SR-3-232", "M-4-132", "M-3-232"],
)
def test_every_job_decodes_on_every_conforming_pattern_of_a_small_run(scheme):
    n, rounds = scheme.n, scheme.n_rounds
    subsets = [np.array(bits, dtype=bool) for bits in product([False, True], repeat=n)]
    count = 0

    def extend(prefix: np.ndarray) -> None:
        nonlocal count
        if len(prefix) == rounds:
            count += 1
            assert scheme.missed_deadlines(scheme.simulate(prefix)) == [], prefix.astype(int)
            return
        for row in subsets:
            if round_conforms(prefix, row, scheme.B, scheme.W, scheme.lam):
                extend(np.vstack([prefix, row]))

    extend(np.zeros((0, n), dtype=bool))
    assert count > 50  # the enumeration really ran


@pytest.mark.parametrize("scheme", _schemes(n_jobs=8))
def test_decoded_job_gradients_equal_the_uncoded_ones(scheme):
    rng = np.random.default_rng(4)
    pattern = sample_bursty_pattern(
        scheme.n_rounds, scheme.n, scheme.B, scheme.W, scheme.lam, rng, 0.4, 0.9
    )
    assert pattern.any()
    job_partials = rng.standard_normal((scheme.n_jobs, scheme.n_parts, 5))
    decoded = _decode_by_deadlines(scheme, pattern, job_partials)
    assert len(decoded) == scheme.n_jobs
    np.testing.assert_allclose(decoded, job_partials.sum(axis=1), atol=1e-8, rtol=0)


@pytest.mark.parametrize(
    "scheme",
    [SelectiveRepeatSGC.create(4, 1, 2, 2, n_jobs=4), MultiplexedSGC.create(4, 1, 2, 2, n_jobs=4)],
    ids=["SR", "M"],
)
def test_a_violating_pattern_breaks_decoding_and_the_stopping_rule_waits_for_all(scheme):
    # Worker 0 straggles in rounds 0 and 1 (B = 1 allows one round per W = 2 window) and
    # worker 1 in round 0: SR-SGC (s = 1) needs worker 0's job-0 repeat in round 1, M-SGC
    # needs worker 0's only D1 chunk of job 0 by round 1.
    violating = np.zeros((scheme.n_rounds, 4), dtype=bool)
    violating[0, [0, 1]] = True
    violating[1, 0] = True
    assert not conforms(violating, scheme.B, scheme.W, scheme.lam)
    assert 0 in scheme.missed_deadlines(scheme.simulate(violating))

    history = np.zeros((0, 4), dtype=bool)
    waited = []
    for r in range(scheme.n_rounds):
        arrival_times_s = np.where(violating[r], 5.0, 1.0)
        stop = stopping_rule(arrival_times_s, history, scheme.B, scheme.W, scheme.lam, mu=1.0)
        waited.append(stop.waited_for_all)
        history = np.vstack([history, stop.stragglers])
    assert waited[:2] == [False, True]
    assert conforms(history, scheme.B, scheme.W, scheme.lam)
    assert scheme.missed_deadlines(scheme.simulate(history)) == []


def test_stopping_rule_thresholds_at_one_plus_mu_times_the_fastest():
    times = np.array([1.0, 1.5, 2.5, 3.0])
    empty = np.zeros((0, 4), dtype=bool)
    stop = stopping_rule(times, empty, B=1, W=2, lam=2, mu=1.0)
    assert (stop.stragglers.tolist(), stop.duration_s, stop.waited_for_all) == (
        [False, False, True, True],
        2.0,
        False,
    )
    stop = stopping_rule(times, empty, B=1, W=2, lam=1, mu=1.0)
    assert (stop.stragglers.any(), stop.duration_s, stop.waited_for_all) == (False, 3.0, True)
    stop = stopping_rule(np.array([1.0, 1.2]), np.zeros((0, 2), dtype=bool), 1, 2, 0, mu=1.0)
    assert (stop.duration_s, stop.waited_for_all) == (1.2, False)


def test_sr_sgc_lowest_indexed_missing_workers_repeat_the_old_job():
    scheme = SelectiveRepeatSGC.create(8, 1, 3, 4, n_jobs=5)  # s = ⌈4/3⌉ = 2
    delivered = np.full((1, 8), 0)
    delivered[0, [1, 4, 6, 7]] = IDLE
    np.testing.assert_array_equal(scheme.tasks(1, delivered), [1, 0, 1, 1, 0, 1, 1, 1])
    delivered = np.vstack([delivered, scheme.tasks(1, delivered)])
    assert scheme.is_decodable(0, delivered)
    assert scheme.tasks(6, np.full((6, 8), IDLE)).tolist() == [IDLE] * 8


def test_m_sgc_straggler_finishes_its_d1_chunks_before_any_coded_task():
    scheme = MultiplexedSGC.create(4, 1, 3, 1, n_jobs=3)  # slots: D1, D1, D2 group 0
    delivered = np.full((1, 4, 3), IDLE)
    delivered[0, :, 0] = [0, IDLE, 0, 0]  # worker 1 straggled in round 0
    delivered = np.vstack([delivered, scheme.tasks(1, delivered)[None]])
    np.testing.assert_array_equal(delivered[1, :, 1], [1, 0, 1, 1])  # job 0, slot 1
    np.testing.assert_array_equal(scheme.tasks(2, delivered)[:, 2], [2, 1, 2, 2])  # job 0, slot 2
    first_worker = scheme.assignments(2, scheme.tasks(2, delivered))[:3]
    assert first_worker == [(0, 2, 0), (0, 1, 1), (0, 0, 2)]  # (worker, job, task) per slot


def test_m_sgc_needs_n_minus_lambda_coded_results_in_every_group():
    scheme = MultiplexedSGC.create(4, 1, 2, 1, n_jobs=1)  # round 0: D1 chunk, round 1: group 0
    too_many = np.zeros((scheme.n_rounds, 4), dtype=bool)
    too_many[1, [0, 1]] = True  # λ + 1 coded results of job 0 lost
    assert not conforms(too_many, scheme.B, scheme.W, scheme.lam)
    assert scheme.missed_deadlines(scheme.simulate(too_many)) == [0]
    with pytest.raises(ValueError, match="cannot decode"):
        _decode_by_deadlines(scheme, too_many, np.ones((1, scheme.n_parts, 2)))
    too_many[1, 0] = False
    assert scheme.missed_deadlines(scheme.simulate(too_many)) == []


def test_sgc_on_opaque_node_ids_gives_worker_i_its_tasks_at_the_node_of_partition_i(
        monkeypatch):
    """On a grid whose node ids are ≥ 2^63 in shuffled order (the strategy built by hand, so
    it learns the partition map by asking), each worker's tasks go to the node holding its
    partition, replies are filed under that worker, and the run is delayed GD exactly."""
    from tests.conftest import BASE, scenario
    from tests.opaque_grid import OpaqueGrid, as_server_app

    n, rounds, lr = 4, 4, 0.05
    data = copy.deepcopy(BASE)
    data["task"] = {"name": "least_squares", "params": {"dim": 5, "samples_per_client": 24}}
    data["clients"] = {"count": n}
    task = make_task(scenario(data))
    as_server_app(monkeypatch, task)
    grid = OpaqueGrid(n, {MESSAGE_TYPE: train_sgc},
                      seed=3)
    strategy = SequentialGradientCodingGD(n, "m_sgc", B=1, W=2, lam=1)
    result = strategy.start(grid, task.initial_arrays(), num_rounds=rounds,  # type: ignore[arg-type]
                            train_config=ConfigRecord({"lr": lr}))
    sent = [m for m in grid.sent if m.metadata.message_type == MESSAGE_TYPE]
    assert {m.metadata.dst_node_id for m in sent} == set(grid.ids)
    delay = m_sgc_delay(1, 2, 1)
    A, b = task.test_data(None).x.numpy(), task.test_data(None).y.numpy()
    xs = [flatten(task.initial_arrays())]
    for t in range(rounds):
        step = A.T @ (A @ xs[t - delay] - b) / len(b) if t >= delay else 0.0
        xs.append(xs[t] - lr * step)
    np.testing.assert_allclose(flatten(result.arrays), xs[-1], atol=1e-10, rtol=0)
