"""Keyed random streams.

Every random draw in a run comes from a generator keyed by the scenario seed and
what it is for (a concern name, a node id, a round, ...), never from a stream
shared across nodes. That makes a draw independent of the order in which
messages are processed, of the number of actors and of the backend, which is
what keeps runs bit-for-bit reproducible.
"""

from __future__ import annotations

import zlib

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
