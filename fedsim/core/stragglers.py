"""The (B, W, λ)-bursty straggler model's rule (Krishnan, Ebrahimi, Khisti, "Sequential
Gradient Coding for Straggler Mitigation", ICLR 2023, arXiv 2211.13802).

Shared by the device population that draws such patterns (`fedsim.engine.stragglers`) and by
the sequential-gradient-coding master that decides from it when to stop waiting.
"""

from __future__ import annotations

import numpy as np


def check_model(B: int, W: int, lam: int) -> None:
    if not 1 <= B <= W or lam < 0:
        raise ValueError(f"the (B, W, λ) model needs 1 ≤ B ≤ W and λ ≥ 0, got ({B}, {W}, {lam})")


def round_conforms(history: np.ndarray, is_straggler: np.ndarray, B: int, W: int, lam: int) -> bool:
    """Whether round r = len(history) with stragglers `is_straggler` keeps the pattern conforming.

    The (B, W, λ)-bursty model asks, in every window of W consecutive rounds:
      (spatial)  at most λ distinct workers straggle;
      (temporal) each worker's straggles fit in one burst of at most B consecutive rounds.
    Checked, as in the official code, on the windows that end at round r: at most λ distinct
    stragglers in rounds r−W+1..r, and a worker straggling in round r did not straggle in rounds
    r−W+1..r−B. `history` is the boolean pattern [r, n] of the earlier rounds.

    GC's own design model "at most s stragglers per round" is the (1, 1, s) model.
    """
    check_model(B, W, lam)
    r = history.shape[0]
    recent = history[max(0, r - W + 1) : r].any(axis=0)
    if np.count_nonzero(recent | is_straggler) > lam:
        return False
    outside_burst = history[max(0, r - W + 1) : max(0, r - B + 1)].any(axis=0)
    return not np.any(outside_burst & is_straggler)


def conforms(pattern: np.ndarray, B: int, W: int, lam: int) -> bool:
    """Whether a boolean straggler pattern [rounds, n] satisfies the (B, W, λ)-bursty model."""
    pattern = np.asarray(pattern, dtype=bool)
    return all(round_conforms(pattern[:r], pattern[r], B, W, lam) for r in range(len(pattern)))
