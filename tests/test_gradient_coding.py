"""Sanity checks of gradient coding (Tandon et al., ICML 2017, arXiv 1612.03301)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from itertools import combinations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Context, Message

from fedsim.core.codec import flatten
from fedsim.engine.tasks import make_task
from strategies.gradient_coding import (
    MESSAGE_TYPE,
    GradientCodingGD,
    cyclic_repetition_B,
    data_assignment,
    decode,
    decode_received,
    decoding_vector,
    encode,
    encoding_matrix,
    first_decodable,
    fractional_repetition_B,
    gc_load,
    is_decodable,
    train_gradient_coding,
)
from tests.opaque_grid import OpaqueGrid, as_server_app

CASES = [("frc", 6, 2), ("crc", 6, 2), ("crc", 7, 3), ("crc", 10, 4)]


def _messages(B: np.ndarray, partial_grads: np.ndarray, workers) -> dict[int, np.ndarray]:
    """Each worker encodes from only the partitions it holds (the others are zeroed)."""
    messages = {}
    for i in workers:
        held = np.zeros_like(partial_grads)
        held[data_assignment(B)[i]] = partial_grads[data_assignment(B)[i]]
        messages[i] = encode(B[i], held)
    return messages


@pytest.mark.parametrize(("scheme", "n", "s"), CASES)
def test_every_straggler_set_of_size_s_decodes_the_exact_gradient(scheme, n, s):
    B = encoding_matrix(scheme, n, s, seed=0)
    partial_grads = np.random.default_rng(1).standard_normal((n, 5))
    full = partial_grads.sum(axis=0)
    patterns = list(combinations(range(n), s))
    worst = 0.0
    for stragglers in patterns:
        alive = [i for i in range(n) if i not in stragglers]
        a = decoding_vector(B, alive)
        assert np.all(a[list(stragglers)] == 0)
        assert np.abs(a @ B - 1).max() < 1e-8
        worst = max(worst, np.abs(decode(a, _messages(B, partial_grads, alive)) - full).max())
    assert len(patterns) == {6: 15, 7: 35, 10: 210}[n]
    assert worst < 1e-8


@pytest.mark.parametrize(("scheme", "n", "s"), CASES)
def test_every_partition_is_held_by_s_plus_one_workers(scheme, n, s):
    B = encoding_matrix(scheme, n, s, seed=0)
    assert np.all(np.count_nonzero(B, axis=0) >= s + 1)
    assert np.all(np.count_nonzero(B, axis=1) == s + 1)  # Theorem 1's bound is met: load (s+1)/n
    assert gc_load(n, s) == (s + 1) / n


def test_crc_worker_holds_its_cyclic_window_and_rows_span_null_space_of_dim_n_minus_s():
    n, s = 7, 3
    B = cyclic_repetition_B(n, s, np.random.default_rng(0))
    assert data_assignment(B) == [sorted((i + np.arange(s + 1)) % n) for i in range(n)]
    assert np.linalg.matrix_rank(B) == n - s


def test_frc_is_block_diagonal_all_ones_groups():
    B = fractional_repetition_B(6, 2)
    assert data_assignment(B) == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3
    assert set(np.unique(B)) == {0.0, 1.0}


@pytest.mark.parametrize(("n", "s"), [(6, 2), (7, 3), (10, 4)])
def test_crc_cannot_decode_with_s_plus_one_stragglers(n, s):
    B = encoding_matrix("crc", n, s, seed=0)
    for stragglers in combinations(range(n), s + 1):
        alive = [i for i in range(n) if i not in stragglers]
        assert not is_decodable(B, alive)


def test_frc_fails_with_s_plus_one_stragglers_exactly_when_a_group_is_wiped_out():
    n, s = 6, 2
    B = fractional_repetition_B(n, s)
    undecodable = [
        stragglers
        for stragglers in combinations(range(n), s + 1)
        if not is_decodable(B, [i for i in range(n) if i not in stragglers])
    ]
    assert undecodable == [(0, 1, 2), (3, 4, 5)]


def test_undecodable_set_raises_a_clear_error():
    B = encoding_matrix("crc", 6, 2, seed=0)
    with pytest.raises(ValueError, match="cannot decode"):
        decoding_vector(B, [0, 1, 2])
    with pytest.raises(ValueError, match="needs messages"):
        decode(decoding_vector(B, [0, 1, 2, 3]), {0: np.ones(2)})


def test_first_decodable_is_the_shortest_decoding_prefix():
    frc = fractional_repetition_B(6, 2)
    assert first_decodable(frc, [1, 2, 4, 0, 5, 3]) == [1, 2, 4]  # one arrival per group
    crc = encoding_matrix("crc", 6, 2, seed=0)
    order = [5, 3, 0, 1, 4, 2]
    prefix = first_decodable(crc, order)
    assert prefix == order[: 6 - 2]
    assert not is_decodable(crc, prefix[:-1])
    with pytest.raises(ValueError, match="cannot decode"):
        first_decodable(crc, order[:3])


def test_gc_gradient_descent_matches_plain_gradient_descent():
    """GC-GD iterates equal plain GD iterates (0 and s stragglers)."""
    rng = np.random.default_rng(2)
    n, s, dim = 6, 2, 4
    features = rng.standard_normal((n, 10, dim))
    targets = rng.standard_normal((n, 10))
    B = encoding_matrix("crc", n, s, seed=3)

    def partial_grads(w):
        return np.einsum("jkd,jk->jd", features, features @ w - targets)

    plain = coded_all = coded_stragglers = np.zeros(dim)
    for _ in range(20):
        plain = plain - 0.005 * partial_grads(plain).sum(axis=0)
        messages = _messages(B, partial_grads(coded_all), range(n))
        coded_all = coded_all - 0.005 * decode_received(B, messages)
        messages = _messages(B, partial_grads(coded_stragglers), range(s, n))
        coded_stragglers = coded_stragglers - 0.005 * decode_received(B, messages)
    np.testing.assert_allclose(coded_all, plain, atol=1e-10)
    np.testing.assert_allclose(coded_stragglers, plain, atol=1e-10)


def test_constructions_validate_their_parameters():
    with pytest.raises(ValueError, match=r"\(s\+1\) \| n"):
        fractional_repetition_B(7, 2)
    with pytest.raises(ValueError, match="0 ≤ s < n"):
        encoding_matrix("crc", 4, 4)
    with pytest.raises(ValueError, match="unknown"):
        encoding_matrix("mds", 4, 1)  # type: ignore[arg-type]


def test_encoding_matrix_is_reproducible_from_its_seed():
    np.testing.assert_array_equal(encoding_matrix("crc", 7, 3, 5), encoding_matrix("crc", 7, 3, 5))
    assert not np.allclose(encoding_matrix("crc", 7, 3, 5), encoding_matrix("crc", 7, 3, 6))


# ------------------------------------------------------------------ on a grid with opaque ids

ClientFn = Callable[[Message, Context], Message]


def test_gc_on_opaque_node_ids_sends_worker_i_row_i_at_the_node_of_partition_i(monkeypatch):
    """Worker i is partition i, wherever its node's id falls: the master learns the map (the
    strategy is built by hand, without services), sends row i of B to the node that holds
    partition i, and decodes the exact gradient; the node of partition 5 is offline."""
    from tests.conftest import BASE, scenario

    data = copy.deepcopy(BASE)
    data["task"] = {"name": "least_squares", "params": {"dim": 5, "samples_per_client": 24}}
    data["clients"] = {"count": 6}
    task = make_task(scenario(data))
    as_server_app(monkeypatch, task)
    grid = OpaqueGrid(6, {MESSAGE_TYPE: train_gradient_coding}, offline=[5])
    assert min(grid.get_node_ids()) >= 2**63
    strategy = GradientCodingGD(6, s=2)
    lr, steps = 0.05, 3
    result = strategy.start(grid, task.initial_arrays(), num_rounds=steps,  # type: ignore[arg-type]
                            train_config=_config(lr))
    train = [m for m in grid.sent if m.metadata.message_type == MESSAGE_TYPE]
    assert len(train) == 5 * steps  # every online worker, every round
    for message in train:
        partition = grid.partition_of[message.metadata.dst_node_id]
        assert message.content["config"]["gc-row"] == strategy.B[partition].tolist()
    A, b = task.test_data(None).x.numpy(), task.test_data(None).y.numpy()
    x = flatten(task.initial_arrays())
    for _ in range(steps):
        x = x - lr * A.T @ (A @ x - b) / len(b)
    assert isinstance(result.arrays, ArrayRecord)
    np.testing.assert_allclose(flatten(result.arrays), x, atol=1e-10, rtol=0)


def _config(lr: float):  # the train config the runner hands `start`
    from flwr.app import ConfigRecord

    return ConfigRecord({"lr": lr})
