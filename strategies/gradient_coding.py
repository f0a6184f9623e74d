"""Gradient coding: exact distributed gradient descent that tolerates s stragglers.

Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding: Avoiding Stragglers in Distributed
Learning", ICML 2017 (arXiv 1612.03301). Reference code: ``rashisht1/gradient_coding``.
Specification: ``shared/algorithms/part-b.md`` section 3a.

The data are cut into n partitions D_1..D_n with partial gradients g_j. Worker i holds the
partitions in the support of row i of an encoding matrix B (n×n) and sends

    f_i = Σ_j B_ij g_j                                                          (encoding)

The master, having heard from a set F of workers, finds a supported on F with

    aᵀ B = 1ᵀ,  so that  Σ_{i∈F} a_i f_i = Σ_j g_j = g                         (decoding)

Such an a exists for every |F| ≥ n−s iff 1 lies in the row span of every (n−s)-row submatrix.
Theorem 1 of the paper: every partition must be held by at least s+1 workers, so the per-worker
load is at least (s+1)/n; both constructions here meet that bound.

This module is the numpy core (matrices, encoding, decoding, the master's stopping rule "first
decodable set"); the strategy that runs it on the simulator builds on these functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

GCScheme = Literal["frc", "crc"]

DECODE_ATOL = 1e-6
"""Largest ‖B_Fᵀ a − 1‖_∞ accepted as an exact decode (float64; CRC degrades as n grows)."""


def gc_load(n: int, s: int) -> float:
    """Normalised per-worker load (s+1)/n of a gradient code tolerating s of n stragglers."""
    return (s + 1) / n


def fractional_repetition_B(n: int, s: int) -> np.ndarray:
    """Fractional repetition code (FRC): B = I_{n/(s+1)} ⊗ 1_{(s+1)×(s+1)}.

    Workers form n/(s+1) groups of s+1 consecutive workers; every worker of group q holds the s+1
    partitions q(s+1)..q(s+1)+s and sends their plain sum. With ≤ s stragglers every group has a
    survivor, and the sum of one message per group is g (spec 3a(b)). Requires (s+1) | n.
    """
    _check_tolerance(n, s)
    if n % (s + 1):
        raise ValueError(f"FRC needs (s+1) | n, got n={n}, s={s}")
    return np.kron(np.eye(n // (s + 1)), np.ones((s + 1, s + 1)))


def cyclic_repetition_B(n: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Cyclic repetition code (CRC), the randomised construction of the official ``getB``.

    Row i is supported on S_i = {i, i+1, ..., i+s} mod n. Draw H ∈ R^{s×n} with i.i.d. N(0, 1)
    entries in its first n−1 columns and the last column set to minus the row sums (H·1 = 0); then
    set B_ii = 1 and B_{i, S_i∖{i}} = −(H_{:, S_i∖{i}})⁻¹ H_{:, i}. Every row lies in null(H), which
    has dimension n−s and contains 1, and with probability 1 any n−s rows span it (spec 3a(b)).
    The spec believes this is the paper's construction [memory]; it is the official code's.

    Gaussian H gets ill-conditioned as n grows (decode error ~1e−10 at n=10); for n in the tens
    and up prefer FRC.
    """
    _check_tolerance(n, s)
    h_free = rng.standard_normal((s, n - 1))
    H = np.hstack([h_free, -h_free.sum(axis=1, keepdims=True)])
    B = np.zeros((n, n))
    for i in range(n):
        others = (i + np.arange(1, s + 1)) % n
        B[i, i] = 1.0
        B[i, others] = -np.linalg.solve(H[:, others], H[:, i])
    return B


def encoding_matrix(scheme: GCScheme, n: int, s: int, seed: int = 0) -> np.ndarray:
    """The n×n encoding matrix of `scheme` ("frc" or "crc") tolerating s stragglers.

    `seed` drives CRC's random H (``numpy.random.default_rng(seed)``); FRC ignores it.
    """
    if scheme == "frc":
        return fractional_repetition_B(n, s)
    if scheme == "crc":
        return cyclic_repetition_B(n, s, np.random.default_rng(seed))
    raise ValueError(f"unknown gradient-coding scheme {scheme!r}; expected 'frc' or 'crc'")


