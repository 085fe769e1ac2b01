"""Unit tests of model construction, baked-in normalisation, augmentation and TorchScript export."""

from __future__ import annotations

import io

import pytest
import torch

from modelops.trainer import TrainerError
from modelops.trainer.data import Augmentation
from modelops.trainer.export import to_torchscript
from modelops.trainer.loop import augment
from modelops.trainer.models import ModelSpec, Stats, build_model


@pytest.mark.parametrize("name, shape", [("cnn", (1, 8, 8)), ("cnn", (3, 5, 7)), ("mlp", (20,)), ("mlp", (1, 8, 8))])
def test_output_shapes(name: str, shape: tuple[int, ...]) -> None:
    channels = shape[0]
    stats = Stats([0.0] * channels, [1.0] * channels, (channels, 1, 1) if len(shape) == 3 else (channels,))
    model = build_model(ModelSpec(name, hidden_sizes=(16, 8), channels=(4, 8)), shape, 10, stats)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)


def test_bad_model_choices() -> None:
    stats = Stats([0.0], [1.0], (1,))
    with pytest.raises(TrainerError, match="unknown model 'rnn'"):
        build_model(ModelSpec("rnn"), (4,), 2, stats)
    with pytest.raises(TrainerError, match="model cnn needs image data"):
        build_model(ModelSpec("cnn"), (4,), 2, stats)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_includes_normalisation() -> None:
    torch.manual_seed(0)
    stats = Stats([5.0, -3.0], [2.0, 4.0], (2,))
    model = build_model(ModelSpec("mlp", hidden_sizes=(8,)), (2,), 3, stats).eval()
    raw = torch.tensor([[5.0, -3.0], [7.0, 1.0]])
    scripted = torch.jit.load(io.BytesIO(to_torchscript(model, raw)))
    expected = model.net(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))  # what normalised inputs give
    assert torch.allclose(scripted(raw), expected, atol=1e-6)


def test_augmentation_shifts_by_at_most_one_pixel_and_keeps_shape() -> None:
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    generator = torch.Generator().manual_seed(0)
    out = augment(x, Augmentation(max_shift=1), torch.ones(1, 1, 1), generator)
    assert out.shape == x.shape
    peaks = {tuple(int(i) for i in (img[0] == 1).nonzero()[0]) for img in out}
    assert peaks <= {(r, c) for r in (3, 4, 5) for c in (3, 4, 5)} and len(peaks) > 3
    noisy = augment(x, Augmentation(noise_std=0.1), torch.ones(1, 1, 1), generator)
    assert 0.05 < float((noisy - x).std()) < 0.2


LIBTORCH_CASES = [("cnn", (1, 8, 8)), ("mlp", (20,))]


@pytest.mark.parametrize("name, shape", LIBTORCH_CASES)
def test_torchscript_matches_the_libtorch_backend_conventions(name: str, shape: tuple[int, ...]) -> None:
    """Triton's libtorch backend calls forward() with the config's inputs in INPUT__<i> order and reads its
    outputs as OUTPUT__<i>: so one tensor in (the batch dimension first, then the signature's dims), one
    tensor out, [batch, classes] -- the signature the trainer publishes (docs/serving.md)."""
    from modelops.triton.signature import Signature

    stats = Stats([0.0], [1.0], ())
    model = build_model(ModelSpec(name, hidden_sizes=(8,), channels=(4,)), shape, 3, stats)
    loaded = torch.jit.load(io.BytesIO(to_torchscript(model, torch.zeros(2, *shape))))
    arguments = loaded.forward.schema.arguments
    assert [a.name for a in arguments][0] == "self" and len(arguments) == 2
    assert str(arguments[1].type) == "Tensor" and str(loaded.forward.schema.returns[0].type) == "Tensor"
    signature = Signature.classifier(shape, 3)
    assert [t.name for t in signature.inputs] == ["INPUT__0"] and [t.name for t in signature.outputs] == ["OUTPUT__0"]
    for batch in (1, 5):
        out = loaded(torch.zeros(batch, *signature.inputs[0].dims))
        assert list(out.shape) == [batch, *signature.outputs[0].dims]
