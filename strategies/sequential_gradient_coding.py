"""Sequential gradient coding (SGC): SR-SGC and M-SGC under (B, W, λ)-bursty stragglers.

Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding For Straggler Mitigation", ICLR 2023
(arXiv 2211.13802). Reference code: ``mamaj/Sequential-Gradient-Coding-2``, ``2_find_runtimes/``.
Specification: ``shared/algorithms/part-b.md`` section 3b. Only the paper's abstract was read for
the spec; the schemes below follow the official code, which the spec says matches the abstract.

A run computes J gradient jobs. Job t starts in round t and must be decoded by its deadline,
round t + T. Gradient coding (:mod:`strategies.gradient_coding`) codes across workers only
(T = 0); a delay T > 0 also codes across rounds, which pays off when stragglers are bursty.

Rounds are numbered from 0; a run has J + T rounds. The master's state is explicit: the boolean
straggler history [rounds, n] that :func:`stopping_rule` reads, and the scheme's ``delivered``
array, which records per round which task each worker delivered (``IDLE`` where it straggled or
had nothing to do); a scheme's ``tasks`` is a pure function of that array.

This module is the numpy core; the strategy that runs a scheme on the simulator builds on it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple, Self

import numpy as np

from strategies.gradient_coding import (
    GCScheme,
    data_assignment,
    decode_received,
    encode,
    encoding_matrix,
    gc_load,
)

IDLE = -1
"""Task code of a worker slot that delivered nothing (straggled) or was given nothing to do."""


# ---------------------------------------------------------------------------------------------
# The (B, W, λ)-bursty straggler model
# ---------------------------------------------------------------------------------------------


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
    _check_model(B, W, lam)
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


@dataclass(frozen=True)
class RoundStop:
    """The master's decision for one round (see :func:`stopping_rule`)."""

    stragglers: np.ndarray
    """Boolean [n]: workers whose results the master does not wait for (all False on wait-all)."""
    duration_s: float
    """Virtual time the round takes."""
    waited_for_all: bool
    """True when the observed stragglers violated the model and the master waited for everyone."""


def stopping_rule(
    arrival_times_s: np.ndarray,
    history: np.ndarray,
    B: int,
    W: int,
    lam: int,
    mu: float = 1.0,
) -> RoundStop:
    """The master's stopping rule of the runtime experiments (spec 3b(b), official code).

    A worker straggles when its finish time exceeds (1+μ) times the fastest worker's. If these
    stragglers keep the effective pattern `history` (boolean [r, n], earlier rounds as the master
    treated them) within the (B, W, λ) model, the round lasts min((1+μ)·fastest, slowest);
    otherwise the master waits for all, the round has no stragglers and lasts as long as the
    slowest worker. The effective pattern therefore always conforms. The spec takes the round time
    min((1+μ)·fastest, slowest) from the official GC class (its SGC classes use (1+μ)·fastest even
    when nobody straggles); we follow the spec. For the GC baseline pass (B, W, λ) = (1, 1, s).
    """
    times = np.asarray(arrival_times_s, dtype=float)
    threshold = (1.0 + mu) * times.min()
    stragglers = times > threshold
    if round_conforms(np.asarray(history, dtype=bool), stragglers, B, W, lam):
        return RoundStop(stragglers, float(min(threshold, times.max())), False)
    return RoundStop(np.zeros_like(stragglers), float(times.max()), True)


# ---------------------------------------------------------------------------------------------
# Loads and delays (spec 3b(b); normalised load = fraction of one job's data per worker per round)
# ---------------------------------------------------------------------------------------------


def sr_sgc_tolerance(B: int, W: int, lam: int) -> int:
    """SR-SGC's gradient-coding parameter s = ⌈Bλ / (W−1+B)⌉."""
    return math.ceil(B * lam / (W - 1 + B))


def sr_sgc_load(n: int, B: int, W: int, lam: int) -> float:
    """SR-SGC's normalised load (s+1)/n with s = ⌈Bλ / (W−1+B)⌉."""
    return gc_load(n, sr_sgc_tolerance(B, W, lam))


def sr_sgc_delay(B: int, W: int, lam: int) -> int:
    """SR-SGC's decoding delay T = B."""
    return B


