"""What training a task's model costs a device: FLOPs per sample and memory.

FLOPs are counted once per model with `torch.utils.flop_counter.FlopCounterMode` on a
forward pass of one training sample; training one sample is charged 3x that (the forward
pass, and a backward pass that costs about twice it: gradients of the activations and of
the weights), the rule FedScale and the scaling-law literature use. The counter counts the
matrix products and convolutions (2 FLOPs per multiply-add); activations, pooling and
normalisation are left out, a few percent of a small model's work.

Memory: weights, their gradients and one optimiser buffer (3x the parameters' bytes), plus
the activations of one forward pass of a batch, which backpropagation keeps.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedsim.core.task import Task
from fedsim.engine.devices import ModelCost

TRAINING_FLOPS_FACTOR = 3.0
"""Training FLOPs per sample over forward FLOPs per sample."""


def forward_flops_per_sample(model: torch.nn.Module, sample: torch.Tensor) -> float:
    """FLOPs of one forward pass of `model` on one sample (`sample` has no batch axis)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(sample.unsqueeze(0))
    return float(counter.get_total_flops())


def model_cost(task: Task, batch_size: int) -> ModelCost:
    """The task model's training FLOPs per sample and the memory a batch of training needs."""
    model = task.make_model()
    sample = task.train_data(0).x[0]
    forward = forward_flops_per_sample(model, sample)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    activations: list[int] = []

    def keep(_: torch.nn.Module, __: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            activations.append(output.numel() * output.element_size())

    hooks = [m.register_forward_hook(keep) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(sample.unsqueeze(0))
    for hook in hooks:
        hook.remove()
    return ModelCost(TRAINING_FLOPS_FACTOR * forward,
                     3.0 * parameters + batch_size * float(sum(activations)))
