"""Device traces: the plain format, FedScale's pickles, and deployed runs' measurements.

The plain format is JSON Lines, one device per line (blank lines skipped):

    {"id": "pi-3", "speed_sps": 420.0, "up_mbps": 8.5, "down_mbps": 40.0,
     "up_latency_s": 0.02, "down_latency_s": 0.02, "online": [[0, 600], [900, 1800]],
     "period_s": 3600}

`id` and one of `speed_sps` (training samples per second) or `flops` (FLOP/s; with
`memory_bytes`, the memory a training process may use) are required. A missing bandwidth
is unlimited; `online` lists half-open [start, end) intervals in seconds from the start of
the run, sorted (absent: always online), repeated every `period_s` when given.

FedScale ("FedScale: Benchmarking Model and System Performance of Federated Learning at
Scale", arXiv:2105.11367) ships its device traces as pickles: `client_device_capacity`
(id -> {computation: ms per sample, communication: kbps}) and `client_behave_trace`
(id -> {duration, active, inactive, finish_time, model}). They are read with an unpickler
that refuses every global, so a pickle can build dicts, lists, numbers and strings only.

A deployed run (`fedsim.deploy`) writes `trace.jsonl` in its run directory: each node's
measured speed and transfer overhead; `clients.trace.path` may name that directory.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import TraceSpec
from fedsim.core.seeding import rng
from fedsim.engine.traces import TraceDevice, check_intervals

MAX_TRACE_BYTES = 256 * 2**20
"""A trace file (plain or pickle) is at most this big: FedScale's full traces fit."""
DEPLOYED_TRACE = "trace.jsonl"
"""The file a deployed run writes its nodes' measurements to, in its run directory."""
FEDSCALE_TRAINING_FACTOR = 3.0
"""FedScale charges 3x `computation` ms per training sample (forward and backward)."""

_NUMBERS = ("speed_sps", "flops", "memory_bytes", "up_mbps", "down_mbps", "period_s")
_LATENCIES = ("up_latency_s", "down_latency_s")
FIELDS = ("id", *_NUMBERS, *_LATENCIES, "online")


