"""Deployment end to end: a real SuperLink, two SuperNodes, `flwr run` of this project."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUMMARY = re.compile(r"fedsim summary: (\{.*\})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


@contextlib.contextmanager
def federation(tmp_path: Path, num_nodes: int = 2) -> Iterator[tuple[int, dict[str, str]]]:
    """A SuperLink and `num_nodes` SuperNodes on 127.0.0.1; every process is killed at exit."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FLWR_HOME": str(tmp_path / "flwr")}
    (tmp_path / "flwr").mkdir()
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    processes: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        processes.append(subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], env=env, cwd=tmp_path, start_new_session=True,
            stdout=(tmp_path / log).open("w"), stderr=subprocess.STDOUT))

    try:
        start(["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
               "--host", "127.0.0.1", "--port", str(port)], "superlink.log")
        wait_for_port(port)
        for i in range(num_nodes):
            start(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--port", str(free_port()),
                   "--node-config", f"partition-id={i} num-partitions={num_nodes}"],
                  f"supernode{i}.log")
        yield port, env
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def scenario_file(tmp_path: Path, strategy: dict) -> Path:
    path = tmp_path / f"{strategy['name']}.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"deploy-{strategy['name']}", "rounds": 2,
        "task": {"name": "digits", "model": "logreg", "partition": {"kind": "iid"}},
        "training": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
        "clients": {"count": 2}, "strategy": strategy,
    }))
    return path


DEPLOYED = [
    {"name": "fedavg", "params": {"fraction_evaluate": 0.0, "min_available_nodes": 2,
                                  "min_train_nodes": 2}},
    # keeps client state: each SuperNode holds its EF21 gradient estimate g_i across rounds
    {"name": "ef21", "params": {"lr": 1.0, "compressor": {"name": "top_k", "ratio": 0.1}}},
]


@pytest.mark.slow
def test_flwr_run_deploys_the_project_to_a_real_superlink_and_supernodes(tmp_path):
    with federation(tmp_path) as (_, env):
        for strategy in DEPLOYED:
            scenario = scenario_file(tmp_path, strategy)
            out = tmp_path / f"out-{strategy['name']}"
            run = subprocess.run(
                [str(BIN / "flwr"), "run", str(ROOT), "local", "--stream",
                 "-c", f'scenario="{scenario}" out-dir="{out}"'],
                env=env, capture_output=True, text=True, timeout=600)
            match = SUMMARY.search(run.stdout + run.stderr)
            assert match, (run.stdout + run.stderr)[-3000:]
            summary = json.loads(match.group(1))
            records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
            accuracies = [r["accuracy"] for r in records]
            assert len(records) == 3 and all(math.isfinite(a) for a in accuracies)
            assert accuracies[-1] > accuracies[0] + 0.2, accuracies
            assert summary["final_accuracy"] == accuracies[-1]
