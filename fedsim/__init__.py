"""fedsim: simulate federated learning on heterogeneous devices, then deploy it with Flower.

`fedsim.simulate(...)` runs a scenario from Python (`fedsim.api`); the command line is
`fedsim` (`fedsim.cli`). Importing the package imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["simulate"]


def __getattr__(name: str) -> Any:
    if name == "simulate":
        from fedsim.api import simulate

        return simulate
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
