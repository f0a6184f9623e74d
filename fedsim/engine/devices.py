"""The simulated device population: speed, availability, straggling, dropout.

Per-device properties (tier, speed, cyclic phase) are drawn once from the
scenario seed. Per-round states (online or not, in a slow burst or not) are
vectors over the whole population computed one round at a time, so a round
costs O(number of devices) numpy work whatever the population size. Draws for
one message are keyed by (device, round, job), never taken from a shared
stream, so results do not depend on the order in which jobs are processed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import (
    AlwaysOn,
    BernoulliAvailability,
    BurstyStraggling,
    ChannelSpec,
    ClientsSpec,
    CyclicAvailability,
    DeviceTier,
    GilbertElliottStraggling,
    IidStraggling,
    LabelCorrelation,
    LinkSpec,
    LogNormal,
    MarkovAvailability,
    Uniform,
)
from fedsim.core.seeding import rng
from fedsim.engine.channel import transfer_time
from fedsim.engine.stragglers import sample_bursty_pattern
from fedsim.engine.traces import TraceDevice, online_at

BURSTY_MEAN_SLOTS = 100_000
"""(device, round) slots of a tier's drawn (B, W, λ) pattern over which its mean straggling
rate is taken: that many / the tier's size rounds, between 100 and 1000 (drawing costs ~7 µs
a slot)."""


@dataclass(frozen=True)
class JobTime:
    """Virtual seconds of one job on one device: downlink, compute, uplink."""

    down: float
    compute: float
    up: float

    @property
    def total(self) -> float:
        """Push to reply: compute + (down + up)."""
        return float(self.compute + (self.down + self.up))


def tier_counts(shares: list[float], n: int) -> list[int]:
    """Split n devices by shares with the largest-remainder method (sums to n exactly)."""
    total = sum(shares)
    exact = [s / total * n for s in shares]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def tier_assignment(spec: ClientsSpec, seed: int) -> np.ndarray:
    """The tier of each device (by partition id): shares rounded, then shuffled by the seed.
    Devices from a trace are the last tier, `len(spec.devices)`. The pool reads it too, to
    send a tier's jobs to that tier's actors."""
    counts = tier_counts([t.share for t in spec.devices], spec.count - spec.traced)
    tier_of = np.repeat(np.arange(len(spec.devices) + 1), [*counts, spec.traced])
    rng(seed, "tiers").shuffle(tier_of)
    return tier_of


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


def label_distributions(labels: list[Any]) -> np.ndarray:
    """Row n: the label distribution q_n of client n from its labels 0..L-1 (arrays or tensors)."""
    ys = [np.asarray(y).astype(np.int64).ravel() for y in labels]
    num_labels = max((int(y.max()) + 1 for y in ys if y.size), default=1)
    counts = np.stack([np.bincount(y, minlength=num_labels) for y in ys]).astype(np.float64)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def label_correlated_p(q: np.ndarray, p_mean: float, spec: LabelCorrelation,
                       gen: np.random.Generator) -> np.ndarray:
    """FedAU's p_n = min(1, max(p_min, L p_mean sum_l q_nl m_l)) with m ~ Dir(alpha 1_L).

    The official code has no cap at 1; a probability needs it.
    """
    num_labels = q.shape[1]
    m = gen.dirichlet(np.full(num_labels, spec.alpha))
    return np.clip(num_labels * p_mean * (q @ m), spec.p_min, 1.0)


class _BurstyPattern:
    """A (B, W, λ)-bursty straggler pattern over m devices, drawn once from the seed.

    Rounds are drawn in growing blocks by `sample_bursty_pattern`, which draws round by round
    from one generator, so a longer draw extends a shorter one: the pattern of a round does not
    depend on how far ahead it was first asked for.
    """

    def __init__(self, seed: int, name: str, m: int, spec: BurstyStraggling) -> None:
        self._seed, self._name, self._m, self._spec = seed, name, m, spec
        self._pattern = np.zeros((0, m), dtype=bool)

    def at(self, round_: int) -> np.ndarray:
        if round_ >= len(self._pattern):
            s = self._spec
            self._pattern = sample_bursty_pattern(
                max(2 * len(self._pattern), round_ + 1, 16), self._m, s.B, s.W, s.lam,
                rng(self._seed, self._name), s.start_prob, s.continue_prob)
        return self._pattern[round_]

    @property
    def size(self) -> int:
        """Devices in the pattern (the tier's)."""
        return self._m

    def rate(self, rounds: int) -> float:
        """Fraction of (device, round) slots that straggle in the first `rounds` rounds."""
        self.at(rounds - 1)  # draws ahead: the rounds already drawn do not change
        return float(self._pattern[:rounds].mean()) if self._m else 0.0


@dataclass(frozen=True)
class ModelCost:
    """What training the task's model costs a device: FLOPs per training sample (3x the
    forward pass) and the memory it needs (`fedsim.engine.flops.model_cost`)."""

    train_flops_per_sample: float
    memory_bytes: float


TRACE_TIER = "trace"
"""The name of the tier of devices replayed from `clients.trace`."""


class DevicePopulation:
    """Every simulated device of a scenario, indexed 0..n-1 (the partition id).

    `labels(i)` gives client i's training labels; it is called (once per
    client) only when an availability model has `label_correlation`.
    `online_p[i]` is the participation probability device i's availability
    model was given (1 for always-on devices). `trace` holds the `clients.traced`
    devices of the trace tier (the last); `cost` is needed when a tier or trace device
    gives its compute in FLOP/s. A trace device without the memory the model needs is
    never online; a tier without it is a `ScenarioError`.
    """

    def __init__(self, spec: ClientsSpec, seed: int,
                 labels: Callable[[int], Any] | None = None,
                 trace: list[TraceDevice] | None = None, cost: ModelCost | None = None
                 ) -> None:
        self.n = spec.count
        self._labels = labels
        self._label_dist: np.ndarray | None = None
        self.tiers: list[DeviceTier] = list(spec.devices)
        self.seed = seed
        self.tier_of = tier_of = tier_assignment(spec, seed)
        self.trace = list(trace or ())
        if len(self.trace) != spec.traced:
            raise ValueError(f"{spec.traced} trace devices expected, {len(self.trace)} given")
        self._trace_members = np.flatnonzero(tier_of == len(self.tiers))
        if spec.traced:
            self.tiers.append(DeviceTier(name=TRACE_TIER))
        # position of each device within its tier: index into per-tier state vectors
        self._rank_in_tier = np.empty(self.n, dtype=np.int64)
        for t in range(len(self.tiers)):
            members = np.flatnonzero(tier_of == t)
            self._rank_in_tier[members] = np.arange(len(members))
        self.speed = np.empty(self.n)
        for t, tier in enumerate(spec.devices):
            members = np.flatnonzero(tier_of == t)
            flops = tier.compute_flops
            if flops is None:
                self.speed[members] = _draw(tier.samples_per_s, len(members), rng(seed, "speed", t))
                continue
            need = _needs_cost(cost, f"clients.devices.{t}")
            limit = tier.memory_limit
            if limit is not None and need.memory_bytes > limit:
                raise ScenarioError(
                    f"clients.devices.{t}.memory_bytes: training the model needs "
                    f"{need.memory_bytes:.3g} bytes, the tier's devices have {limit:.3g}; "
                    "give them more memory or train a smaller task.model")
            self.speed[members] = (_draw(flops, len(members), rng(seed, "speed", t))
                                   / need.train_flops_per_sample)
        self._trace_fits = np.ones(len(self.trace), dtype=bool)
        for i, (node, device) in enumerate(zip(self._trace_members, self.trace, strict=True)):
            if device.speed_sps is not None:
                self.speed[node] = device.speed_sps
                continue
            need = _needs_cost(cost, f"clients.trace (device {device.id!r})")
            assert device.flops is not None
            self.speed[node] = device.flops / need.train_flops_per_sample
            self._trace_fits[i] = (device.memory_bytes is None
                                   or device.memory_bytes >= need.memory_bytes)
        self._trace_links = {int(node): _trace_links(device) for node, device
                             in zip(self._trace_members, self.trace, strict=True)}
        self.online_p = np.ones(self.n)
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
        p = self._tier_p(t, spec, m)
        self.online_p[self.tier_of == t] = p
        if isinstance(spec, BernoulliAvailability):
            return p
        if isinstance(spec, MarkovAvailability):
            up, down = np.full(m, spec.q), spec.q * (1 / p - 1)
            scale = np.maximum(down, 1.0)  # P(on->off) > 1: scale both so that it is 1
            init = rng(self.seed, "availability-init", t).random(m) < p
            return _MarkovVector(self.seed, f"availability-{t}", up / scale, down / scale, init)
        assert isinstance(spec, CyclicAvailability)
        on = np.maximum(1, np.round(spec.period * p)).astype(np.int64)
        length = on + np.maximum(1, spec.period - on)
        if spec.phase is None:
            phase = rng(self.seed, "cyclic-phase", t).integers(0, length - on)
        else:
            phase = np.full(m, spec.phase)
        return (on, length, phase)

    def _tier_p(self, t: int, spec: BernoulliAvailability | MarkovAvailability
                | CyclicAvailability, m: int) -> np.ndarray:
        """The p of each device of tier t: the tier's p, given per device, or from labels."""
        where = f"clients.devices.{t}.availability"
        if spec.p_per_device is not None:
            if len(spec.p_per_device) != m:
                raise ScenarioError(f"{where}.p_per_device: {len(spec.p_per_device)} values for "
                                    f"the {m} devices of tier {t} (give one per device)")
            return np.asarray(spec.p_per_device, dtype=np.float64)
        if spec.label_correlation is not None:
            if self._labels is None:
                raise ScenarioError(f"{where}.label_correlation needs the clients' labels "
                                    "(only a simulation with a task has them)")
            if self._label_dist is None:  # over all clients: every tier sees all L labels
                self._label_dist = label_distributions([self._labels(i) for i in range(self.n)])
            gen = rng(self.seed, "label-participation")  # one m shared by the tiers
            q = self._label_dist[self.tier_of == t]
            return label_correlated_p(q, spec.p, spec.label_correlation, gen)
        return np.full(m, spec.p)

    def available(self, round_: int, now: float = 0.0) -> np.ndarray:
        """Boolean vector: which devices are online in `round_` (0-based), trace devices at
        virtual time `now`."""
        online = np.ones(self.n, dtype=bool)
        if self.trace:
            online[self._trace_members] = online_at(self.trace, now) & self._trace_fits
        for t, (members, model) in enumerate(self._availability):
            if model is None:
                continue
            if isinstance(model, np.ndarray):  # Bernoulli: each device's p
                online[members] = rng(self.seed, "availability", t, round_).random(
                    len(members)) < model
            elif isinstance(model, _MarkovVector):
                online[members] = model.at(round_)
            else:
                on, length, phase = model
                online[members] = (round_ + phase) % length >= length - on
        return online

    # ------------------------------------------------------------ straggling, dropout

    def _build_bursts(self) -> dict[int, _MarkovVector | _BurstyPattern]:
        bursts: dict[int, _MarkovVector | _BurstyPattern] = {}
        for t, tier in enumerate(self.tiers):
            spec = tier.straggling
            if isinstance(spec, BurstyStraggling):
                m = int(np.sum(self.tier_of == t))
                bursts[t] = _BurstyPattern(self.seed, f"bursty-{t}", m, spec)
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
        if isinstance(spec, GilbertElliottStraggling | BurstyStraggling):
            in_burst = self._bursts[t].at(round_)[self._rank_in_tier[node]]
            return spec.slowdown if in_burst else 1.0
        return 1.0

    def mean_slowdown(self, node: int) -> float:
        """E[slowdown] of a job of `node` under its tier's straggling model.

        i.i.d.: 1 + p (s − 1). Gilbert–Elliott: the chain's stationary share of bad rounds,
        p_enter / (p_enter + p_exit). (B, W, λ)-bursty: the share of straggling (device,
        round) slots in the first rounds of the tier's drawn pattern (`BURSTY_MEAN_SLOTS`; the
        sampler has no closed-form rate, and the pattern is the one jobs are slowed by).
        """
        t = int(self.tier_of[node])
        spec = self.tiers[t].straggling
        if isinstance(spec, IidStraggling):
            return 1 + spec.p * (spec.slowdown - 1)
        if isinstance(spec, GilbertElliottStraggling):
            bad = spec.p_enter / (spec.p_enter + spec.p_exit)
            return 1 + bad * (spec.slowdown - 1)
        if isinstance(spec, BurstyStraggling):
            pattern = self._bursts[t]
            assert isinstance(pattern, _BurstyPattern)
            rounds = min(1000, max(100, -(-BURSTY_MEAN_SLOTS // max(pattern.size, 1))))
            return 1 + pattern.rate(rounds) * (spec.slowdown - 1)
        return 1.0

    def job_time(self, node: int, channel: ChannelSpec, work: float = 0.0,
                 bytes_down: int = 0, bytes_up: int = 0, slowdown: float = 1.0) -> JobTime:
        """The time model of a job of `node`: `bytes_down` over its downlink, `work` samples
        at its speed times `slowdown`, `bytes_up` over its uplink (links: its tier's, else
        the channel's). The grid times every job with it (drawn slowdown), and
        `expected_job_time` with the mean slowdown."""
        down = transfer_time(self.downlink(node, channel.downlink), bytes_down)
        compute = work / self.speed[node] * slowdown
        up = transfer_time(self.uplink(node, channel.uplink), bytes_up)
        return JobTime(down, compute, up)

    def expected_job_time(self, node: int, channel: ChannelSpec, work: float,
                          bytes_down: int, bytes_up: int) -> float:
        """Expected push-to-reply seconds of a job of `node` (dropouts not counted)."""
        return self.job_time(node, channel, work, bytes_down, bytes_up,
                             self.mean_slowdown(node)).total

    def offline_during(self, node: int, start: float, end: float) -> float | None:
        """When a trace device goes offline within [start, end) (None: it stays online, or
        its availability is counted in rounds)."""
        if node not in self._trace_links:
            return None
        return self.trace[int(self._rank_in_tier[node])].offline_during(start, end)

    def dropout_at(self, node: int, round_: int, job: int) -> float | None:
        """Fraction of the job done when the device drops out, or None if it finishes."""
        p = self.tiers[int(self.tier_of[node])].dropout_p
        if p == 0:
            return None
        r = rng(self.seed, "dropout", node, round_, job)
        return float(r.random()) if r.random() < p else None

    # ------------------------------------------------------------ links

    def uplink(self, node: int, default: LinkSpec) -> LinkSpec:
        links = self._trace_links.get(node)
        if links is not None:
            return default.model_copy(update={**links[0], "shared": False})
        return self.tiers[int(self.tier_of[node])].uplink or default

    def downlink(self, node: int, default: LinkSpec) -> LinkSpec:
        links = self._trace_links.get(node)
        if links is not None:
            return default.model_copy(update=links[1])
        return self.tiers[int(self.tier_of[node])].downlink or default


def _trace_links(device: TraceDevice) -> tuple[dict[str, Any], dict[str, Any]]:
    """The measured fields of a trace device's uplink and downlink (the channel's noise and
    erasure stay)."""
    return ({"bandwidth_mbps": device.up_mbps, "latency_s": device.up_latency_s},
            {"bandwidth_mbps": device.down_mbps, "latency_s": device.down_latency_s})


def _needs_cost(cost: ModelCost | None, where: str) -> ModelCost:
    if cost is None:
        raise ScenarioError(f"{where}: compute given in FLOP/s needs the task's model to count "
                            "its FLOPs (a Flower app's model is its own: give speed)")
    return cost


def _draw(value: float | LogNormal | Uniform, size: int, gen: np.random.Generator) -> np.ndarray:
    if isinstance(value, LogNormal):
        return value.median * np.exp(value.sigma * gen.standard_normal(size))
    if isinstance(value, Uniform):
        return gen.uniform(value.low, value.high, size)
    return np.full(size, float(value))
