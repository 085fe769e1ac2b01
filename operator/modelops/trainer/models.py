"""Model architectures by name: a small CNN (conv-BN-ReLU-pool blocks) for images, an MLP for tabular data, with
baked-in normalisation; a GRU and a small Transformer encoder for token sequences, with the padding mask derived
from the pad id inside the model (so a padded batch answers each row as it would alone)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from modelops.trainer import TrainerError
from modelops.trainer.data import PAD_ID, SEQUENCE_MODELS, UNK_ID

MODEL_NAMES = ("cnn", "mlp", *SEQUENCE_MODELS)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture choice and hyperparameters."""

    name: str
    hidden_sizes: tuple[int, ...] = (64,)
    channels: tuple[int, ...] = (16, 32)  # CNN only
    dropout: float = 0.1
    embedding_dim: int = 32  # sequence models: token (and position) embedding width
    layers: int = 1  # sequence models: GRU or encoder layers
    heads: int = 2  # transformer: attention heads (divides embedding_dim)

    def to_dict(self) -> dict[str, object]:
        spec: dict[str, object] = {"name": self.name, "hiddenSizes": list(self.hidden_sizes),
                                   "channels": list(self.channels), "dropout": self.dropout}
        if self.name in SEQUENCE_MODELS:
            spec |= {"embeddingDim": self.embedding_dim, "layers": self.layers, "heads": self.heads}
        return spec


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
    if spec.name in SEQUENCE_MODELS:
        raise TrainerError(f"model {spec.name} needs sequence data (token ids): use --dataset synthetic-sequence "
                           f"or a sequence data file")
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


class SequenceClassifier(nn.Module):
    """Token ids int64 [batch, length] (0 = padding at the end) -> logits [batch, classes].

    Ids outside the vocabulary become the unknown id; rows are cut at max_length (the longest the model
    was trained on: the transformer has no position beyond it). The mask is `tokens != 0`, made inside
    the model, so clients send padded batches of any length and each row's answer ignores the padding.
    """

    def __init__(self, vocab_size: int, max_length: int, spec: ModelSpec) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.pad_id, self.unk_id = PAD_ID, UNK_ID
        self.embed = nn.Embedding(vocab_size, spec.embedding_dim, padding_idx=PAD_ID)

    def tokens_and_mask(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut to max_length, unknown ids mapped, and the mask of real tokens."""
        tokens = tokens[:, :self.max_length].long()
        unknown = (tokens < 0) | (tokens >= self.vocab_size)
        tokens = torch.where(unknown, torch.full_like(tokens, self.unk_id), tokens)
        return tokens, tokens != self.pad_id


class GRUClassifier(SequenceClassifier):
    """Unidirectional GRU: the state at a row's last real token never saw its padding; that state (gathered
    at length - 1) feeds the head."""

    def __init__(self, vocab_size: int, max_length: int, num_classes: int, spec: ModelSpec) -> None:
        super().__init__(vocab_size, max_length, spec)
        hidden = spec.hidden_sizes[0]
        self.gru = nn.GRU(spec.embedding_dim, hidden, num_layers=spec.layers, batch_first=True,
                          dropout=spec.dropout if spec.layers > 1 else 0.0)
        self.head = nn.Sequential(*_mlp_head(hidden, spec.hidden_sizes[1:], num_classes, spec.dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens, mask = self.tokens_and_mask(tokens)
        outputs, _ = self.gru(self.embed(tokens))
        last = (mask.long().sum(dim=1) - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
        logits: torch.Tensor = self.head(outputs.gather(1, last).squeeze(1))
        return logits


class TransformerClassifier(SequenceClassifier):
    """A small encoder: learned positions, src_key_padding_mask hiding the padding from attention, and the
    mean over real tokens only as the pooled feature."""

    def __init__(self, vocab_size: int, max_length: int, num_classes: int, spec: ModelSpec) -> None:
        super().__init__(vocab_size, max_length, spec)
        self.positions = nn.Embedding(max_length, spec.embedding_dim)
        layer = nn.TransformerEncoderLayer(spec.embedding_dim, spec.heads, dim_feedforward=spec.hidden_sizes[0],
                                           dropout=spec.dropout, batch_first=True)
        # no nested-tensor fast path: it drops padded positions and would make the numerics depend on padding
        self.encoder = nn.TransformerEncoder(layer, spec.layers, enable_nested_tensor=False)
        self.head = nn.Sequential(*_mlp_head(spec.embedding_dim, spec.hidden_sizes[1:], num_classes, spec.dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens, mask = self.tokens_and_mask(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.positions(positions).unsqueeze(0)
        attend = mask.clone()
        attend[:, 0] = True  # an all-pad row would mask every key (NaN): it attends to its first position
        encoded = self.encoder(x, src_key_padding_mask=~attend)
        weights = mask.unsqueeze(2).to(encoded.dtype)
        pooled = (encoded * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.head(pooled)
        return logits


def build_sequence_model(spec: ModelSpec, vocab_size: int, max_length: int, num_classes: int) -> SequenceClassifier:
    """A gru or transformer classifier over ids below `vocab_size`, rows of at most `max_length` tokens."""
    if spec.name not in SEQUENCE_MODELS:
        raise TrainerError(f"model {spec.name} is not a sequence model; choose from {', '.join(SEQUENCE_MODELS)}")
    if not 0 <= spec.dropout < 1:
        raise TrainerError("--dropout must be in [0, 1)")
    if min(spec.embedding_dim, spec.layers, spec.heads, *spec.hidden_sizes) < 1:
        raise TrainerError("--embedding-dim, --layers, --heads and --hidden-sizes must be positive")
    if spec.name == "transformer" and spec.embedding_dim % spec.heads:
        raise TrainerError(f"--embedding-dim {spec.embedding_dim} must be a multiple of --heads {spec.heads}")
    kind = GRUClassifier if spec.name == "gru" else TransformerClassifier
    return kind(vocab_size, max_length, num_classes, spec)
