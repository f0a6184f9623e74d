"""One real Flower deployment on 127.0.0.1, secured the way `fedsim deploy` tells users to.

A SuperLink with TLS (certificates from the project's own `docker/generate_certs.sh`) and
SuperNode authentication (keys from `docker/generate_node_keys.sh`, registered with
`flwr supernode register`), and `num_nodes` SuperNodes, each with
`--node-config "partition-id=i num-partitions=N"`, started in reverse partition order so that
nothing may rely on the order in which devices connect. `conftest.py` holds one of these per
test session (fixture `deployment`); every process is killed when it ends, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
CONNECTION = "local"
HOST = "127.0.0.1"


@dataclass
class Federation:
    """What a test needs to `flwr run` the project against the running federation."""

    port: int
    env: dict[str, str]  # PATH with the flwr binaries, FLWR_HOME with the TLS connection
    home: Path  # FLWR_HOME: config.toml names CONNECTION
    certificates: Path  # ca.crt, server.pem, server.key (and ca.key) from generate_certs.sh
    keys: Path  # supernode-i / supernode-i.pub from generate_node_keys.sh
    num_nodes: int
    logs: dict[str, Path] = field(default_factory=dict)  # "superlink", "supernode-i"
    connection: str = CONNECTION

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def flwr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `flwr ARGS` against this federation (e.g. `run ROOT local --stream -c ...`)."""
        return subprocess.run([str(BIN / "flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=self.home.parent)

    def flwr_run(self, run_config: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`flwr run` the project with `run_config` (Flower's -c syntax), streaming its logs."""
        return self.flwr("run", str(ROOT), self.connection, "--stream", "-c", run_config,
                         timeout=timeout)

    def log_tails(self, chars: int = 1500) -> str:
        """The end of every process's log, to explain a failure."""
        return "\n".join(f"--- {name} ({path})\n{path.read_text(errors='replace')[-chars:]}"
                         for name, path in self.logs.items() if path.exists())


def free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s")


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Linux)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def _descendants(pids: list[int]) -> list[int]:
    """`pids` and everything they started, including the SuperExec, ServerApp and ClientApp
    processes Flower detaches into sessions of their own (a process-group kill misses them)."""
    tree, found, todo = _children(), [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(tree.get(pid, []))
    return found


def _kill_all(processes: list[subprocess.Popen]) -> None:
    pids = _descendants([p.pid for p in processes])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for pid in _descendants(pids):  # survivors, and anything started meanwhile
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _script(name: str, *args: str) -> None:
    done = subprocess.run(["bash", str(DOCKER / name), *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"docker/{name} failed:\n{done.stdout}{done.stderr}")


def _wait_for_nodes(fed: Federation, nodes: dict[int, subprocess.Popen],
                    seconds: float = 120) -> None:
    """Until every SuperNode has logged its node id (it is registered, activated, online)."""
    deadline = time.monotonic() + seconds
    waiting = set(nodes)
    while waiting and time.monotonic() < deadline:
        for i in sorted(waiting):
            if nodes[i].poll() is not None:
                raise RuntimeError(f"supernode {i} exited with code {nodes[i].returncode}\n"
                                   f"{fed.log_tails()}")
            if "SuperNode ID:" in fed.logs[f"supernode-{i}"].read_text(errors="replace"):
                waiting.discard(i)
        time.sleep(0.2)
    if waiting:
        raise TimeoutError(f"supernodes {sorted(waiting)} not online after {seconds} s\n"
                           f"{fed.log_tails()}")


@contextlib.contextmanager
def federation(workdir: Path, num_nodes: int = 4) -> Iterator[Federation]:
    """A TLS SuperLink with SuperNode authentication and `num_nodes` authenticated SuperNodes,
    all on 127.0.0.1; yields once every node is online; every process is killed at exit."""
    ports: set[int] = set()
    home, logs = workdir / "flwr", workdir / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    fed = Federation(port=free_port(ports), home=home, num_nodes=num_nodes,
                     certificates=workdir / "certificates", keys=workdir / "keys",
                     env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                          "FLWR_HOME": str(home)})
    _script("generate_certs.sh", str(fed.certificates))
    _script("generate_node_keys.sh", str(num_nodes), str(fed.keys))
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{fed.address}"\n'
        f'root-certificates = "{fed.certificates / "ca.crt"}"\n')
    processes: list[subprocess.Popen] = []

    def start(name: str, args: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen:
        fed.logs[name] = logs / f"{name}.log"
        with fed.logs[name].open("w") as out:
            process = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env or fed.env,
                                       cwd=workdir, start_new_session=True, stdout=out,
                                       stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    certs = fed.certificates
    try:
        link = start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", HOST, "--port", str(fed.port)])
        try:
            wait_for_port(fed.port, link)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"superlink: {exc}\n{fed.log_tails()}") from None
        registrations = [
            subprocess.Popen([str(BIN / "flwr"), "supernode", "register",
                              str(fed.keys / f"supernode-{i}.pub"), CONNECTION],
                             env=fed.env, cwd=workdir, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(num_nodes)]
        processes.extend(registrations)
        for i, registration in enumerate(registrations):
            output, _ = registration.communicate(timeout=120)
            if registration.returncode:
                raise RuntimeError(f"flwr supernode register (node {i}) failed:\n{output}")
        # one torch thread per ClientApp, as in the simulator's workers: 4 nodes share few cores
        node_env = {**fed.env, "OMP_NUM_THREADS": "1"}
        nodes = {i: start(f"supernode-{i}", [
            "flower-supernode", "--root-certificates", str(certs / "ca.crt"),
            "--superlink", fed.address,
            "--auth-supernode-private-key", str(fed.keys / f"supernode-{i}"),
            "--port", str(free_port(ports)),
            "--node-config", f"partition-id={i} num-partitions={num_nodes}"], node_env)
            for i in reversed(range(num_nodes))}
        _wait_for_nodes(fed, nodes)
        yield fed
    finally:
        _kill_all(processes)
