"""Checkpoints: everything a simulated run needs to continue after it was killed.

A checkpoint is one file, `RUN_DIR/checkpoint.npz`, written to a uniquely named
temporary file and renamed over the previous one, so a kill at any instant leaves
either the old checkpoint or the new one, never half of one. It holds, at the end
of round r:

- the global arrays and the round number r;
- the strategy's state (`strategy_state`): global arrays it keeps, server
  optimizer moments, FedAU/FedHyper statistics, per-node models for gossip...;
- every node's `Context.state` (error-feedback memories, control variates, duals),
  pulled from the pool's workers, and which worker held it;
- the virtual clock, the grid's counters and the replies still in flight;
- Python's, numpy's and torch's global random states (Flower samples nodes with
  `random`; every other draw is keyed by (seed, concern, node, round, job) and so
  needs no state), and the records written so far.

**It carries no code.** The file is a numpy `.npz` read with `allow_pickle=False`:
one JSON document (`state`) and plain numeric arrays it refers to. Flower records
and messages are stored as their protobuf bytes (Flower's own serde), dataclasses
by name and fields, and only dataclasses of this project that are already
imported are rebuilt; nothing in the file is imported, called or unpickled. A
checkpoint of another format version or another scenario (its hash is in the
file) is refused before anything in it is used, and so are global arrays whose
keys or shapes are not the task's model. What it trusts: the numbers themselves
(a tampered file can steer the rest of the run, as a tampered scenario can).

Resuming rebuilds the same world from the scenario, puts all of this back and
continues with round r + 1, so the rest of the run is bit-for-bit the run that
was killed.

Strategies expose their state through one small interface, `Checkpointable`
(`checkpoint_state()` / `restore_state()`; the own-loop base implements it with
declared plain-data fields). A strategy without those methods (Flower's built-ins,
e.g. FedAdam's moments) gets the default: a copy of its instance attributes that
can be stored as data, skipping callables (the runner's hooks), tasks, grids and
grid services, which are rebuilt from the scenario. A strategy that runs its own
loop in `start()` sets `resumes_own_loop = True` and starts from its restored
round; a strategy that overrides `start()` without it cannot be resumed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim.core.services import GridServices
from fedsim.core.task import Task
from fedsim.engine.grid import SimGrid

FILENAME = "checkpoint.npz"
FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this scenario."""


@runtime_checkable
class Checkpointable(Protocol):
    """What a strategy implements when the default (its picklable attributes) is not enough."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_state(self, state: dict[str, Any]) -> None: ...


def _skipped(value: Any) -> bool:
    return callable(value) or isinstance(value, Task | Grid | GridServices)


def default_state(obj: Any) -> dict[str, Any]:
    """A copy of the object's instance attributes that can be stored as data (not hooks,
    tasks, grids or services: those are rebuilt from the scenario)."""
    state: dict[str, Any] = {}
    for key, value in vars(obj).items():
        if _skipped(value):
            continue
        try:
            as_data(value)
        except TypeError:  # not data: rebuilt from the scenario
            continue
        state[key] = copy.deepcopy(value)
    return state


def default_restore(obj: Any, state: dict[str, Any]) -> None:
    vars(obj).update(copy.deepcopy(state))


INNER = "__strategy__"
"""Marks the state of a strategy a wrapper holds (Flower's DP wrappers hold the strategy
they wrap, whose own state, e.g. FedAdam's moments, must survive a resume too)."""


def strategy_state(strategy: Strategy) -> dict[str, Any]:
    if isinstance(strategy, Checkpointable):
        return strategy.checkpoint_state()
    state = default_state(strategy)
    for key, value in vars(strategy).items():
        if isinstance(value, Strategy):
            state[key] = {INNER: strategy_state(value)}
    return state


def restore_strategy(strategy: Strategy, state: dict[str, Any]) -> None:
    if isinstance(strategy, Checkpointable):
        strategy.restore_state(state)
        return
    inner = {key: value[INNER] for key, value in state.items()
             if isinstance(value, dict) and INNER in value}
    default_restore(strategy, {k: v for k, v in state.items() if k not in inner})
    for key, value in inner.items():
        restore_strategy(getattr(strategy, key), value)


def can_resume(strategy: Strategy) -> bool:
    """Flower's own round loop, or a loop that knows how to start from a restored round."""
    return type(strategy).start is Strategy.start or getattr(strategy, "resumes_own_loop", False)


# ------------------------------------------------------------------ random state


def random_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state().numpy()}


def set_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch"], dtype=np.uint8)))


# ------------------------------------------------------------------ data, not code


