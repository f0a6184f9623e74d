"""Scenario fuzzing: a mutated scenario either runs or exits 2 with one line.

Hypothesis mutates two tiny valid scenarios (FedAvg on the quadratic task, and D-PSGD
gossip on a ring) with wrong types, missing keys, out-of-range numbers, unknown
names and keys, huge values, empty and disconnected graphs, and runs each through
the CLI (`fedsim run ... --quiet`). Every case must exit 0 (ran), 1 with the
one-line divergence message (ran until NaN/Inf), or 2 with exactly one line; never a
traceback, never a hang (each case has a wall-clock alarm).
"""

from __future__ import annotations

import copy
import faulthandler
import math
import os
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedsim.cli import app
from strategies import registry

ROOT = Path(__file__).resolve().parents[1]
CASES = 300
CASE_SECONDS = 30

_LINK = {"bandwidth_mbps": 10.0, "latency_s": 0.01, "noise_sigma": 0.0, "erasure_p": 0.0}
FEDAVG: dict[str, Any] = {
    "name": "fuzz", "seed": 0, "rounds": 1,
    "task": {"name": "quadratic", "params": {"centers": [1.0, -2.0, 3.0, 0.5]}},
    "training": {"lr": 0.1, "local_steps": 1, "batch_size": 1, "momentum": 0.0},
    "clients": {"count": 4, "devices": [{
        "name": "phone", "share": 1.0, "speed": 100.0, "dropout_p": 0.0,
        "availability": {"kind": "bernoulli", "p": 0.9},
        "straggling": {"kind": "iid", "p": 0.2, "slowdown": 2.0}}]},
    "channel": {"uplink": dict(_LINK), "downlink": dict(_LINK)},
    "strategy": {"name": "fedavg", "params": {"fraction_train": 1.0, "fraction_evaluate": 0.5}},
    "backend": {"kind": "inline", "num_actors": 1},
    "evaluation": {"centralized_every": 1, "federated_every": 1},
    "checkpoint": {"every": 1},
    "output": {"plots": False},
    "deadline_s": 100.0,
}
GOSSIP: dict[str, Any] = {
    **copy.deepcopy(FEDAVG), "name": "fuzz-gossip",
    "strategy": {"name": "dpsgd", "params": {"gossip_steps": 1, "node_eval_max": 4}},
    "topology": {"name": "ring"},
}

WRONG_TYPES: list[Any] = ["abc", "", [], {}, None, True, [1, 2], {"x": 1}, "1e3x"]
OUT_OF_RANGE: list[Any] = [-1, 0, -0.5, 1.5, 2, -1e9, math.nan, math.inf, -math.inf]
HUGE: list[Any] = [10**9, 10**12, 2**63, 10**30, 1e300, 1.7e308]
UNKNOWN_NAMES = ["nonexistent", "FedAvg", "", "ring ", "quadratic2"]
NAME_KEYS = ("name", "kind", "dist")
STRATEGY_NAMES = registry().names()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of a nested mapping/list (sections and leaves), except output.dir."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i))


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutations(draw: st.DrawFn, base: dict[str, Any], edge_files: dict[str, Path]
              ) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = sorted(_paths(data), key=repr)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(data, path), path[-1]
        op = draw(st.sampled_from(["delete", "wrong_type", "out_of_range", "huge",
                                   "unknown_name", "unknown_key", "topology",
                                   "other_strategy"]))
        if op == "delete":
            if isinstance(parent, dict):
                del parent[key]
            elif len(parent) > 0:
                parent.pop(key)
        elif op == "wrong_type":
            parent[key] = copy.deepcopy(draw(st.sampled_from(WRONG_TYPES)))
        elif op == "out_of_range":
            parent[key] = draw(st.sampled_from(OUT_OF_RANGE))
        elif op == "huge":
            parent[key] = draw(st.sampled_from(HUGE))
        elif op == "unknown_name":
            target = parent if isinstance(parent, dict) and key in NAME_KEYS else None
            if target is None:
                names = [p for p in paths if p[-1] in NAME_KEYS]
                p = draw(st.sampled_from(names))
                target, key = _parent(data, p), p[-1]
            target[key] = draw(st.sampled_from(UNKNOWN_NAMES))
        elif op == "unknown_key":
            node = parent if isinstance(parent, dict) else data
            node[draw(st.sampled_from(["typo", "lr_", "Rounds", "extra"]))] = 1
        elif op == "other_strategy":  # every registered strategy, default parameters
            data["strategy"] = {"name": draw(st.sampled_from(STRATEGY_NAMES)), "params": {}}
        else:  # topology: empty, disconnected, unknown, wrong sizes
            data["strategy"] = copy.deepcopy(GOSSIP["strategy"])
            data["topology"] = copy.deepcopy(draw(st.sampled_from([
                {"name": "edge_list", "path": str(edge_files["empty"])},
                {"name": "edge_list", "path": str(edge_files["disconnected"])},
                {"name": "edge_list", "path": str(edge_files["missing"])},
                {"name": "erdos_renyi", "p": 1e-9, "max_tries": 3},
                {"name": "random_regular", "degree": 3},
                {"name": "small_world", "k": 6, "p": 0.1},
                {"name": "torus"}, {"name": "grid"}, {"name": "star"},
                {"name": "ring", "time_varying": "resample"},
                {"name": "complete", "time_varying": "random_matching"},
                {}, None, "ring",
            ])))
    backend = data.setdefault("backend", {})
    if isinstance(backend, dict) and backend.get("kind", "ray") == "ray":
        backend["kind"] = "inline"  # a valid backend; starting Ray per case costs ~20 s
    return data