def read_trace(path: Path) -> list[TraceDevice]:
    """Every device of a plain trace file (or of a deployed run directory's trace)."""
    if path.is_dir():
        path = path / DEPLOYED_TRACE
    if not path.is_file():
        raise ScenarioError(f"{path}: file not found (give a .jsonl trace or a deployed run "
                            "directory holding trace.jsonl)")
    try:
        text = _read_bounded(path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    devices: list[TraceDevice] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        device = parse_device(line, f"{path}:{number}")
        if device.id in seen:
            raise ScenarioError(f"{path}:{number}: id: {device.id!r} appears twice")
        seen.add(device.id)
        devices.append(device)
    if not devices:
        raise ScenarioError(f"{path}: no devices in the trace")
    return devices


def parse_device(line: str, where: str) -> TraceDevice:
    """One line of the plain format; any problem is one `ScenarioError` naming `where`
    (file:line) and the field."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{where}: not a JSON object ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a JSON object, one device per line")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ScenarioError(f"{where}: {unknown[0]}: unknown field (allowed: "
                            f"{', '.join(FIELDS)})")
    if not isinstance(data.get("id"), str | int) or isinstance(data.get("id"), bool):
        raise ScenarioError(f"{where}: id: required, a string or an integer")
    values: dict[str, Any] = {"id": str(data["id"])}
    for name in _NUMBERS + _LATENCIES:
        value = data.get(name)
        if value is None:
            continue
        low_ok = name in _LATENCIES
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value) or value < 0 or (value == 0 and not low_ok)):
            bound = ">= 0" if low_ok else "> 0"
            raise ScenarioError(f"{where}: {name}: expected a finite number {bound}, got "
                                f"{value!r}")
        values[name] = float(value)
    if ("speed_sps" in values) == ("flops" in values):
        raise ScenarioError(f"{where}: speed_sps: give exactly one of speed_sps (samples/s) "
                            "and flops (FLOP/s)")
    online = data.get("online")
    if online is not None:
        if not isinstance(online, list) or not all(
                isinstance(i, list) and len(i) == 2
                and all(isinstance(x, int | float) and not isinstance(x, bool) for x in i)
                for i in online):
            raise ScenarioError(f"{where}: online: expected a list of [start, end] pairs of "
                                "seconds")
        intervals = [(float(a), float(b)) for a, b in online]
        problem = check_intervals(intervals, values.get("period_s"))
        if problem is not None:
            raise ScenarioError(f"{where}: online: {problem}")
        values["online"] = tuple(intervals)
    return TraceDevice(**values)


def write_trace(devices: list[TraceDevice], path: Path) -> None:
    """Write devices in the plain format (fields at their defaults left out)."""
    with path.open("w", encoding="utf-8") as out:
        for device in devices:
            out.write(json.dumps(device_record(device)) + "\n")


def device_record(device: TraceDevice) -> dict[str, Any]:
    """A device as one line of the plain format."""
    record: dict[str, Any] = {"id": device.id}
    for name in _NUMBERS + _LATENCIES:
        value = getattr(device, name)
        if value is not None and not (name in _LATENCIES and value == 0):
            record[name] = value
    if device.online:
        record["online"] = [list(i) for i in device.online]
    return record


def load_trace(spec: TraceSpec, count: int, seed: int) -> list[TraceDevice]:
    """`count` devices drawn without replacement from the trace (`spec.seed`, else `seed`)."""
    devices = read_trace(spec.path)
    if count > len(devices):
        raise ScenarioError(f"clients.trace.sample: {count} devices asked of {spec.path}, "
                            f"which holds {len(devices)}")
    draw = rng(seed if spec.seed is None else spec.seed, "trace-sample")
    return [devices[i] for i in draw.choice(len(devices), size=count, replace=False)]


# ---------------------------------------------------------------- FedScale


class _GlobalRefused(pickle.UnpicklingError):
    """The pickle names a global (a class, a function): refused before it is looked up."""


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, numbers and strings; any global (a class, a function)
    is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise _GlobalRefused(f"it refers to {module}.{name}")


def read_data_pickle(path: Path) -> Any:
    """The plain data in a pickle that holds no globals, or one `ScenarioError` line."""
    raw = _read_bounded(path)
    try:
        return _DataOnlyUnpickler(io.BytesIO(raw)).load()
    except _GlobalRefused as exc:
        raise ScenarioError(f"{path}: refused: {exc}; a trace pickle may hold only dicts, "
                            "lists, numbers and strings") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, MemoryError) as exc:
        raise ScenarioError(f"{path}: not a readable pickle ({type(exc).__name__})") from None


def fedscale_trace(capacity_path: Path, behave_path: Path | None = None) -> list[TraceDevice]:
    """FedScale's device capacity (and behaviour) pickles as plain trace devices.

    A device's speed is 1000 / (3 x computation) samples/s (FedScale's training charge per
    sample), its bandwidth `communication` kbps both ways; its behaviour trace, under the
    same id, gives online intervals [active[i], inactive[i]) repeating every `finish_time`
    (FedScale's `Client.isActive`). A device without a behaviour entry is always online.
    """
    capacity = read_data_pickle(capacity_path)
    behave = read_data_pickle(behave_path) if behave_path is not None else {}
    for path, data in ((capacity_path, capacity), (behave_path, behave)):
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: expected a dict of device id -> record")
    devices = []
    for key, record in capacity.items():
        where = f"{capacity_path}: device {key!r}"
        computation = _field(record, "computation", where)
        communication = _field(record, "communication", where)
        line: dict[str, Any] = {
            "id": str(key), "speed_sps": 1000 / (FEDSCALE_TRAINING_FACTOR * computation),
            "up_mbps": communication / 1000, "down_mbps": communication / 1000}
        if key in behave:
            line.update(_fedscale_online(behave[key], f"{behave_path}: device {key!r}"))
        devices.append(parse_device(json.dumps(line), where))
    return devices


def _fedscale_online(record: Any, where: str) -> dict[str, Any]:
    finish = _field(record, "finish_time", where)
    active, inactive = record.get("active"), record.get("inactive")
    if not all(isinstance(seconds, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            for x in seconds) for seconds in (active, inactive)):
        raise ScenarioError(f"{where}: active, inactive: expected lists of seconds")
    ends = [*inactive, finish][: len(active)]  # still active at the end: until finish_time
    online = [[float(a), float(min(b, finish))] for a, b in zip(active, ends, strict=True)
              if min(b, finish) > a]
    return {"online": online, "period_s": finish}


def _field(record: Any, name: str, where: str) -> float:
    value = record.get(name) if isinstance(record, dict) else None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ScenarioError(f"{where}: {name}: expected a number > 0, got {value!r}")
    return float(value)


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TRACE_BYTES:
            raise ScenarioError(f"{path}: {size} bytes; a trace is at most {MAX_TRACE_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read it ({exc.strerror or exc})") from None
