"""Sequential gradient coding (SGC): SR-SGC and M-SGC under (B, W, λ)-bursty stragglers.

Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding For Straggler Mitigation", ICLR 2023
(arXiv 2211.13802). Official code: ``mamaj/Sequential-Gradient-Coding-2`` (``2_find_runtimes/``).
The schemes below follow the official code; of the paper, only its abstract was checked against
them.

A run computes J gradient jobs. Job t starts in round t and must be decoded by its deadline,
round t + T. Gradient coding (:mod:`strategies.gradient_coding`) codes across workers only
(T = 0); a delay T > 0 also codes across rounds, which pays off when stragglers are bursty.

Rounds are numbered from 0; a run has J + T rounds. The master's state is explicit: the boolean
straggler history [rounds, n] that :func:`stopping_rule` reads, and the scheme's ``delivered``
array, which records per round which task each worker delivered (``IDLE`` where it straggled or
had nothing to do); a scheme's ``tasks`` is a pure function of that array.

The first part of this module is the numpy core. The second part runs a scheme on the simulator
(:class:`SequentialGradientCodingGD`, strategies ``sr_sgc`` and ``m_sgc``) as gradient descent
with delayed updates, the simplest faithful form of "jobs = successive gradient computations":
job t is the full gradient at x_t, the model of round t (its data: all workers' shards pooled,
cut by the scheme's ``split_job_indices``; partial gradient of part p = (|p|/N) ∇L_p, as in
:mod:`strategies.gradient_coding`), it is decoded at its deadline t+T, and

    x_{t+1} = x_t − γ ĝ_{t−T}   (x_{t+1} = x_t while t < T),     ĝ_t = ∇F(x_t) exactly.

Deviation: the paper instead trains several models concurrently (presumably round t serves
model t mod M; not checked); one delayed model keeps the check "decoded = uncoded" exact. A run
of ``rounds`` rounds computes J = rounds − T jobs. Each round the master applies
:func:`stopping_rule` online (wait for the fastest reply, then until (1+μ)· its time; wait for
all if the cut-off workers would break the (B, W, λ) model), so the effective straggler
pattern conforms and every job decodes by its deadline.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any, Literal, NamedTuple, Self

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import BaseModel, ConfigDict, Field

from fedsim.core.client import client_task, reply
from fedsim.core.clock import Clock
from fedsim.core.codec import flatten, unflatten
from fedsim.core.errors import ScenarioError
from fedsim.core.keys import WORK_KEY
from fedsim.core.loop import OwnLoop, StepOutcome
from fedsim.core.services import GridServices
from fedsim.core.stragglers import check_model, round_conforms
from fedsim.core.task import Dataset, Task
from strategies import BuildContext, StrategyInfo
from strategies.gradient_coding import (
    GCScheme,
    GradientMaster,
    data_assignment,
    decode_received,
    encode,
    encoding_matrix,
    gc_load,
    weighted_gradient,
)

IDLE = -1
"""Task code of a worker slot that delivered nothing (straggled) or was given nothing to do."""


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
    """The master's stopping rule of the paper's runtime experiments (official code).

    A worker straggles when its finish time exceeds (1+μ) times the fastest worker's. If these
    stragglers keep the effective pattern `history` (boolean [r, n], earlier rounds as the master
    treated them) within the (B, W, λ) model, the round lasts min((1+μ)·fastest, slowest);
    otherwise the master waits for all, the round has no stragglers and lasts as long as the
    slowest worker. The effective pattern therefore always conforms. The round time
    min((1+μ)·fastest, slowest) is the official GC class's; its SGC classes use (1+μ)·fastest even
    when nobody straggles (a deviation: we use the GC class's rule for every scheme). For the GC
    baseline pass (B, W, λ) = (1, 1, s).
    """
    times = np.asarray(arrival_times_s, dtype=float)
    threshold = (1.0 + mu) * times.min()
    stragglers = times > threshold
    if round_conforms(np.asarray(history, dtype=bool), stragglers, B, W, lam):
        return RoundStop(stragglers, float(min(threshold, times.max())), False)
    return RoundStop(np.zeros_like(stragglers), float(times.max()), True)


# ---------------------------------------------------------------------------------------------
# Loads and delays (normalised load = fraction of one job's data per worker per round)
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
        (:func:`strategies.gradient_coding.cyclic_repetition_B`); prefer FRC where (s+1) | n.
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
    r ≥ J start no new job; a round whose tasks are all IDLE costs nothing.
    """

    def __post_init__(self) -> None:
        check_model(self.B, self.W, self.lam)
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
        check_model(self.B, self.W, self.lam)
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


# ---------------------------------------------------------------------------------------------
# SGC on the simulator: client half and master (delayed gradient descent)
# ---------------------------------------------------------------------------------------------

MESSAGE_TYPE = "train.sgc"

SCHEME_CLASSES: dict[str, type[SequentialScheme]] = {
    "sr_sgc": SelectiveRepeatSGC, "m_sgc": MultiplexedSGC}


def pooled_train_data(task: Task, n: int) -> Dataset:
    """Every worker's shard, concatenated in worker order: the data of one job."""
    shards = [task.train_data(j) for j in range(n)]
    return Dataset(torch.cat([d.x for d in shards]), torch.cat([d.y for d in shards]))


def scheme_from_config(config: ConfigRecord) -> SequentialScheme:
    """Rebuild the master's scheme from the ``sgc-*`` entries of a train config."""
    cls = SCHEME_CLASSES[str(config["sgc-scheme"])]
    return cls.create(int(config["sgc-n"]), int(config["sgc-B"]), int(config["sgc-W"]),
                      int(config["sgc-lam"]), int(config["sgc-jobs"]),
                      str(config["sgc-gc"]), int(config["sgc-code-seed"]))  # type: ignore[arg-type]


def train_sgc(message: Message, context: Context) -> Message:
    """A worker's round: for each (job, task) assigned, the scheme's message at job's model.

    The model of job t arrives as the ArrayRecord ``x-t``; the worker computes the partial
    gradients of the parts its task needs (``parts_needed``) and sends
    ``scheme.message(worker, task, partials)`` under the key ``job-t``.
    """
    task, worker = client_task(context)
    config = message.content["config"]
    scheme = scheme_from_config(config)
    data = pooled_train_data(task, scheme.n)
    total = len(data)
    parts = scheme.split_job_indices(total)
    sent: dict[str, Array] = {}
    losses, work = [], 0
    for job, job_task in json.loads(str(config["sgc-assignments"])):
        model = task.model_with(message.content[f"x-{job}"])
        partials: np.ndarray | None = None
        for p in scheme.parts_needed(worker, job_task):
            index = torch.from_numpy(parts[p])
            grad, loss = weighted_gradient(task, model, Dataset(data.x[index], data.y[index]),
                                           len(index) / total)
            if partials is None:
                partials = np.zeros((scheme.n_parts, grad.size))
            partials[p] = grad
            losses.append(loss)
            work += len(index)
        assert partials is not None, "every task needs at least one part"
        sent[f"job-{job}"] = Array(np.ascontiguousarray(
            scheme.message(worker, job_task, partials)))
    return reply(message, ArrayRecord(sent), **{"num-examples": work, WORK_KEY: work,
                                                "train_loss": float(np.mean(losses))})


class SequentialGradientCodingGD(GradientMaster, OwnLoop, FedAvg):
    """SR-SGC / M-SGC (Krishnan, Ebrahimi, Khisti, ICLR 2023) running delayed gradient descent.

    Round r: the master computes the scheme's ``tasks(r, delivered)``, pushes to each busy worker
    the models of the jobs it works on, applies :func:`stopping_rule` online to the replies
    (stragglers = replies later than (1+μ)× the fastest, unless cutting them breaks the
    (B, W, λ) model, then it waits for all), records what was delivered, decodes job r−T with
    ``decode_job`` and steps x ← x − γ ĝ_{r−T} (module docstring; γ = ``training.lr``). A job that
    misses its deadline (only possible when jobs fail outright) stops the run with an error.

    Parameters
    ----------
    num_workers : int
        n, the number of workers (= clients).
    scheme : "sr_sgc" | "m_sgc"
        SR-SGC (T = B, needs B | (W−1)) or M-SGC (T = W−2+B, needs B < W, λ ≤ n).
    B, W, lam : int (defaults 1, 2, 1)
        The (B, W, λ)-bursty straggler model the scheme is designed for.
    gc_scheme : "crc" | "frc" (default "crc")
        The inner gradient code (FRC needs (s+1) | n).
    code_seed : int (default 0)
        Seed of CRC's random H.
    mu : float (default 1.0)
        μ of the stopping rule: a worker straggles past (1+μ)× the fastest worker's time.
    services : GridServices | None (default None: asked of the grid at start)
        The grid's partition map (worker i = the node holding partition i), clock and
        straggler counter; run context, not state.
    """

    def __init__(self, num_workers: int, scheme: Literal["sr_sgc", "m_sgc"], B: int = 1,
                 W: int = 2, lam: int = 1, gc_scheme: GCScheme = "crc", code_seed: int = 0,
                 mu: float = 1.0, services: GridServices | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=1)
        self.services = services  # as built; `prepare` falls back to asking the grid
        self._services: GridServices | None = None  # this run's
        self.kind, self.gc_scheme, self.code_seed, self.mu = scheme, gc_scheme, code_seed, mu
        self.scheme = SCHEME_CLASSES[scheme].create(num_workers, B, W, lam, 1, gc_scheme,
                                                    code_seed)
        self._x = np.zeros(0)
        self._like = ArrayRecord()
        self._lr = 0.0
        self._round_metrics: dict[str, float] = {}
        self._models: dict[int, np.ndarray] = {}  # job -> its model x_t (flat), until decoded
        self._received: dict[int, dict[tuple[int, int], np.ndarray]] = {}
        self._delivered = np.zeros(0, dtype=np.int64)
        self._history = np.zeros((0, num_workers), dtype=bool)

    # The master's state between rounds: x, the models of jobs not yet decoded, the messages
    # received per job, what each worker delivered and the effective straggler pattern.
    state_fields = ("_x", "_models", "_received", "_delivered", "_history")

    def encode_field(self, name: str, value: Any) -> Any:
        if name == "_received":  # job -> [(worker, task, message)]
            return {job: [(w, t, f) for (w, t), f in messages.items()]
                    for job, messages in value.items()}
        return value

    def decode_field(self, name: str, value: Any) -> Any:
        if name == "_received":
            return {job: {(w, t): f for w, t, f in messages} for job, messages in value.items()}
        return value

    def scheme_config(self) -> dict[str, int | str]:
        """The ``sgc-*`` config entries from which a worker rebuilds the scheme."""
        s = self.scheme
        return {"sgc-scheme": self.kind, "sgc-n": s.n, "sgc-B": s.B, "sgc-W": s.W,
                "sgc-lam": s.lam, "sgc-jobs": s.n_jobs, "sgc-gc": self.gc_scheme,
                "sgc-code-seed": self.code_seed}

    def prepare(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int,
                timeout: float | None, config: ConfigRecord) -> None:
        """`num_rounds` = J + T rounds: J gradient jobs, each decoded T rounds after it starts."""
        scheme = self.scheme
        n_jobs = num_rounds - scheme.delay
        if n_jobs < 1:
            raise ValueError(f"rounds ({num_rounds}) must exceed the decoding delay T = "
                             f"{scheme.delay} of {self.kind}")
        self.scheme = replace(scheme, n_jobs=n_jobs)
        super().prepare(grid, initial_arrays, num_rounds, timeout, config)

    def setup(self, grid: Grid, initial_arrays: ArrayRecord) -> None:
        self._x = flatten(initial_arrays).copy()
        self._models = {}
        self._received = {}
        self._delivered = self.scheme.empty_delivered()
        self._history = np.zeros((0, self.scheme.n), dtype=bool)

    def step(self, n: int) -> StepOutcome:
        """Round r = n − 1: job r starts on x (while r < J), job r − T is decoded."""
        r = n - 1
        if r < self.scheme.n_jobs:
            self._models[r] = self._x.copy()
        replies = self._run_round(self._grid, self._clock, r, self._config)
        arrays, metrics = self.aggregate_train(n, replies)
        assert arrays is not None and metrics is not None
        return arrays, metrics

    def _run_round(self, grid: Grid, clock: Clock, r: int, config: ConfigRecord
                   ) -> list[Message]:
        """Push round r's tasks, apply the stopping rule, record what was delivered."""
        scheme, services = self.scheme, self._services
        assert services is not None
        partitions = services.partitions
        tasks = scheme.tasks(r, self._delivered[:r])
        by_worker: dict[int, list[list[int]]] = {}
        for a in scheme.assignments(r, tasks):
            by_worker.setdefault(a.worker, []).append([a.job, a.task])
        online = partitions.online(grid.get_node_ids())
        models = {job: unflatten(self._models[job], self._like)  # each job's model, once
                  for job in sorted({job for work in by_worker.values() for job, _ in work})}
        messages, workers = [], []
        for worker, work in sorted(by_worker.items()):
            if worker not in online:
                continue
            content = RecordDict({f"x-{job}": models[job] for job, _ in work})
            content["config"] = ConfigRecord({
                **config, **self.scheme_config(), "server-round": r + 1,
                "sgc-assignments": json.dumps(work)})
            messages.append(Message(content, partitions.node_of(worker), MESSAGE_TYPE,
                                    group_id=str(r + 1)))
            workers.append(worker)
        started = clock.now()
        ids = grid.push_messages(messages)
        pending = dict(zip(workers, ids, strict=True))
        arrived: dict[int, Message] = {}
        times = np.full(scheme.n, np.inf)

        def book(batch: list[Message]) -> None:
            for message in batch:
                worker = partitions.partition_of(message.metadata.src_node_id)
                del pending[worker]
                if not message.has_error():
                    arrived[worker] = message
                    times[worker] = clock.now() - started

        waited_for_all = False
        stragglers = np.zeros(scheme.n, dtype=bool)
        if messages:
            book(clock.wait_for_replies(grid, list(pending.values())))
            fastest = float(times.min()) if np.isfinite(times).any() else 0.0
            threshold = started + (1.0 + self.mu) * fastest
            while pending and (batch := clock.wait_for_replies(grid, list(pending.values()),
                                                               until=threshold)):
                book(batch)
            busy = np.zeros(scheme.n, dtype=bool)
            busy[list(by_worker)] = True
            stop = stopping_rule(np.where(busy, times, fastest), self._history,
                                 scheme.B, scheme.W, scheme.lam, self.mu)
            waited_for_all = stop.waited_for_all
            while waited_for_all and pending and (
                    batch := clock.wait_for_replies(grid, list(pending.values()))):
                book(batch)
            stragglers = stop.stragglers | (busy & ~np.isin(np.arange(scheme.n), list(arrived)))
        services.count_stragglers(list(pending.values()))
        self._delivered[r] = scheme.deliver(tasks, stragglers)
        self._history = np.vstack([self._history, stragglers])
        self._round_assignments = by_worker
        self._round_metrics = {"round_time_s": clock.now() - started,
                               "stragglers_cut": float(stragglers.sum()),
                               "waited_for_all": float(waited_for_all)}
        return [arrived[w] for w in sorted(arrived) if not stragglers[w]]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """File the round's delivered messages by job; decode job r−T and take the step."""
        r, scheme = server_round - 1, self.scheme
        assert self._services is not None
        partitions = self._services.partitions
        replies = list(replies)
        for message in replies:
            worker = partitions.partition_of(message.metadata.src_node_id)
            arrays = message.content["arrays"]
            for job, task in self._round_assignments[worker]:
                message_vector = arrays[f"job-{job}"].numpy().astype(np.float64)
                self._received.setdefault(job, {})[worker, task] = message_vector
        metrics = {"num-examples": float(sum(float(m.content["metrics"]["num-examples"])
                                             for m in replies)),
                   "decoded_job": -1.0, **self._round_metrics}
        if replies:
            metrics["train_loss"] = float(np.mean(
                [float(m.content["metrics"]["train_loss"]) for m in replies]))
        due = r - scheme.delay
        if 0 <= due < scheme.n_jobs:
            if not scheme.is_decodable(due, self._delivered):
                raise RuntimeError(f"{self.kind}: job {due} missed its deadline (round {r}); "
                                   "jobs failed outright, beyond the (B, W, λ) model")
            gradient = scheme.decode_job(self._received.pop(due))
            self._models.pop(due, None)
            self._x = self._x - self._lr * gradient
            metrics["decoded_job"] = float(due)
        return unflatten(self._x, self._like), MetricRecord(metrics)


class SGCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    B: int = Field(default=1, ge=1, description="longest straggler burst, in rounds")
    W: int = Field(default=2, ge=1, description="window of the straggler model, in rounds")
    lam: int = Field(default=1, ge=0, description="most distinct stragglers per window (λ)")
    gc_scheme: Literal["crc", "frc"] = "crc"
    code_seed: int = Field(default=0, ge=0)
    mu: float = Field(default=1.0, gt=0, description="straggler threshold (1+μ)·fastest")


def _builder(kind: Literal["sr_sgc", "m_sgc"]
             ) -> Callable[[SGCParams, BuildContext], SequentialGradientCodingGD]:
    def build(params: SGCParams, ctx: BuildContext) -> SequentialGradientCodingGD:
        try:
            strategy = SequentialGradientCodingGD(ctx.num_nodes, kind, **params.model_dump(),
                                                  services=ctx.services)
        except ValueError as exc:
            raise ScenarioError(f"strategy.params: {exc} (n = clients.count)") from None
        if ctx.scenario.rounds <= (delay := strategy.scheme.delay):
            raise ScenarioError(f"rounds: {kind} decodes each job T = {delay} rounds after it "
                                f"starts; set rounds > {delay}")
        return strategy

    return build


STRATEGIES = (
    StrategyInfo("sr_sgc", "SR-SGC: gradient coding + selective repetition, delayed GD "
                 "with deadline T = B under (B, W, λ)-bursty stragglers", SGCParams,
                 _builder("sr_sgc"), {MESSAGE_TYPE: train_sgc}),
    StrategyInfo("m_sgc", "M-SGC: repetition and coding multiplexed over rounds, delayed GD "
                 "with deadline T = W−2+B", SGCParams, _builder("m_sgc"),
                 {MESSAGE_TYPE: train_sgc}),
)
