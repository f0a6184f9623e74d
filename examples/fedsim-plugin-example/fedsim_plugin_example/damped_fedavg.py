"""FedAvg with a server step size: x <- x + server_lr * (mean of the clients' models - x).

A server half only: clients run the default `train` (local SGD), as for Flower's FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import Field

from fedsim.core.codec import flatten, unflatten
from strategies import FEDAVG_DEFAULTS, FedAvgParams, StrategyInfo


class DampedFedAvg(FedAvg):
    """FedAvg that moves the global model `server_lr` of the way to the clients' mean."""

    def __init__(self, server_lr: float = 0.5, **fedavg: object) -> None:
        super().__init__(**{**FEDAVG_DEFAULTS, **fedavg})
        self.server_lr = server_lr
        self.current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = arrays  # the model the clients start from
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None or self.current is None:
            return mean, metrics
        x = flatten(self.current)
        return unflatten(x + self.server_lr * (flatten(mean) - x), mean), metrics


class DampedFedAvgParams(FedAvgParams):  # FedAvg's settings, plus:
    server_lr: float = Field(default=0.5, gt=0, le=1, description="server step size")


STRATEGIES = (
    StrategyInfo("damped_fedavg", "FedAvg with a server step size (example plug-in)",
                 DampedFedAvgParams,
                 build=lambda params, ctx: DampedFedAvg(**params.model_dump())),
)
