"""FedAvg with client-side update clipping: each client scales its update w_local - w_global
to an L2 norm of at most `clip_norm` before sending it (the clipping step of DP-FedAvg,
McMahan et al. 2018, arXiv 1710.06963, without its noise).

The server half sends `train.clipped_fedavg` messages; the client half answers them.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from pydantic import Field

from fedsim.core.client import client_task, reply
from fedsim.core.codec import flatten, model_to_arrays, unflatten
from fedsim.core.keys import WORK_KEY
from fedsim.core.training import TrainConfig, local_sgd
from strategies import FEDAVG_DEFAULTS, FedAvgParams, StrategyInfo

MESSAGE_TYPE = "train.clipped_fedavg"


class ClippedFedAvg(FedAvg):
    """FedAvg whose clients clip their updates to `clip_norm`."""

    def __init__(self, clip_norm: float = 1.0, **fedavg: object) -> None:
        super().__init__(**{**FEDAVG_DEFAULTS, **fedavg})
        self.clip_norm = clip_norm

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = ConfigRecord({**config, "clip-norm": self.clip_norm})
        return [Message(m.content, dst_node_id=m.metadata.dst_node_id,
                        message_type=MESSAGE_TYPE)
                for m in super().configure_train(server_round, arrays, config, grid)]


def train_clipped(message: Message, context: Context) -> Message:
    """Local SGD, then the update clipped to `clip-norm`; reports the norm before clipping."""
    task, partition = client_task(context)
    received = message.content["arrays"]
    model = task.model_with(received)
    data = task.train_data(partition)
    config = message.content["config"]
    samples, loss = local_sgd(model, task, data, TrainConfig.from_record(config))
    start = flatten(received)
    update = flatten(model_to_arrays(model)) - start
    norm = float((update**2).sum() ** 0.5)
    update *= min(1.0, float(config["clip-norm"]) / max(norm, 1e-12))
    return reply(message, unflatten(start + update, received), **{
        "num-examples": len(data), "train_loss": loss, WORK_KEY: samples, "update_norm": norm})


class ClippedFedAvgParams(FedAvgParams):  # FedAvg's settings, plus:
    clip_norm: float = Field(default=1.0, gt=0, description="largest L2 norm of an update")


STRATEGIES = (
    StrategyInfo("clipped_fedavg", "FedAvg with client-side update clipping (example plug-in)",
                 ClippedFedAvgParams,
                 build=lambda params, ctx: ClippedFedAvg(**params.model_dump()),
                 client_actions={MESSAGE_TYPE: train_clipped}),
)
