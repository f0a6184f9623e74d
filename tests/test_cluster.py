"""A run on a real two-raylet Ray cluster, with a plug-in shipped through `runtime_env`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BASE

ROOT = Path(__file__).resolve().parent.parent

PLUGIN = '''
"""FedAvg with a client half of its own: a message type only this plug-in answers."""
from flwr.app import Message
from flwr.serverapp.strategy import FedAvg

from fedsim.core import client
from strategies import FEDAVG_DEFAULTS, FedAvgParams, StrategyInfo

MESSAGE_TYPE = "train.shipped_fedavg"


class ShippedFedAvg(FedAvg):
    def __init__(self, **fedavg):
        super().__init__(**{**FEDAVG_DEFAULTS, **fedavg})

    def configure_train(self, server_round, arrays, config, grid):
        return [Message(m.content, dst_node_id=m.metadata.dst_node_id,
                        message_type=MESSAGE_TYPE)
                for m in super().configure_train(server_round, arrays, config, grid)]


STRATEGIES = (StrategyInfo("shipped_fedavg", "FedAvg, shipped to the nodes by runtime_env",
                           FedAvgParams, build=lambda p, ctx: ShippedFedAvg(**p.model_dump()),
                           client_actions={MESSAGE_TYPE: client.train}),)
'''


def installed_plugin(site: Path) -> None:
    """A distribution `fedsim-shipped-plugin` as pip leaves one: package and metadata."""
    (site / "fedsim_shipped_plugin").mkdir(parents=True)
    (site / "fedsim_shipped_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    meta = site / "fedsim_shipped_plugin-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsim-shipped-plugin\n"
                                   "Version: 0.1\n")
    (meta / "top_level.txt").write_text("fedsim_shipped_plugin\n")
    (meta / "entry_points.txt").write_text(
        "[fedsim.strategies]\nshipped_fedavg = fedsim_shipped_plugin:STRATEGIES\n")


@pytest.mark.slow
@pytest.mark.ray
def test_two_raylets_run_a_shipped_plugin_on_both_nodes_with_the_inline_numbers(tmp_path):
    """Its own Ray cluster, so a subprocess (31 s on 2 cores at load 1.3): two raylets of one CPU
    each, so the default two actors land one on each node. The strategy's plug-in is
    installed for the driver only; the workers import its client half from
    runtime_env.py_modules, or every training job would fail (checked by hand)."""
    installed_plugin(tmp_path / "site")
    scenario = {**BASE, "rounds": 2, "channel": {"uplink": {"noise_sigma": 0.01}},
                "strategy": {"name": "shipped_fedavg", "params": {"fraction_evaluate": 0.5}},
                "backend": {"kind": "ray",
                            "runtime_env": {"py_modules": ["fedsim-shipped-plugin"]}}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "two_raylets.py"), str(tmp_path / "site"),
         json.dumps(scenario), "fedavg"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    cluster, inline = out["cluster"], out["inline"]
    actors = cluster["summary"]["actors"]
    assert len(actors) == 2
    assert sorted(a["node_id"] for a in actors) == out["nodes"]  # one actor on each raylet
    assert [a["resources"] for a in actors] == [{"CPU": 1.0}] * 2
    assert cluster["summary"].get("total_client_errors", 0) == 0
    assert cluster["records"] == inline["records"]
    assert cluster["model"] == inline["model"]