class _Encoder:
    """A value -> a JSON tree plus the arrays it names (refuses what is not data)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, values: np.ndarray) -> str:
        if values.dtype.hasobject:
            raise TypeError("an array of Python objects is not data")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = values
        return name

    def _bytes(self, data: bytes) -> str:
        return self._array(np.frombuffer(data, dtype=np.uint8))

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, np.ndarray):
            return {"array": self._array(value)}
        if isinstance(value, np.generic):
            return {"scalar": self._array(np.asarray(value))}
        if isinstance(value, torch.Tensor):
            return {"tensor": self._array(value.detach().cpu().numpy())}
        if isinstance(value, Message):
            return {"message": self._bytes(serde.message_to_proto(value).SerializeToString())}
        if isinstance(value, RecordDict):
            return {"records": self._bytes(serde.recorddict_to_proto(value).SerializeToString())}
        if isinstance(value, ArrayRecord | MetricRecord | ConfigRecord):
            kind = type(value).__name__
            wrapped = RecordDict({"r": value})
            return {"record": kind, "of": self.encode(wrapped)}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"tuple": [self.encode(v) for v in value]}
        if isinstance(value, set | frozenset):
            return {"set": [self.encode(v) for v in sorted(value)]}
        if isinstance(value, dict):
            return {"dict": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            cls = type(value)
            return {"dataclass": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self.encode(getattr(value, f.name))
                               for f in dataclasses.fields(value)}}
        raise TypeError(f"{type(value).__name__} is not data a checkpoint can hold")


class _Decoder:
    """The inverse of `_Encoder`, building only data and this project's dataclasses."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def _array(self, name: Any) -> np.ndarray:
        if not isinstance(name, str) or name not in self.arrays:
            raise ValueError(f"refers to a missing array {name!r}")
        return self.arrays[name]

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise ValueError(f"unexpected entry {str(node)[:60]}")
        kind = next(iter(node))
        if kind == "float":
            return float(node["float"])
        if kind == "array":
            return self._array(node["array"]).copy()
        if kind == "scalar":
            return self._array(node["scalar"])[()]
        if kind == "tensor":
            return torch.from_numpy(self._array(node["tensor"]).copy())
        if kind == "message":
            proto = ProtoMessage.FromString(self._array(node["message"]).tobytes())
            return serde.message_from_proto(proto)
        if kind == "records":
            proto = ProtoRecordDict.FromString(self._array(node["records"]).tobytes())
            return serde.recorddict_from_proto(proto)
        if kind == "record":
            return self.decode(node["of"])["r"]
        if kind == "tuple":
            return tuple(self.decode(v) for v in node["tuple"])
        if kind == "set":
            return {self.decode(v) for v in node["set"]}
        if kind == "dict":
            return {self.decode(k): self.decode(v) for k, v in node["dict"]}
        if kind == "dataclass":
            cls = _project_dataclass(node["dataclass"])
            return cls(**{k: self.decode(v) for k, v in node["fields"].items()})
        raise ValueError(f"unknown entry kind {kind!r}")


def as_data(value: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """`value` as a JSON tree and the arrays it names (TypeError if it is not data)."""
    encoder = _Encoder()
    return encoder.encode(value), encoder.arrays


def from_data(tree: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The value `as_data` described."""
    return _Decoder(arrays).decode(tree)


def _project_dataclass(ref: Any) -> type:
    """A dataclass of this project's already-imported modules, by `module:qualname`."""
    module_name, _, qualname = str(ref).partition(":")
    module = sys.modules.get(module_name)
    if module is None or not module_name.startswith(("fedsim.", "strategies.")):
        raise ValueError(f"names a class outside this project's loaded modules: {ref!r}")
    cls: Any = module
    for part in qualname.split("."):
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"names something that is not a dataclass: {ref!r}")
    return cls


def scenario_hash(scenario: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(scenario, sort_keys=True).encode()).hexdigest()


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


_FIELDS = ("round", "scenario", "arrays", "strategy", "clients", "grid", "random", "records")


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write to a unique temporary file, fsync, rename: the file on disk is always whole."""
    path = Path(path)
    encoder = _Encoder()
    state = {"format": FORMAT, "scenario_sha256": scenario_hash(checkpoint.scenario),
             **{name: encoder.encode(getattr(checkpoint, name)) for name in _FIELDS}}
    text = json.dumps(state, allow_nan=False).encode()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez(f, state=np.frombuffer(text, dtype=np.uint8), **encoder.arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(run_dir: Path) -> Checkpoint:
    """Read a checkpoint as data only; anything unexpected is one `CheckpointError` line."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {FILENAME} to resume from (checkpoints are "
                              "written every `checkpoint.every` rounds; it is 0 by default)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        state = json.loads(arrays.pop("state").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})"
                              ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this fedsim version "
                              f"(format {FORMAT} expected)")
    try:
        values = {name: _Decoder(arrays).decode(state[name]) for name in _FIELDS}
        checkpoint = Checkpoint(**values)
        intact = (state.get("scenario_sha256") == scenario_hash(checkpoint.scenario)
                  and isinstance(checkpoint.round, int) and isinstance(checkpoint.arrays,
                                                                       ArrayRecord))
    except Exception as exc:  # any malformed entry: one clear line, nothing used
        raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})"
                              ) from None
    if not intact:
        raise CheckpointError(f"{path}: damaged checkpoint (its scenario hash or fields do "
                              "not match)")
    return checkpoint


def check_arrays(checkpoint: Checkpoint, expected: ArrayRecord) -> None:
    """Refuse global arrays whose keys or shapes are not the task's model."""
    shapes = {k: tuple(a.shape) for k, a in checkpoint.arrays.items()}
    wanted = {k: tuple(a.shape) for k, a in expected.items()}
    if shapes != wanted:
        raise CheckpointError("the checkpoint's global model does not fit this scenario's "
                              "model (different keys or shapes)")


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
