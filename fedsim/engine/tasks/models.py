"""Models by name for the data tasks (`task.model`), or any installed `module:attr`.

Each builder takes the shape of one sample and the number of classes, so one
name serves CIFAR (3x32x32), FEMNIST (1x28x28) or a feature vector. Defined
here in plain torch: torchvision stays optional (its wheels can pull a
non-CPU torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_object


class FedAvgCNN(nn.Module):
    """The CNN of the FedAvg paper (McMahan et al., "Communication-Efficient Learning of Deep
    Networks from Decentralized Data", arXiv:1602.05629): two 5x5 convolutions (32, 64
    channels, 'same' padding), each followed by 2x2 max-pooling, a 512-unit ReLU layer and
    the output layer: 1,663,370 weights for MNIST as in the paper, 1.69M for FEMNIST's 62
    classes, 2.16M for CIFAR-10."""

    def __init__(self, shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = _image_shape(shape, "fedavg_cnn")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 512),
                                  nn.ReLU(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.GroupNorm(groups, outputs),
            nn.ReLU(), nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False),
            nn.GroupNorm(groups, outputs))
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.GroupNorm(groups, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 (He et al., arXiv:1512.03385) in its CIFAR form (3x3 stem, no max-pool) with
    GroupNorm (Wu & He, arXiv:1803.08494) in place of BatchNorm: batch statistics of
    non-IID clients do not average into the global model's (Hsieh et al., "The Non-IID Data
    Quagmire of Decentralized Machine Learning", arXiv:1910.00189), and Reddi et al.
    ("Adaptive Federated Optimization", arXiv:2003.00295) train this model on CIFAR-10.
    `groups` per normalisation layer: 2 (our default). 11.2M weights."""

    def __init__(self, shape: tuple[int, ...], num_classes: int, groups: int = 2) -> None:
        super().__init__()
        channels, _, _ = _image_shape(shape, "resnet18_gn")
        layers: list[nn.Module] = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False),
                                   nn.GroupNorm(groups, 64), nn.ReLU()]
        inputs = 64
        for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(inputs, outputs, stride, groups),
                       _BasicBlock(outputs, outputs, 1, groups)]
            inputs = outputs
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CharLSTM(nn.Module):
    """LEAF's next-character model for Shakespeare (Caldas et al., "LEAF: A Benchmark for
    Federated Settings", arXiv:1812.01097; the FedAvg paper's): characters embedded in 8
    dimensions, a 2-layer LSTM of 256 units, logits over the vocabulary from the last step.
    Input: (batch, sequence) character indices; `num_classes` is the vocabulary size."""

    def __init__(self, shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(shape) != 1:
            raise ScenarioError(f"task.model: char_lstm reads sequences of character indices, "
                                f"got samples of shape {shape}")
        self.embedding = nn.Embedding(num_classes, 8)
        self.lstm = nn.LSTM(8, 256, num_layers=2, batch_first=True)
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(x))
        return self.head(out[:, -1])


def mlp(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The FedAvg paper's "2NN": two hidden ReLU layers of 200 units (arXiv:1602.05629)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 200), nn.ReLU(),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))


def logreg(shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (the FedProx paper's model on Synthetic(α, β))."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), num_classes))


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "fedavg_cnn": FedAvgCNN, "resnet18_gn": ResNet18GN, "char_lstm": CharLSTM, "mlp": mlp,
    "logreg": logreg}
"""The project's models by name: builder(sample shape, number of classes)."""


def is_reference(name: str) -> bool:
    """Whether `task.model` names an installed `module:attr` instead of a model here."""
    return ":" in name


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The builder `task.model` names; a `module:attr` is imported from installed packages
    only and called as `factory(shape, num_classes)`."""
    if not is_reference(name):
        return MODELS[name]
    factory = installed_object(name, "task.model")
    if not callable(factory):
        raise ScenarioError(f"task.model: {name!r} is not callable; name a function or class "
                            "(sample shape, num_classes) -> torch.nn.Module")
    return factory


def build_model(name: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model `name` for samples of `shape` and `num_classes` outputs."""
    model = model_factory(name)(shape, num_classes)
    if not isinstance(model, nn.Module):
        raise ScenarioError(f"task.model: {name!r} returned a {type(model).__name__}, not a "
                            "torch.nn.Module")
    return model


def _image_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape[1:]) < 4:
        raise ScenarioError(f"task.model: {name} needs images (channels, height, width) of "
                            f"at least 4x4, got samples of shape {shape}")
    return shape[0], shape[1], shape[2]
