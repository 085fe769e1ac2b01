"""Export a trained classifier to TorchScript bytes (normalisation included) and check it matches eager mode."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from modelops.trainer import TrainerError


def to_torchscript(model: nn.Module, example: torch.Tensor) -> bytes:
    """Script the CPU copy of `model` in eval mode; verify its logits equal the eager ones on `example`."""
    model = model.to("cpu").eval()
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, but Triton's libtorch backend needs it
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
        data = buffer.getvalue()
        reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.inference_mode():
        expected, got = model(example), reloaded(example)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise TrainerError("exported TorchScript model disagrees with the trained model")
    return data
