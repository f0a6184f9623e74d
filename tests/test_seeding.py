"""Keyed seeds: the grid's batched `int_seeds` gives exactly `int_seed`'s integers (numpy's
SeedSequence, one per row)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedsim.core.seeding import int_seed, int_seeds


@pytest.mark.parametrize("trial", range(40))
def test_int_seeds_equal_one_seed_sequence_per_row(trial: int) -> None:
    draw = random.Random(trial)
    rows = draw.randint(1, 60)
    seed = draw.choice([0, 1, 12345, draw.getrandbits(64), draw.getrandbits(100)])
    nodes = [draw.getrandbits(draw.choice([1, 8, 32])) for _ in range(rows)]
    jobs = [draw.getrandbits(draw.choice([1, 4, 32])) for _ in range(rows)]
    tail = draw.choice([(), (7,), ("noise", 0), (2**40,)])
    got = int_seeds(seed, "job", nodes, trial, jobs, *tail)
    assert got == [int_seed(seed, "job", n, trial, j, *tail)
                   for n, j in zip(nodes, jobs, strict=True)]


def test_int_seeds_take_keys_above_32_bits_and_short_entropy() -> None:
    assert int_seeds(3, [2**40, 5]) == [int_seed(3, 2**40), int_seed(3, 5)]  # 2 words, 1 word
    assert int_seeds(0, [0, 1, 2]) == [int_seed(0, k) for k in range(3)]  # pool padded with 0s
    assert int_seeds(0, "job", np.array([], dtype=np.int64), 0) == []
    with pytest.raises(ValueError, match="non-negative"):
        int_seeds(0, [-1])