def data_assignment(B: np.ndarray) -> list[list[int]]:
    """Partitions each worker must hold: the nonzero columns of its row of B."""
    return [np.flatnonzero(row).tolist() for row in np.asarray(B)]


def encode(B_row: np.ndarray, partial_grads: np.ndarray) -> np.ndarray:
    """A worker's message f_i = Σ_j B_ij g_j.

    `partial_grads` has shape [n, *grad_shape] (one row per partition); rows outside the support of
    `B_row` are never read, so a worker may leave the partitions it does not hold as zeros.
    """
    support = np.flatnonzero(B_row)
    return np.tensordot(B_row[support], np.asarray(partial_grads)[support], axes=1)


def decoding_vector(B: np.ndarray, alive: Sequence[int], atol: float = DECODE_ATOL) -> np.ndarray:
    """The decoding vector a (length n, zero off `alive`) with aᵀ B = 1ᵀ.

    Solves B_Fᵀ a_F = 1 by least squares for F = `alive` (the minimum-norm solution when F holds
    more workers than needed). The system is exactly consistent for every |F| ≥ n−s; a residual
    ‖B_Fᵀ a_F − 1‖_∞ above `atol` means F cannot decode, and raises ValueError.
    """
    B = np.asarray(B, dtype=float)
    n = B.shape[0]
    workers = np.unique(np.asarray(alive, dtype=int))
    if workers.size and (workers[0] < 0 or workers[-1] >= n):
        raise ValueError(f"worker ids must lie in [0, {n}), got {workers.tolist()}")
    a = np.zeros(n)
    if workers.size:
        a[workers] = np.linalg.lstsq(B[workers].T, np.ones(n), rcond=None)[0]
    residual = float(np.abs(a @ B - 1.0).max())
    if residual > atol:
        raise ValueError(
            f"workers {workers.tolist()} cannot decode the full gradient "
            f"(‖aᵀB − 1ᵀ‖∞ = {residual:.2e} > {atol:.0e})"
        )
    return a


def is_decodable(B: np.ndarray, alive: Sequence[int], atol: float = DECODE_ATOL) -> bool:
    """Whether the messages of `alive` determine g, i.e. 1ᵀ lies in the row span of B[alive]."""
    try:
        decoding_vector(B, alive, atol)
    except ValueError:
        return False
    return True


def first_decodable(B: np.ndarray, arrival_order: Sequence[int]) -> list[int]:
    """The master's stopping rule: the shortest prefix of `arrival_order` that decodes.

    For CRC this is the first n−s arrivals; for FRC it is the moment every group has one arrival,
    often earlier (spec 3a(b), per-round protocol). Decodability is monotone in the prefix, so the
    prefix length is found by bisection. Raises ValueError if even all of `arrival_order` cannot
    decode.
    """
    order = list(arrival_order)
    if not is_decodable(B, order):
        raise ValueError(f"arrivals {order} cannot decode the full gradient")
    lo, hi = 0, len(order)  # prefix lo does not decode (or is empty), prefix hi does
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if is_decodable(B, order[:mid]):
            hi = mid
        else:
            lo = mid
    return order[:hi]


def decode(a: np.ndarray, coded: Mapping[int, np.ndarray]) -> np.ndarray:
    """g = Σ_i a_i f_i over the received messages `coded` ({worker: f_i}).

    Every worker with a nonzero weight must be in `coded`.
    """
    missing = [int(i) for i in np.flatnonzero(a) if int(i) not in coded]
    if missing:
        raise ValueError(f"decoding vector needs messages from workers {missing}")
    return sum(a[i] * np.asarray(f) for i, f in coded.items() if a[i] != 0)


def decode_received(B: np.ndarray, coded: Mapping[int, np.ndarray]) -> np.ndarray:
    """Decode g from whichever workers' messages arrived: decode(decoding_vector(B, F), coded)."""
    return decode(decoding_vector(B, list(coded)), coded)


def _check_tolerance(n: int, s: int) -> None:
    if not 0 <= s < n:
        raise ValueError(f"need 0 ≤ s < n, got n={n}, s={s}")