def m_sgc_load(n: int, B: int, W: int, lam: int) -> float:
    """M-SGC's normalised load.

    (λ+1)(W−1+B) / (n(B + (W−1)(λ+1))) for λ < n, and (W−1+B) / (n(W−1)) for λ = n.
    """
    if lam == n:
        return (W - 1 + B) / (n * (W - 1))
    return (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))


def m_sgc_delay(B: int, W: int, lam: int) -> int:
    """M-SGC's decoding delay T = W−2+B."""
    return W - 2 + B


# ---------------------------------------------------------------------------------------------
# Schemes
# ---------------------------------------------------------------------------------------------


class Assignment(NamedTuple):
    """One task of one worker in one round: `task` of `job` (task codes are scheme-specific)."""

    worker: int
    job: int
    task: int


@dataclass(frozen=True, eq=False)
class SequentialScheme(ABC):
    """What SR-SGC and M-SGC share: parameters, the job/deadline structure and replay.

    A job's data are cut into ``n_parts`` parts (:meth:`split_job_indices`); a job's partial
    gradients are an array [n_parts, *grad_shape] in that order, and the job's gradient is their
    sum. Per round the master computes ``tasks(r, delivered[:r])``; each worker computes
    ``message(worker, task, partials_of_job)`` for each of its :meth:`assignments`; after the
    stopping rule, ``deliver`` records what arrived, and at round ``deadline(job)`` the master
    calls ``decode_job`` on the messages received for that job.
    """

    n: int
    """Number of workers."""
    B: int
    """Longest straggler burst, in rounds."""
    W: int
    """Window length of the straggler model, in rounds."""
    lam: int
    """Most distinct stragglers in any window of W rounds (λ)."""
    n_jobs: int
    """Number of gradient jobs J."""
    gc_matrix: np.ndarray | None
    """n×n gradient-coding matrix used inside the scheme (None only where none is needed)."""

    @classmethod
    def create(
        cls,
        n: int,
        B: int,
        W: int,
        lam: int,
        n_jobs: int,
        gc_scheme: GCScheme = "crc",
        seed: int = 0,
    ) -> Self:
        """The scheme with its inner code built by :func:`encoding_matrix` (FRC needs (s+1) | n).

        CRC (the default) works for every s but degrades numerically for n in the tens and up
        (spec 3a(b)); prefer FRC where (s+1) | n.
        """
        s = cls.gc_tolerance(n, B, W, lam)
        gc_matrix = None if s is None else encoding_matrix(gc_scheme, n, s, seed)
        return cls(n, B, W, lam, n_jobs, gc_matrix)

    @classmethod
    @abstractmethod
    def gc_tolerance(cls, n: int, B: int, W: int, lam: int) -> int | None:
        """Stragglers the scheme's inner gradient code must tolerate (None: no code needed)."""

    @property
    @abstractmethod
    def delay(self) -> int:
        """Decoding delay T in rounds: job t is due at round t + T."""

    @property
    @abstractmethod
    def load(self) -> float:
        """Normalised per-worker, per-round load."""

    @property
    @abstractmethod
    def n_parts(self) -> int:
        """Number of data parts one job is cut into."""

    @abstractmethod
    def split_job_indices(self, n_samples: int) -> list[np.ndarray]:
        """Cut a job's sample indices 0..n_samples−1 into the scheme's ``n_parts`` parts."""

    @abstractmethod
    def tasks(self, round_index: int, delivered: np.ndarray) -> np.ndarray:
        """Task codes of round `round_index`, given what was delivered in the earlier rounds."""

    @abstractmethod
    def assignments(self, round_index: int, tasks: np.ndarray) -> list[Assignment]:
        """The non-idle entries of a round's `tasks` (or delivered row) as (worker, job, task)."""

    @abstractmethod
    def parts_needed(self, worker: int, task: int) -> list[int]:
        """Indices of the job's data parts whose partial gradients `worker` needs for `task`."""

    @abstractmethod
    def message(self, worker: int, task: int, job_partials: np.ndarray) -> np.ndarray:
        """What `worker` sends for `task`, from the job's partial gradients [n_parts, ...]."""

    @abstractmethod
    def is_decodable(self, job: int, delivered: np.ndarray) -> bool:
        """The scheme's decodability rule for `job`, read from rounds up to its deadline."""

    @abstractmethod
    def decode_job(self, received: Mapping[tuple[int, int], np.ndarray]) -> np.ndarray:
        """A job's full gradient from its received messages {(worker, task): message}."""

    @property
    def n_rounds(self) -> int:
        """Rounds in a run: J + T (the last T rounds start no new job)."""
        return self.n_jobs + self.delay

    def deadline(self, job: int) -> int:
        """Round by whose end `job` must be decoded: job + T."""
        return job + self.delay

    @staticmethod
    def deliver(tasks: np.ndarray, stragglers: np.ndarray) -> np.ndarray:
        """What arrives of a round's `tasks` when `stragglers` (boolean [n]) are cut off."""
        cut = np.asarray(stragglers, dtype=bool).reshape(-1, *([1] * (tasks.ndim - 1)))
        return np.where(cut, IDLE, tasks)

    def simulate(self, pattern: np.ndarray) -> np.ndarray:
        """Replay the scheme on an effective straggler pattern [≥ n_rounds, n]; return delivered."""
        delivered = self.empty_delivered()
        for r in range(self.n_rounds):
            delivered[r] = self.deliver(self.tasks(r, delivered[:r]), pattern[r])
        return delivered

    def missed_deadlines(self, delivered: np.ndarray) -> list[int]:
        """Jobs that fail the decodability rule by their deadline (empty on conforming patterns)."""
        return [job for job in range(self.n_jobs) if not self.is_decodable(job, delivered)]

    @abstractmethod
    def empty_delivered(self) -> np.ndarray:
        """The master's all-IDLE delivered array for a run (``n_rounds`` rows)."""


