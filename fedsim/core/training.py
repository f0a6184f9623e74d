"""Client-side building blocks: local training config, minibatches, model <-> arrays.

Every client half (FedAvg's, FedSpeed's, DFedSAM's...) uses these, so the
definition of "a local step" is the same for all strategies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from flwr.app import ConfigRecord

from fedsim.core.device import compute_device
from fedsim.core.schema import TrainingSpec
from fedsim.core.task import Dataset, Task


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters, as carried in a train message's ConfigRecord."""

    lr: float = 0.05
    local_epochs: int = 1
    local_steps: int = 0  # if > 0, overrides local_epochs
    batch_size: int = 32
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx: Flower's FedProx sends it as "proximal-mu"

    @classmethod
    def from_spec(cls, spec: TrainingSpec) -> TrainConfig:
        return cls(**spec.model_dump())

    @classmethod
    def from_record(cls, config: ConfigRecord) -> TrainConfig:
        fields = cls.__dataclass_fields__
        values = {k.replace("-", "_"): v for k, v in config.items()}
        return cls(**{k: v for k, v in values.items() if k in fields})  # type: ignore[arg-type]

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({k.replace("_", "-"): v for k, v in asdict(self).items()})


def local_batches(data: Dataset, config: TrainConfig,
                  generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Minibatches for one round of local work (`batch_indices`), on the job's device.

    The batch order comes from torch's CPU generator, seeded per job by the pool, so it is
    the same whichever device the batches are moved to (`compute_device`).
    """
    device = compute_device()
    for index in batch_indices(len(data), config, generator):
        yield data.x[index].to(device), data.y[index].to(device)


def batch_indices(n: int, config: TrainConfig, generator: torch.Generator | None = None
                  ) -> Iterator[torch.Tensor]:
    """The sample indices of each minibatch of one round: `local_steps` batches, else epochs.

    Each epoch is a fresh permutation; steps cycle through epochs as needed. The one
    definition of a client's batch order, for the per-client and vectorised paths alike.
    """
    if n == 0:
        return
    size = min(config.batch_size, n)
    total = config.local_steps or config.local_epochs * -(-n // size)
    done = 0
    while done < total:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            yield order[start:start + size]
            done += 1
            if done == total:
                return


def make_optimizer(model: torch.nn.Module, config: TrainConfig, lr: float | None = None
                   ) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=config.lr if lr is None else lr,
                           momentum=config.momentum, weight_decay=config.weight_decay)


def local_sgd(model: torch.nn.Module, task: Task, data: Dataset, config: TrainConfig
              ) -> tuple[int, float]:
    """Local SGD; returns (samples processed, mean training loss).

    With `proximal_mu` > 0 this is FedProx's local solver: the loss gains
    mu/2 ||w - w_received||^2 (Li et al. 2020, eq. 2).
    """
    model.train()
    optimizer = make_optimizer(model, config)
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu else []
    samples, loss_sum = 0, 0.0
    for x, y in local_batches(data, config):
        optimizer.zero_grad()
        loss = task.loss(model, x, y)
        if anchor:
            distance = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor,
                                                                strict=True))
            loss = loss + config.proximal_mu / 2 * distance
        loss.backward()
        optimizer.step()
        samples += len(x)
        loss_sum += loss.item() * len(x)
    return samples, loss_sum / max(samples, 1)
