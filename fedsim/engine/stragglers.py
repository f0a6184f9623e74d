"""The (B, W, λ)-bursty straggler model (Krishnan, Ebrahimi, Khisti, ICLR 2023).

A property of the device population: `fedsim.engine.devices` draws it for the `bursty`
straggling kind; the model's rule itself (`round_conforms`) is `fedsim.core.stragglers`, which
the sequential-gradient-coding strategies' stopping rule also uses.
"""

from __future__ import annotations

import numpy as np

from fedsim.core.stragglers import round_conforms


def sample_bursty_pattern(
    n_rounds: int,
    n: int,
    B: int,
    W: int,
    lam: int,
    rng: np.random.Generator,
    start_prob: float = 0.2,
    continue_prob: float = 0.8,
) -> np.ndarray:
    """A random straggler pattern [n_rounds, n] that conforms to the (B, W, λ) model.

    Round by round, workers in random order propose to straggle (with `continue_prob` if they
    straggled in the previous round, else `start_prob`); a proposal is kept only if the pattern
    still conforms. High probabilities push patterns to the model's limits (full bursts, λ
    distinct stragglers per window), which is what the decodability tests need.
    """
    pattern = np.zeros((n_rounds, n), dtype=bool)
    for r in range(n_rounds):
        for i in rng.permutation(n):
            straggled_before = r > 0 and pattern[r - 1, i]
            if rng.random() < (continue_prob if straggled_before else start_prob):
                pattern[r, i] = True
                pattern[r, i] = round_conforms(pattern[:r], pattern[r], B, W, lam)
    return pattern
