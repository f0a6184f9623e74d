"""The simulated device population: speed, availability, straggling, dropout.

Per-device properties (tier, speed, cyclic phase) are drawn once from the
scenario seed. Per-round states (online or not, in a slow burst or not) are
vectors over the whole population computed one round at a time, so a round
costs O(number of devices) numpy work whatever the population size. Draws for
one message are keyed by (device, round, job), never taken from a shared
stream, so results do not depend on the order in which jobs are processed.
"""

from __future__ import annotations

import numpy as np

from fedsim.scenario import (
    AlwaysOn,
    BernoulliAvailability,
    ClientsSpec,
    CyclicAvailability,
    DeviceTier,
    GilbertElliottStraggling,
    IidStraggling,
    LinkSpec,
    LogNormal,
    MarkovAvailability,
    Uniform,
)
from fedsim.seeding import rng


def tier_counts(shares: list[float], n: int) -> list[int]:
    """Split n devices by shares with the largest-remainder method (sums to n exactly)."""
    total = sum(shares)
    exact = [s / total * n for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


class _MarkovVector:
    """A two-state chain per device, stepped one round at a time (vectorised).

    `p_up[i]`: P(state 0 -> 1), `p_down[i]`: P(1 -> 0); `init` gives round 0.
    States for earlier rounds than the last computed are recomputed from 0.
    """

    def __init__(self, seed: int, name: str, p_up: np.ndarray, p_down: np.ndarray,
                 init: np.ndarray) -> None:
        self._seed, self._name = seed, name
        self._p_up, self._p_down = p_up, p_down
        self._init = init
        self._round, self._state = 0, init.copy()

    def at(self, round_: int) -> np.ndarray:
        if round_ < self._round:
            self._round, self._state = 0, self._init.copy()
        while self._round < round_:
            self._round += 1
            u = rng(self._seed, self._name, self._round).random(self._state.shape[0])
            self._state = np.where(self._state, u >= self._p_down, u < self._p_up)
        return self._state


class DevicePopulation:
    """Every simulated device of a scenario, indexed 0..n-1 (the partition id)."""

    def __init__(self, spec: ClientsSpec, seed: int) -> None:
        self.n = spec.count
        self.tiers: list[DeviceTier] = list(spec.devices)
        self.seed = seed
        counts = tier_counts([t.share for t in self.tiers], self.n)
        tier_of = np.repeat(np.arange(len(self.tiers)), counts)
        rng(seed, "tiers").shuffle(tier_of)
        self.tier_of = tier_of
        # position of each device within its tier: index into per-tier state vectors
        self._rank_in_tier = np.empty(self.n, dtype=np.int64)
        for t in range(len(self.tiers)):
            members = np.flatnonzero(tier_of == t)
            self._rank_in_tier[members] = np.arange(len(members))
        self.speed = np.empty(self.n)
        for t, tier in enumerate(self.tiers):
            members = np.flatnonzero(tier_of == t)
            self.speed[members] = _draw(tier.speed, len(members), rng(seed, "speed", t))
        self._availability = self._build_availability()
        self._bursts = self._build_bursts()

    # ------------------------------------------------------------ availability

    def _build_availability(self) -> list[tuple[np.ndarray, object]]:
        """One (members, model) pair per tier; a model maps a round to a bool vector."""
        out = []
        for t, tier in enumerate(self.tiers):
            members = np.flatnonzero(self.tier_of == t)
            out.append((members, self._tier_availability(t, tier, len(members))))
        return out

    def _tier_availability(self, t: int, tier: DeviceTier, m: int) -> object:
        spec = tier.availability
        if isinstance(spec, AlwaysOn):
            return None
        if isinstance(spec, BernoulliAvailability):
            return spec
        if isinstance(spec, MarkovAvailability):
            up, down = spec.q, spec.q * (1 / spec.p - 1)
            if down > 1:
                up, down = up / down, 1.0
            init = rng(self.seed, "availability-init", t).random(m) < spec.p
            return _MarkovVector(self.seed, f"availability-{t}", np.full(m, up),
                                 np.full(m, down), init)
        assert isinstance(spec, CyclicAvailability)
        on = max(1, round(spec.period * spec.p))
        length = on + max(1, spec.period - on)
        phase = rng(self.seed, "cyclic-phase", t).integers(0, length - on, size=m)
        return (on, length, phase)

    def available(self, round_: int) -> np.ndarray:
        """Boolean vector: which devices are online in `round_` (0-based)."""
        online = np.ones(self.n, dtype=bool)
        for t, (members, model) in enumerate(self._availability):
            if model is None:
                continue
            if isinstance(model, BernoulliAvailability):
                online[members] = rng(self.seed, "availability", t, round_).random(
                    len(members)) < model.p
            elif isinstance(model, _MarkovVector):
                online[members] = model.at(round_)
            else:
                on, length, phase = model
                online[members] = (round_ + phase) % length >= length - on
        return online

    # ------------------------------------------------------------ straggling, dropout

    def _build_bursts(self) -> dict[int, _MarkovVector]:
        bursts = {}
        for t, tier in enumerate(self.tiers):
            spec = tier.straggling
            if isinstance(spec, GilbertElliottStraggling):
                m = int(np.sum(self.tier_of == t))
                bursts[t] = _MarkovVector(self.seed, f"burst-{t}", np.full(m, spec.p_enter),
                                          np.full(m, spec.p_exit), np.zeros(m, dtype=bool))
        return bursts

    def slowdown(self, node: int, round_: int, job: int) -> float:
        """Factor (>= 1) by which this job of `node` is slower than its nominal speed."""
        t = int(self.tier_of[node])
        spec = self.tiers[t].straggling
        if isinstance(spec, IidStraggling):
            hit = rng(self.seed, "straggle", node, round_, job).random() < spec.p
            return spec.slowdown if hit else 1.0
        if isinstance(spec, GilbertElliottStraggling):
            in_burst = self._bursts[t].at(round_)[self._rank_in_tier[node]]
            return spec.slowdown if in_burst else 1.0
        return 1.0

    def dropout_at(self, node: int, round_: int, job: int) -> float | None:
        """Fraction of the job done when the device drops out, or None if it finishes."""
        p = self.tiers[int(self.tier_of[node])].dropout_p
        if p == 0:
            return None
        r = rng(self.seed, "dropout", node, round_, job)
        return float(r.random()) if r.random() < p else None

    # ------------------------------------------------------------ links

    def uplink(self, node: int, default: LinkSpec) -> LinkSpec:
        return self.tiers[int(self.tier_of[node])].uplink or default

    def downlink(self, node: int, default: LinkSpec) -> LinkSpec:
        return self.tiers[int(self.tier_of[node])].downlink or default


def _draw(value: float | LogNormal | Uniform, size: int, gen: np.random.Generator) -> np.ndarray:
    if isinstance(value, LogNormal):
        return value.median * np.exp(value.sigma * gen.standard_normal(size))
    if isinstance(value, Uniform):
        return gen.uniform(value.low, value.high, size)
    return np.full(size, float(value))
