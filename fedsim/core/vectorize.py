"""Vectorised client groups (`backend.vectorize: G`): G clients' local SGD as one computation.

A round of a cross-device run trains many clients on a small model, and the per-client
Python loop (one optimizer step per batch per client) is then the floor of a simulator;
FLUTE (arXiv:2203.13789) and pfl-research (arXiv:2404.06430) avoid it by training clients
together. Here the group's parameters and momentum buffers are stacked along a first
dimension of size G, the model runs once per step for all of them
(`torch.func.vmap` over `torch.func.functional_call`), and one backward pass gives every
client its own gradient (the clients' losses are summed; no parameter is shared).

It is the default `train` (`fedsim.core.client.train`) step for step: each client's batch
order is drawn by `batch_indices` from torch's generator seeded with the client's own job
seed, the loss is the task's cross-entropy over the client's real samples, FedProx's
mu/2 ||w - w_received||^2 is added, and the update is torch's SGD (weight decay, then
momentum). Clients whose batches are smaller, or who have fewer steps, are padded: padded
samples are masked out of the loss, and a client's parameters and buffers are kept as they
are on the steps it does not have. Every client replies with its own model, number of
examples, loss and work, as the per-client path does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from flwr.app import Message
from torch.func import functional_call, vmap

from fedsim.core.client import reply
from fedsim.core.codec import model_to_arrays
from fedsim.core.device import compute_device, seed_job
from fedsim.core.keys import WORK_KEY
from fedsim.core.task import Dataset, Task
from fedsim.core.training import TrainConfig, batch_indices

UNSUPPORTED_LAYERS: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm,
    torch.nn.modules.instancenorm._InstanceNorm, torch.nn.RNNBase)
"""Layers a group cannot train as the per-client path does: random draws per client
(dropout), statistics of the batch kept in buffers (batch and instance norm), and
recurrent layers, which `vmap` does not batch."""


def unsupported_layer(model: torch.nn.Module) -> str | None:
    """The name and type of `model`'s first layer a vectorised group cannot train, if any."""
    for name, module in model.named_modules():
        if isinstance(module, UNSUPPORTED_LAYERS):
            return f"{name or 'model'} ({type(module).__name__})"
    return None


def train_group(task: Task, jobs: Sequence[tuple[Message, int, int]]) -> list[Message]:
    """The replies of the default `train` to each (message, partition, job seed) of a group."""
    device = compute_device()
    configs = [TrainConfig.from_record(m.content["config"]) for m, _, _ in jobs]
    data, steps = [], []
    for (_, partition, seed), config in zip(jobs, configs, strict=True):
        seed_job(device, seed)  # as the pool does before the per-client `train`, which
        data.append(task.train_data(partition))  # then reads the shard and draws its batches
        steps.append(list(batch_indices(len(data[-1]), config)))
    model, params = _stacked_params(task, [m for m, _, _ in jobs])
    anchor = {k: p.clone() for k, p in params.items()}
    buffers = {k: torch.zeros_like(p) for k, p in params.items()}

    def per_client(k: str, values: list[float]) -> torch.Tensor:
        shape = (len(jobs),) + (1,) * (params[k].dim() - 1)
        return torch.tensor(values, dtype=params[k].dtype, device=device).reshape(shape)

    hyper = {name: {k: per_client(k, [getattr(c, name) for c in configs]) for k in params}
             for name in ("lr", "momentum", "weight_decay")}
    # torch's SGD skips weight decay and momentum where they are 0; so does a group whose
    # clients all have them 0 (g + 0 p and 0 b + d are g and d, but cost a pass each)
    decay = any(c.weight_decay for c in configs)
    momentum = any(c.momentum for c in configs)
    mu = torch.tensor([c.proximal_mu for c in configs], device=device)
    x, y, mask = _padded_batches(data, steps, device)
    counts = mask.sum(dim=2)  # (steps, G): each client's samples in each step; 0: no step
    everyone = (counts > 0).all(dim=1).tolist()  # steps every client of the group has
    loss_sums = torch.zeros(len(jobs), dtype=torch.float64, device=device)
    loss_fn = _group_losses(model, proximal=any(c.proximal_mu for c in configs))
    for s in range(x.shape[0]):
        leaves = {k: p.requires_grad_() for k, p in params.items()}
        losses = loss_fn(leaves, anchor, mu, x[s], y[s], mask[s])
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        with torch.no_grad():
            loss_sums += losses.double() * counts[s]  # as `local_sgd`: loss x batch size
            for (k, p), g in zip(leaves.items(), grads, strict=True):
                p = p.detach()
                d = g + hyper["weight_decay"][k] * p if decay else g
                if momentum:
                    d = hyper["momentum"][k] * buffers[k] + d
                updated = p - hyper["lr"][k] * d
                if not everyone[s]:  # a client without this step keeps what it has
                    keep = (counts[s] > 0).reshape((-1,) + (1,) * (p.dim() - 1))
                    updated = torch.where(keep, updated, p)
                    d = torch.where(keep, d, buffers[k])
                params[k] = updated
                buffers[k] = d
    samples = counts.sum(dim=0).long().tolist()
    losses_per_client = (loss_sums / counts.sum(dim=0).clamp(min=1)).tolist()
    replies = []
    for i, (message, _, _) in enumerate(jobs):
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(params[k][i])
        replies.append(reply(message, model_to_arrays(model),
                             **{"num-examples": len(data[i]),
                                "train_loss": losses_per_client[i],
                                WORK_KEY: samples[i]}))
    return replies


