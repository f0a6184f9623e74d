"""Deployment: the ServerApp's main, and the commands that start a real federation.

On real devices the same strategy objects and the same ClientApp run under a
Flower SuperLink and SuperNodes; only the grid changes (Flower's instead of
`SimGrid`), and with it time becomes wall-clock time. A run is configured by
the scenario file named in the run config (`scenario`, from
`[tool.flwr.app.config]` or `flwr run . CONNECTION -c 'scenario="..."'`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

from fedsim.core.schema import Scenario
from fedsim.scenario import load_scenario

log = logging.getLogger("flwr")

APP_ROOT = Path(__file__).resolve().parent.parent
"""The directory holding `scenarios/`: the repository, or the unpacked Flower app (FAB)."""


def scenario_path(name: str) -> Path:
    """A scenario given in the run config: absolute, else relative to cwd or the app root."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    return APP_ROOT / path


def scenario_from_run_config(run_config: dict[str, Any]) -> Scenario:
    """The scenario of a deployed run; `rounds` (> 0) in the run config overrides the file's."""
    rounds = int(run_config.get("rounds", 0) or 0)
    overrides = [f"rounds={rounds}"] if rounds > 0 else []
    return load_scenario(scenario_path(str(run_config["scenario"])), overrides)


def serve(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run the scenario's strategy on Flower's real grid.

    A run that fails records it in its run directory (`error.txt`) and says so on stderr;
    `flwr run` itself still exits 0 (Flower reports a ServerApp's failure in its logs).
    """
    from fedsim.calibration import MeasuredGrid
    from fedsim.core.services import DeployedServices
    from fedsim.engine.tasks import make_task
    from fedsim.results import RunWriter
    from fedsim.runner import execute

    scenario = scenario_from_run_config(context.run_config)
    out_dir = Path(str(context.run_config.get("out-dir", "") or
                       scenario.output.dir / f"{scenario.name}-deployed"))
    timeout = scenario.deploy.reply_timeout_s
    if scenario.deadline_s is not None and timeout is None:
        log.warning("deadline_s (%s virtual seconds) applies to simulation only; deployed, "
                    "the server waits for every reply (set deploy.reply_timeout_s to cut "
                    "stragglers in wall-clock seconds)", scenario.deadline_s)
    writer = RunWriter(out_dir)
    grid = MeasuredGrid(grid)  # each node's measured job times: RUN_DIR/trace.jsonl
    try:
        services = DeployedServices.query(grid, timeout_s=timeout,
                                          expected=scenario.clients.count)
        task = make_task(scenario, services.partitions.num_partitions)
        result = execute(scenario, grid, task, services, [writer], timeout=timeout)
        grid.write(out_dir, services.partitions)
    except Exception as exc:  # execute() has told the writer of failures during the run
        if not (out_dir / "error.txt").exists():
            writer.on_run_failed(f"{type(exc).__name__}: {exc}")
        print(f"fedsim: the deployed run failed ({type(exc).__name__}: {exc}); "
              f"see {out_dir / 'error.txt'}", file=sys.stderr)
        raise
    log.info("fedsim summary: %s", json.dumps(result.summary))
    log.info("fedsim run directory: %s", out_dir)


CERTIFICATES = "docker/certificates"
"""Where `docker/generate_certs.sh` writes the CA and the SuperLink's certificate and key."""
KEYS = "docker/keys"
"""Where `docker/generate_node_keys.sh` writes the SuperNodes' authentication key pairs."""
LOOPBACK = "127.0.0.1"


def parse_superlink(address: str) -> tuple[str, int]:
    """`host:port` (or `[ipv6]:port`) -> (host, port); ValueError says what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host.strip("[]"):
        raise ValueError(f"{address!r}: give host:port, e.g. 192.168.1.10:8000")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether `host` (as in --superlink, brackets allowed) names this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_san(host: str) -> str:
    """The subjectAltName entry that makes the SuperLink's certificate valid for `host`."""
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"DNS:{host}"
    return f"IP:{host}"


def superlink_command(port: int = 8000, insecure: bool = False, host: str = LOOPBACK,
                      certificates: str = CERTIFICATES) -> str:
    """The SuperLink, listening on `host`: one HTTPS port (flwr 1.4x) serves the Fleet API
    (SuperNodes), the Control API (`flwr run`/`ls`/`supernode register`) and the runtime API.

    Secure by default: TLS with the certificates of `docker/generate_certs.sh` and SuperNode
    authentication (only SuperNodes whose public key was registered may connect). `insecure`
    (plain HTTP, anyone who reaches the port may join or submit runs) always binds 127.0.0.1.
    """
    if insecure:
        security, host = "--insecure", LOOPBACK
    else:
        security = (f"--ssl-ca-certfile {certificates}/ca.crt "
                    f"--ssl-certfile {certificates}/server.pem "
                    f"--ssl-keyfile {certificates}/server.key --enable-supernode-auth")
    return (f"flower-superlink {security} --disable-runtime-dependency-installation "
            f"--host {host.strip('[]')} --port {port}")


def supernode_commands(num_nodes: int, superlink: str = f"{LOOPBACK}:8000",
                       insecure: bool = False, first_port: int = 9094,
                       certificates: str = CERTIFICATES, keys: str = KEYS) -> list[str]:
    """One `flower-supernode` command per device, each with its partition of the data and,
    unless `insecure`, the CA to verify the SuperLink with and its own authentication key.

    `first_port + i` is node i's local runtime port; on separate devices they may all be equal.
    """
    def security(i: int) -> str:
        if insecure:
            return "--insecure"
        return (f"--root-certificates {certificates}/ca.crt "
                f"--auth-supernode-private-key {keys}/supernode-{i}")

    return [f"flower-supernode {security(i)} --superlink {superlink} --port {first_port + i} "
            f'--node-config "partition-id={i} num-partitions={num_nodes}"'
            for i in range(num_nodes)]


def register_command(num_nodes: int, connection: str = "fedsim", keys: str = KEYS) -> str:
    """Register every SuperNode's public key with a SuperLink run with --enable-supernode-auth
    (one shell loop; a SuperNode whose key is not registered is refused)."""
    return (f"for i in $(seq 0 {num_nodes - 1}); do "
            f"flwr supernode register {keys}/supernode-$i.pub {connection}; done")