class _Hang(BaseException):  # not an Exception: client-error handling must not swallow it
    pass


_fired: list[bool] = []


def _alarm(signum: int, frame: Any) -> None:
    _fired.append(True)  # even if C code swallows or wraps the exception
    raise _Hang


def _run_case(data: dict[str, Any], workdir: Path, counts: Counter[str]) -> None:
    path = workdir / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = workdir / "run"
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    _fired.clear()
    # a hang in C code never returns to Python's signal handler: dump and exit instead
    faulthandler.dump_traceback_later(4 * CASE_SECONDS, exit=True, file=sys.__stderr__)
    try:
        result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    except _Hang:
        _fired.append(True)
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if _fired:
        pytest.fail(f"hang (> {CASE_SECONDS} s) on scenario:\n{yaml.safe_dump(data)}")
    text = result.output
    where = f"exit {result.exit_code}, output:\n{text}\nscenario:\n{yaml.safe_dump(data)}"
    assert "Traceback" not in text, where
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{where}\nexception: {result.exception!r}")
    if result.exit_code == 0:
        counts["ran"] += 1
    elif result.exit_code == 1:
        assert "diverged" in text and len(text.strip().splitlines()) == 1, where
        counts["diverged"] += 1
    else:
        assert result.exit_code == 2, where
        assert len(text.strip().splitlines()) == 1, where
        assert text.startswith("error: "), where
        counts["rejected"] += 1


def test_fuzzed_scenarios_run_or_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        edge_files = {"empty": root / "empty.txt", "disconnected": root / "two.txt",
                      "missing": root / "missing.txt"}
        edge_files["empty"].write_text("# no edges\n")
        edge_files["disconnected"].write_text("0 1\n2 3\n")
        case_no = 0

        @settings(max_examples=CASES, deadline=None, database=None,
                  derandomize=os.environ.get("FUZZ_RANDOM") is None,  # FUZZ_RANDOM=1: explore
                  suppress_health_check=list(HealthCheck))
        @given(data=st.one_of(mutations(FEDAVG, edge_files), mutations(GOSSIP, edge_files)))
        def check(data: dict[str, Any]) -> None:
            nonlocal case_no
            case_no += 1
            workdir = root / f"case{case_no}"
            workdir.mkdir()
            _run_case(data, workdir, counts)

        check()
    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} mutated scenarios: {counts['ran']} ran, "
              f"{counts['diverged']} diverged (exit 1), {counts['rejected']} rejected (exit 2)")
    assert total >= 200
    assert counts["ran"] > 0 and counts["rejected"] > 0


# ------------------------------------------------------------------ hostile files

_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
    for i in range(8))  # 342 bytes, 9^9 strings once expanded


def _hostile_files(tmp: Path) -> dict[str, Path]:
    cases = {
        "alias_bomb.yaml": _BOMB.encode(),
        "huge.yaml": b"name: x\nrounds: 1\nclients: {count: 2}\njunk: [" +
                     b",".join([b"1"] * 25_000_000) + b"]\n",  # 50 MB
        "latin1.yaml": "name: café\nrounds: 1\nclients: {count: 2}\n".encode("latin-1"),
        "quoted_inf.yaml": b'name: q\nrounds: 1\nclients: {count: 2}\ndeadline_s: "inf"\n',
        "quoted_nan_link.yaml": b'name: q\nrounds: 1\nclients: {count: 2}\n'
                                b'channel: {uplink: {latency_s: "nan"}}\n',
        "escaping_name.yaml": b"name: ../../escaped\nrounds: 1\nclients: {count: 2}\n",
        "absolute_name.yaml": b"name: /tmp/escaped\nrounds: 1\nclients: {count: 2}\n",
        "long_name.yaml": b"name: " + b"n" * 300 + b"\nrounds: 1\nclients: {count: 2}\n",
        "nul_name.yaml": b'name: "a\\0b"\nrounds: 1\nclients: {count: 2}\n',
        "python_tag.yaml": b"name: !!python/object/apply:os.system ['true']\nrounds: 1\n",
        "not_a_mapping.yaml": b"- just\n- a list\n",
    }
    paths = {}
    for name, data in cases.items():
        (tmp / name).write_bytes(data)
        paths[name] = tmp / name
    (tmp / "a_directory.yaml").mkdir()
    paths["a_directory.yaml"] = tmp / "a_directory.yaml"
    return paths


@pytest.mark.parametrize("command", ["validate", "run"])
def test_hostile_files_exit_2_with_one_line_and_write_nothing(tmp_path: Path, command: str):
    files = _hostile_files(tmp_path)
    out = tmp_path / "runs"
    for name, path in files.items():
        args = [command, str(path)] + (["--out", str(out / name), "-q"] if command == "run"
                                       else [])
        result = CliRunner().invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (name, result.output[-500:])
        assert "Traceback" not in result.output and lines[0].startswith("error:"), name
    assert not out.exists()  # refused before any run directory was made
    assert not (tmp_path.parent / "escaped").exists() and not Path("/tmp/escaped").exists()


@pytest.mark.parametrize("override", [
    "name=[unclosed", "name=!!python/object/apply:os.system ['true']",
    "name=*alias", "deadline_s='inf'", "strategy.params.min_train_nodes=.nan",
    "training.lr='-Infinity'"])
def test_hostile_set_values_exit_2_with_one_line(override: str):
    result = CliRunner().invoke(app, ["validate", str(ROOT / "scenarios" / "quickstart.yaml"),
                                      "--set", override])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