def _stacked_params(task: Task, messages: Sequence[Message]
                    ) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The task's model and each parameter of the group's received models, stacked (a model
    sent to the whole group is loaded once)."""
    loaded: dict[int, dict[str, torch.Tensor]] = {}
    rows = []
    for message in messages:
        arrays = message.content["arrays"]
        if id(arrays) not in loaded:
            model = task.model_with(arrays)
            loaded[id(arrays)] = {k: p.detach().clone() for k, p in model.named_parameters()}
        rows.append(loaded[id(arrays)])
    return model, {k: torch.stack([row[k] for row in rows]) for k in rows[0]}


def _padded_batches(data: Sequence[Dataset], steps: Sequence[Sequence[torch.Tensor]],
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (steps, G, batch, ...), targets (steps, G, batch) and the mask of real samples,
    every client's batches padded to the longest batch and the most steps of the group."""
    num_steps = max((len(s) for s in steps), default=0)
    width = max((len(b) for s in steps for b in s), default=0)
    xs, ys, masks = [], [], []
    for shard, batches in zip(data, steps, strict=True):
        index = torch.zeros(num_steps, width, dtype=torch.long)
        mask = torch.zeros(num_steps, width)
        for s, batch in enumerate(batches):
            index[s, :len(batch)] = batch
            mask[s, :len(batch)] = 1.0
        if len(shard):
            xs.append(shard.x[index])
            ys.append(shard.y[index])
        else:  # no samples, no steps: any inputs of the right shape, all masked
            xs.append(torch.zeros((num_steps, width, *shard.x.shape[1:]), dtype=shard.x.dtype))
            ys.append(torch.zeros((num_steps, width, *shard.y.shape[1:]), dtype=shard.y.dtype))
        masks.append(mask)

    def stack(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, dim=1).to(device)
    return stack(xs), stack(ys), stack(masks)


def _group_losses(model: torch.nn.Module, proximal: bool) -> Callable[..., torch.Tensor]:
    """Each client's loss on its padded batch (G,): the task's cross-entropy over its real
    samples, plus FedProx's proximal term where a client of the group has mu > 0 (mu/2 x 0
    = 0 adds nothing to the others). Only the model runs under `vmap`: the loss is computed
    on all the group's logits at once, which is much cheaper than batching it too."""
    forward = vmap(lambda params, x: functional_call(model, params, (x,)))

    def losses(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
               mu: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
               ) -> torch.Tensor:
        logits = forward(params, x)  # (G, batch, classes, ...)
        per_sample = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y.flatten(0, 1), reduction="none").reshape(*mask.shape, -1)
        value = (per_sample.mean(dim=2) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        if not proximal:
            return value
        distance = sum(((params[k] - anchor[k]) ** 2).flatten(1).sum(dim=1) for k in params)
        return value + mu / 2 * distance

    return losses
