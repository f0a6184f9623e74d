"""Checkpoints: everything a simulated run needs to continue after it was killed.

A checkpoint is one pickle, `RUN_DIR/checkpoint.pkl`, written to a temporary
file and renamed over the previous one, so a kill at any instant leaves either
the old checkpoint or the new one, never half of one. It holds, at the end of
round r:

- the global arrays and the round number r;
- the strategy's state (`strategy_state`): global arrays it keeps, server
  optimizer moments, FedAU/FedHyper statistics, per-node models for gossip...;
- every node's `Context.state` (error-feedback memories, control variates, duals),
  pulled from the pool's workers, and which worker held it;
- the virtual clock and the grid's counters (round, jobs, messages pushed);
- Python's, numpy's and torch's global random states (Flower samples nodes with
  `random`; every other draw is keyed by (seed, concern, node, round, job) and so
  needs no state), and the records written so far.

Resuming rebuilds the same world from the scenario, puts all of this back and
continues with round r + 1, so the rest of the run is bit-for-bit the run that
was killed.

Strategies expose their state through one small interface, `Checkpointable`
(`checkpoint_state()` / `restore_state()`). A strategy without those methods
(Flower's built-ins, e.g. FedAdam's moments) gets the default: a deep copy of its
picklable instance attributes, skipping callables (the runner's hooks), tasks
and grids, which are rebuilt from the scenario. A strategy that runs its own
loop in `start()` sets `resumes_own_loop = True` and starts from its restored
round; a strategy that overrides `start()` without it cannot be resumed.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.core.task import Task
from fedsim.engine.grid import SimGrid

FILENAME = "checkpoint.pkl"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this scenario."""


@runtime_checkable
class Checkpointable(Protocol):
    """What a strategy implements when the default (its picklable attributes) is not enough."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: dict[str, Any]) -> None: ...


def _skipped(value: Any) -> bool:
    return callable(value) or isinstance(value, Task | Grid)


def default_state(obj: Any) -> dict[str, Any]:
    """A deep copy of the object's picklable instance attributes (not hooks, tasks, grids)."""
    state: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if _skipped(value):
            continue
        try:
            state[key] = pickle.loads(pickle.dumps(value))
        except Exception:  # unpicklable: rebuilt from the scenario
            continue
    return state


def default_restore(obj: Any, state: dict[str, Any]) -> None:
    vars(obj).update(copy.deepcopy(state))


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    if isinstance(strategy, Checkpointable):
        return strategy.checkpoint_state()
    return default_state(strategy)


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    if isinstance(strategy, Checkpointable):
        strategy.restore_state(state)
    else:
        default_restore(strategy, state)


def can_resume(strategy: Strategy) -> bool:
    """Flower's own round loop, or a loop that knows how to start from a restored round."""
    return type(strategy).start is Strategy.start or getattr(strategy, "resumes_own_loop", False)


# ------------------------------------------------------------------ random state


def random_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ------------------------------------------------------------------ the file


@dataclass
class Checkpoint:
    """One checkpoint: the state at the end of `round`."""

    round: int
    scenario: dict[str, Any]
    arrays: ArrayRecord
    strategy: dict[str, Any]
    clients: Any
    grid: dict[str, Any]
    random: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    format: int = FORMAT


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write then rename (and fsync), so the file on disk is always a whole checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(checkpoint, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(run_dir: Path) -> Checkpoint:
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {FILENAME} to resume from (checkpoints are "
                              "written every `checkpoint.every` rounds; it is 0 by default)")
    try:
        with path.open("rb") as f:
            checkpoint = pickle.load(f)
    except Exception as exc:  # any unpickling failure: one clear line
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})"
                              ) from None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this fedsim version")
    return checkpoint


def save_arrays(path: Path, arrays: ArrayRecord) -> None:
    """The final global model as `.npz` (one array per key), written then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: a.numpy() for k, a in arrays.items()})
    os.replace(tmp, path)


class Checkpointer:
    """Saves a checkpoint into `run_dir` at the end of every `every`-th round."""

    def __init__(self, run_dir: Path, every: int) -> None:
        self.path = Path(run_dir) / FILENAME
        self.every = every

    def due(self, server_round: int) -> bool:
        return self.every > 0 and server_round > 0 and server_round % self.every == 0

    def save(self, server_round: int, scenario: dict[str, Any], arrays: ArrayRecord,
             strategy: Strategy, grid: SimGrid, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save(self.path, Checkpoint(
            round=server_round, scenario=scenario, arrays=copy.deepcopy(arrays),
            strategy=strategy_state(strategy), clients=grid.client_states(),
            grid=grid.checkpoint_state(), random=random_state(), records=copy.deepcopy(records)))
