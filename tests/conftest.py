"""Shared test helpers: scenario builders and one Ray cluster per session."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from fedsim.core.schema import Scenario
from fedsim.files import set_path
from fedsim.scenario import parse_scenario

BASE: dict[str, Any] = {
    "name": "test",
    "seed": 0,
    "rounds": 2,
    "task": {"name": "digits", "model": "logreg", "partition": {"kind": "iid"}},
    "training": {"lr": 0.1, "local_epochs": 1, "batch_size": 16},
    "clients": {"count": 6},
    "strategy": {"name": "fedavg", "params": {"fraction_evaluate": 0.0}},
    "backend": {"kind": "inline"},
}


def scenario(base: dict[str, Any] | None = None, **overrides: Any) -> Scenario:
    """A validated scenario: BASE (or `base`) with dotted-key overrides (a__b=1 is a.b=1)."""
    data = copy.deepcopy(base or BASE)
    for key, value in overrides.items():
        set_path(data, key.replace("__", "."), value)
    return parse_scenario(data)


def quadratic(centers: list[float], **overrides: Any) -> Scenario:
    """Quadratic clients (exact gradients), inline, full participation, no evaluation."""
    data = copy.deepcopy(BASE)
    data["task"] = {"name": "quadratic", "params": {"centers": centers}}
    data["clients"] = {"count": len(centers)}
    data["training"] = {"lr": 0.1, "local_steps": 1, "batch_size": 1}
    data["evaluation"] = {"centralized_every": 1}
    return scenario(data, **overrides)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster shared by every test that needs Ray."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    """One real deployment for the session (tests/harness.py): a TLS SuperLink with SuperNode
    authentication and 4 authenticated SuperNodes on 127.0.0.1; killed at the end."""
    from tests.harness import federation

    with federation(tmp_path_factory.mktemp("deployment"), num_nodes=4) as fed:
        yield fed
