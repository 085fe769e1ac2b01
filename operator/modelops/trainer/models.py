"""Model architectures by name: a small CNN (conv-BN-ReLU-pool blocks) for images, an MLP for tabular data, with baked-in normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from modelops.trainer import TrainerError

MODEL_NAMES = ("cnn", "mlp")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture choice and hyperparameters."""

    name: str
    hidden_sizes: tuple[int, ...] = (64,)
    channels: tuple[int, ...] = (16, 32)  # CNN only
    dropout: float = 0.1

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "hiddenSizes": list(self.hidden_sizes), "channels": list(self.channels),
                "dropout": self.dropout}


@dataclass(frozen=True)
class Stats:
    """Normalisation statistics, each broadcastable to one sample's shape."""

    mean: Sequence[float] | torch.Tensor
    std: Sequence[float] | torch.Tensor
    shape: tuple[int, ...] = field(default=())


class Classifier(nn.Module):
    """(x - mean) / std, then the network: takes raw float32 [batch, *dims], returns logits [batch, classes]."""

    if TYPE_CHECKING:  # buffers registered in __init__; class annotations would be TorchScript attributes
        mean: torch.Tensor
        std: torch.Tensor

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.to(torch.float32))
        self.register_buffer("std", std.to(torch.float32))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net((x - self.mean) / self.std)
        return logits


def _mlp_head(in_features: int, hidden_sizes: Sequence[int], num_classes: int, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_features, size), nn.ReLU(), nn.Dropout(dropout)]
        in_features = size
    layers.append(nn.Linear(in_features, num_classes))
    return layers


def build_network(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The bare network (without normalisation) for `spec` on samples of `input_shape`."""
    if spec.name not in MODEL_NAMES:
        raise TrainerError(f"unknown model {spec.name!r}; choose from {', '.join(MODEL_NAMES)}")
    if not 0 <= spec.dropout < 1:
        raise TrainerError("--dropout must be in [0, 1)")
    if any(size < 1 for size in (*spec.hidden_sizes, *spec.channels)):
        raise TrainerError("--hidden-sizes and --channels must be positive integers")
    if spec.name == "mlp":
        in_features = 1
        for dim in input_shape:
            in_features *= dim
        return nn.Sequential(nn.Flatten(), *_mlp_head(in_features, spec.hidden_sizes, num_classes, spec.dropout))
    if len(input_shape) != 3:
        raise TrainerError(f"model cnn needs image data [channels, height, width]; got samples of shape "
                           f"{list(input_shape)} (use --model mlp)")
    layers: list[nn.Module] = []
    in_channels, height, width = input_shape
    for out_channels in spec.channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                   nn.ReLU()]
        if min(height, width) >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers.append(nn.Flatten())
    layers += _mlp_head(in_channels * height * width, spec.hidden_sizes, num_classes, spec.dropout)
    return nn.Sequential(*layers)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, stats: Stats) -> Classifier:
    """The trainable classifier with the train data's normalisation statistics as buffers."""
    shape = stats.shape or (-1,)
    mean = torch.as_tensor(stats.mean, dtype=torch.float32).reshape(shape)
    std = torch.as_tensor(stats.std, dtype=torch.float32).reshape(shape)
    return Classifier(build_network(spec, input_shape, num_classes), mean, std)
