"""Keyed random streams.

Every random draw in a run comes from a generator keyed by the scenario seed and
what it is for (a concern name, a node id, a round, ...), never from a stream
shared across nodes. That makes a draw independent of the order in which
messages are processed, of the number of actors and of the backend, which is
what keeps runs bit-for-bit reproducible.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def _key(part: int | str) -> int:
    if isinstance(part, str):
        return zlib.crc32(part.encode())
    if part < 0:
        raise ValueError(f"random-stream keys must be non-negative, got {part}")
    return int(part)


def seed_sequence(seed: int, *keys: int | str) -> np.random.SeedSequence:
    """The seed sequence of the stream named by `keys` under the run's `seed`."""
    return np.random.SeedSequence([_key(seed), *(_key(k) for k in keys)])


def rng(seed: int, *keys: int | str) -> np.random.Generator:
    """A numpy generator for one concern, e.g. ``rng(seed, "uplink-noise", node, round)``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *keys)))


def int_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit integer seed for libraries that take one (torch, Python's `random`)."""
    return int(seed_sequence(seed, *keys).generate_state(1, dtype=np.uint64)[0] >> 1)


# numpy's SeedSequence (O'Neill's seed_seq mixing into a 4-word pool), in uint32 arithmetic
_MASK32 = 0xFFFFFFFF
_POOL = 4


@functools.lru_cache(maxsize=16)
def _hash_constants(init: int, mult: int, n: int) -> tuple[np.uint32, ...]:
    """The n + 1 constants a SeedSequence hash uses in turn (`init` times `mult` to the
    0..n): they do not depend on the data."""
    out, h = [], init
    for _ in range(n + 1):
        out.append(np.uint32(h))
        h = (h * mult) & _MASK32
    return tuple(out)


def _words(key: int) -> list[int]:
    """The 32-bit words numpy's SeedSequence takes from a non-negative int, low first."""
    out = []
    while key:
        out.append(key & _MASK32)
        key >>= 32
    return out or [0]


def int_seeds(seed: int, *keys: int | str | Sequence[int]) -> list[int]:
    """`int_seed(seed, *row)` for every row of `keys`, computed for all rows at once.

    A key is an int or a string (the same in every row) or a sequence of ints (one per
    row, each below 2^32). The grid seeds every job of a push; numpy builds one
    SeedSequence per call (~20 us each), while this runs its mixing as array operations
    over the rows. Same integers as `int_seed`, bit for bit (`tests/test_seeding.py`).
    """
    columns: list[Any] = []
    rows = None
    for key in (seed, *keys):
        if isinstance(key, int | str):
            columns.extend(_words(_key(key)))
            continue
        column = np.asarray(key, dtype=np.int64)
        if column.size and (column.min() < 0 or column.max() > _MASK32):
            return [int_seed(seed, *row) for row in _rows(keys)]
        columns.append(column.astype(np.uint32))
        rows = column.size
    if rows is None:
        return [int_seed(seed, *keys)]  # type: ignore[arg-type]
    entropy = [c if isinstance(c, np.ndarray) else np.full(rows, c, np.uint32) for c in columns]
    entropy += [np.zeros(rows, np.uint32)] * (_POOL - len(entropy))
    mixes = _POOL + _POOL * (_POOL - 1) + _POOL * (len(entropy) - _POOL)
    hash_a = _hash_constants(0x43B0D7E5, 0x931E8875, mixes)  # mix k: xor h[k], times h[k+1]
    calls = iter(range(mixes))
    shift, mix_l, mix_r = np.uint32(16), np.uint32(0xCA01F9DD), np.uint32(0x4973F715)

    def hashmix(value: np.ndarray) -> np.ndarray:
        k = next(calls)
        value = value ^ hash_a[k]
        value *= hash_a[k + 1]
        value ^= value >> shift
        return value

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        result = mix_l * x - mix_r * y
        result ^= result >> shift
        return result

    pool = [hashmix(entropy[i]) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    # generate_state(1, np.uint64): two 32-bit words, low first, hashed with INIT_B/MULT_B
    hash_b = _hash_constants(0x8B51F9DD, 0x58F38DED, 2)
    state = []
    for i, word in enumerate(pool[:2]):
        value = word ^ hash_b[i]
        value *= hash_b[i + 1]
        value ^= value >> shift
        state.append(value.astype(np.uint64))
    return ((state[0] | (state[1] << np.uint64(32))) >> np.uint64(1)).tolist()


def _rows(keys: tuple[int | str | Sequence[int], ...]) -> list[tuple[int | str, ...]]:
    """The rows of `int_seeds`'s keys, one tuple each."""
    (n,) = {len(k) for k in keys if not isinstance(k, int | str)}
    return [tuple(k if isinstance(k, int | str) else int(k[i]) for k in keys) for i in range(n)]
