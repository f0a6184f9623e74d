"""Deployment: the ServerApp's main, and the commands that start a real federation.

On real devices the same strategy objects and the same ClientApp run under a
Flower SuperLink and SuperNodes; only the grid changes (Flower's instead of
`SimGrid`), and with it time becomes wall-clock time. A run is configured by
the scenario file named in the run config (`scenario`, from
`[tool.flwr.app.config]` or `flwr run . CONNECTION -c 'scenario="..."'`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid

import fedsim
from fedsim.core.schema import Scenario
from fedsim.scenario import load_scenario

log = logging.getLogger("flwr")

APP_ROOT = Path(fedsim.__file__).resolve().parent.parent
"""The directory holding `scenarios/`: the repository, or the unpacked Flower app (FAB)."""


def scenario_path(name: str) -> Path:
    """A scenario given in the run config: absolute, else relative to cwd or the app root."""
    path = Path(name)
    if path.is_absolute() or path.exists():
        return path
    return APP_ROOT / path


def scenario_from_run_config(run_config: dict[str, Any]) -> Scenario:
    """The scenario of a deployed run; `rounds` in the run config overrides the file's."""
    overrides = [f"rounds={run_config['rounds']}"] if "rounds" in run_config else []
    return load_scenario(scenario_path(str(run_config["scenario"])), overrides)


def serve(grid: Grid, context: Context) -> None:
    """The ServerApp's main: run the scenario's strategy on Flower's real grid."""
    from fedsim.engine.tasks import make_task
    from fedsim.results import RunWriter
    from fedsim.runner import execute

    scenario = scenario_from_run_config(context.run_config)
    out_dir = Path(str(context.run_config.get("out-dir", "") or
                       scenario.output.dir / f"{scenario.name}-deployed"))
    result = execute(scenario, grid, make_task(scenario), [RunWriter(out_dir)])
    log.info("fedsim summary: %s", json.dumps(result.summary))
    log.info("fedsim run directory: %s", out_dir)


def superlink_command(port: int = 8000, insecure: bool = True) -> str:
    """The SuperLink: one HTTP port (flwr 1.4x) for the fleet, the control API and runs."""
    security = "--insecure" if insecure else (
        "--ssl-ca-certfile certificates/ca.crt --ssl-certfile certificates/server.pem "
        "--ssl-keyfile certificates/server.key")
    return (f"flower-superlink {security} --disable-runtime-dependency-installation "
            f"--host 0.0.0.0 --port {port}")


def supernode_commands(num_nodes: int, superlink: str = "127.0.0.1:8000",
                       insecure: bool = True, first_port: int = 9094) -> list[str]:
    """One `flower-supernode` command per device, each with its partition of the data.

    `first_port + i` is node i's local runtime port; on separate devices they may all be equal.
    """
    security = "--insecure" if insecure else "--root-certificates certificates/ca.crt"
    return [f"flower-supernode {security} --superlink {superlink} --port {first_port + i} "
            f'--node-config "partition-id={i} num-partitions={num_nodes}"'
            for i in range(num_nodes)]