@dataclass(frozen=True, eq=False)
class SelectiveRepeatSGC(SequentialScheme):
    """SR-SGC: gradient coding plus selective repetition of unfinished tasks; T = B.

    Each job is cut into n equal partitions and GC-coded with s = ⌈Bλ/(W−1+B)⌉ (load (s+1)/n).
    In round r every worker does its GC task for job r, except: if v > s workers did not deliver
    job r−B's task in round r−B, then v−s of them (the lowest-indexed, as in the official code)
    repeat their job-(r−B) task instead. Job t is decodable at round t+B once at least n−s
    distinct workers delivered its task across rounds t and t+B. Requires B | (W−1).

    ``delivered[r, i]`` is the job whose task worker i delivered in round r, or IDLE. Rounds
    r ≥ J start no new job; a round whose tasks are all IDLE costs nothing (spec 3b(b)).
    """

    def __post_init__(self) -> None:
        _check_model(self.B, self.W, self.lam)
        if (self.W - 1) % self.B:
            raise ValueError(f"SR-SGC needs B | (W−1), got B={self.B}, W={self.W}")
        if self.gc_matrix is None or self.gc_matrix.shape != (self.n, self.n):
            raise ValueError(f"SR-SGC needs an {self.n}×{self.n} gradient-coding matrix")

    @classmethod
    def gc_tolerance(cls, n: int, B: int, W: int, lam: int) -> int:
        """The inner gradient code tolerates s = ⌈Bλ/(W−1+B)⌉ stragglers."""
        return sr_sgc_tolerance(B, W, lam)

    @property
    def s(self) -> int:
        """Stragglers the inner gradient code tolerates, ⌈Bλ/(W−1+B)⌉."""
        return self.gc_tolerance(self.n, self.B, self.W, self.lam)

    @property
    def delay(self) -> int:
        return sr_sgc_delay(self.B, self.W, self.lam)

    @property
    def load(self) -> float:
        return sr_sgc_load(self.n, self.B, self.W, self.lam)

    @property
    def n_parts(self) -> int:
        return self.n

    def split_job_indices(self, n_samples: int) -> list[np.ndarray]:
        return np.array_split(np.arange(n_samples), self.n)

    def tasks(self, round_index: int, delivered: np.ndarray) -> np.ndarray:
        tasks = np.full(self.n, round_index if round_index < self.n_jobs else IDLE)
        job = round_index - self.B
        if 0 <= job < self.n_jobs:
            missing = np.flatnonzero(delivered[job] != job)
            surplus = missing.size - self.s
            if surplus > 0:
                tasks[missing[:surplus]] = job
        return tasks

    def assignments(self, round_index: int, tasks: np.ndarray) -> list[Assignment]:
        return [Assignment(int(i), int(tasks[i]), 0) for i in np.flatnonzero(tasks != IDLE)]

    def parts_needed(self, worker: int, task: int) -> list[int]:
        return data_assignment(self.gc_matrix[worker : worker + 1])[0]

    def message(self, worker: int, task: int, job_partials: np.ndarray) -> np.ndarray:
        return encode(self.gc_matrix[worker], job_partials)

    def is_decodable(self, job: int, delivered: np.ndarray) -> bool:
        arrived = np.count_nonzero(delivered[job] == job)
        arrived += np.count_nonzero(delivered[job + self.B] == job)
        return arrived >= self.n - self.s

    def decode_job(self, received: Mapping[tuple[int, int], np.ndarray]) -> np.ndarray:
        return decode_received(self.gc_matrix, {w: f for (w, _), f in received.items()})

    def empty_delivered(self) -> np.ndarray:
        return np.full((self.n_rounds, self.n), IDLE)


@dataclass(frozen=True, eq=False)
class MultiplexedSGC(SequentialScheme):
    """M-SGC: repetition and gradient coding multiplexed over workers and rounds; T = W−2+B.

    Each job's data are split into
      D1, the repetition part: n(W−1) equal chunks, W−1 owned by each worker, sent uncoded; and
      D2, the coded part: B groups, each GC-coded across all n workers with tolerance λ.
    With G = 1/(B + (W−1)(λ+1)) the size of one D2 group (fraction of a job), a D1 chunk has size
    (λ+1)G/n, so every minitask (one D1 chunk, or one worker's GC task on one D2 group, i.e. λ+1
    partitions of size G/n) costs the same. For λ = n there is no D2 and a chunk is 1/(n(W−1)).

    Each round a worker runs W−1+B minitask slots on a diagonal: slot m of round r belongs to job
    r−m. Slots m ≤ W−2 compute the worker's next missing D1 chunk of that job. Slot m ≥ W−1
    computes the GC task of D2 group m−(W−1), unless the worker has not yet delivered all W−1 of
    its D1 chunks of that job (it straggled), in which case it computes the next missing chunk
    instead; that is the adaptive part. Job t is decodable at round t+W−2+B when every worker
    delivered all W−1 of its D1 chunks and each D2 group has at least n−λ coded results.
    Load (λ+1)(W−1+B)/(n(B+(W−1)(λ+1))). Requires 1 ≤ B < W and λ ≤ n.

    Task codes: c ∈ [0, W−1) is D1 chunk c of the worker; W−1+k is the GC task of D2 group k.
    ``delivered[r, i, m]`` is the task code worker i delivered in slot m of round r, or IDLE.
    Part order of a job: D1 chunk c of worker i is part i(W−1)+c; partition j of D2 group k is
    part n(W−1)+kn+j. Which chunk a repeat slot computes (the next missing one) is our choice; the
    official code only counts chunks.
    """

    def __post_init__(self) -> None:
        _check_model(self.B, self.W, self.lam)
        if not self.B < self.W:
            raise ValueError(f"M-SGC needs B < W, got B={self.B}, W={self.W}")
        if self.lam > self.n:
            raise ValueError(f"M-SGC needs λ ≤ n, got λ={self.lam}, n={self.n}")
        has_d2 = self.lam < self.n
        if has_d2 and (self.gc_matrix is None or self.gc_matrix.shape != (self.n, self.n)):
            raise ValueError(f"M-SGC with λ < n needs an {self.n}×{self.n} gradient-coding matrix")

    @classmethod
    def gc_tolerance(cls, n: int, B: int, W: int, lam: int) -> int | None:
        """The D2 code tolerates λ stragglers; for λ = n there is no D2 and no code."""
        return lam if lam < n else None

    @property
    def delay(self) -> int:
        return m_sgc_delay(self.B, self.W, self.lam)

    @property
    def load(self) -> float:
        return m_sgc_load(self.n, self.B, self.W, self.lam)

    @property
    def n_slots(self) -> int:
        """Minitask slots per worker per round, W−1+B."""
        return self.W - 1 + self.B

    @property
    def n_d1_parts(self) -> int:
        """D1 chunks per job, n(W−1); parts from here on are D2 partitions."""
        return self.n * (self.W - 1)

    @property
    def n_parts(self) -> int:
        return self.n_d1_parts + (self.B * self.n if self.lam < self.n else 0)

    def part_fractions(self) -> tuple[float, float]:
        """(D1 chunk, D2 partition) sizes as fractions of one job's data."""
        if self.lam == self.n:
            return 1.0 / self.n_d1_parts, 0.0
        group = 1.0 / (self.B + (self.W - 1) * (self.lam + 1))
        return (self.lam + 1) * group / self.n, group / self.n

    def split_job_indices(self, n_samples: int) -> list[np.ndarray]:
        chunk, partition = self.part_fractions()
        sizes = np.array([chunk] * self.n_d1_parts + [partition] * (self.n_parts - self.n_d1_parts))
        bounds = np.rint(np.concatenate([[0.0], np.cumsum(sizes)]) * n_samples).astype(int)
        bounds[-1] = n_samples
        return [np.arange(lo, hi) for lo, hi in pairwise(bounds)]

    def job_results(self, job: int, delivered: np.ndarray) -> np.ndarray:
        """Job `job`'s diagonal [n, slots so far]: the task code each slot delivered."""
        slots = np.arange(min(self.n_slots, delivered.shape[0] - job))
        return delivered[job + slots, :, slots].T

    def tasks(self, round_index: int, delivered: np.ndarray) -> np.ndarray:
        tasks = np.full((self.n, self.n_slots), IDLE)
        n_d1 = self.W - 1
        for m in range(self.n_slots):
            job = round_index - m
            if not 0 <= job < self.n_jobs:
                continue
            done = self._d1_delivered(self.job_results(job, delivered[:round_index]))
            if m < n_d1:
                tasks[:, m] = done
            else:
                group_task = n_d1 + (m - n_d1) if self.lam < self.n else IDLE
                tasks[:, m] = np.where(done < n_d1, done, group_task)
        return tasks

    def assignments(self, round_index: int, tasks: np.ndarray) -> list[Assignment]:
        workers, slots = np.nonzero(tasks != IDLE)
        return [
            Assignment(int(i), round_index - int(m), int(tasks[i, m]))
            for i, m in zip(workers, slots, strict=True)
        ]

    def parts_needed(self, worker: int, task: int) -> list[int]:
        if task < self.W - 1:
            return [worker * (self.W - 1) + task]
        offset = self._group_offset(task)
        return [offset + j for j in data_assignment(self.gc_matrix[worker : worker + 1])[0]]

    def message(self, worker: int, task: int, job_partials: np.ndarray) -> np.ndarray:
        if task < self.W - 1:
            return np.asarray(job_partials[worker * (self.W - 1) + task])
        offset = self._group_offset(task)
        return encode(self.gc_matrix[worker], job_partials[offset : offset + self.n])

    def is_decodable(self, job: int, delivered: np.ndarray) -> bool:
        results = self.job_results(job, delivered)
        if results.shape[1] < self.n_slots:
            return False
        if np.any(self._d1_delivered(results) < self.W - 1):
            return False
        if self.lam == self.n:
            return True
        groups = self.W - 1 + np.arange(self.B)
        per_group = (results.reshape(-1, 1) == groups).sum(axis=0)
        return bool(np.all(per_group >= self.n - self.lam))

    def decode_job(self, received: Mapping[tuple[int, int], np.ndarray]) -> np.ndarray:
        n_d1 = self.W - 1
        missing = [(w, c) for w in range(self.n) for c in range(n_d1) if (w, c) not in received]
        if missing:
            raise ValueError(f"M-SGC cannot decode: D1 chunks (worker, chunk) {missing} missing")
        total = sum(received[w, c] for w in range(self.n) for c in range(n_d1))
        for k in range(self.B if self.lam < self.n else 0):
            coded = {w: f for (w, task), f in received.items() if task == n_d1 + k}
            total = total + decode_received(self.gc_matrix, coded)
        return np.asarray(total)

    def _d1_delivered(self, results: np.ndarray) -> np.ndarray:
        """Per worker, how many of its D1 chunks a job's diagonal `results` holds."""
        return np.count_nonzero((results >= 0) & (results < self.W - 1), axis=1)

    def _group_offset(self, task: int) -> int:
        return self.n_d1_parts + (task - (self.W - 1)) * self.n

    def empty_delivered(self) -> np.ndarray:
        return np.full((self.n_rounds, self.n, self.n_slots), IDLE)


def _check_model(B: int, W: int, lam: int) -> None:
    if not 1 <= B <= W or lam < 0:
        raise ValueError(f"the (B, W, λ) model needs 1 ≤ B ≤ W and λ ≥ 0, got ({B}, {W}, {lam})")
