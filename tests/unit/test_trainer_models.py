"""Unit tests of model construction, baked-in normalisation, augmentation and TorchScript export."""

from __future__ import annotations

import io

import pytest
import torch

from modelops.trainer import TrainerError
from modelops.trainer.data import Augmentation
from modelops.trainer.export import to_torchscript
from modelops.trainer.loop import augment
from modelops.trainer.data import SEQUENCE_MODELS
from modelops.trainer.models import ModelSpec, Stats, build_model, build_sequence_model


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


LIBTORCH_CASES = [("cnn", (1, 8, 8)), ("mlp", (20,)), ("gru", (-1,)), ("transformer", (-1,))]
TORCH_TYPES = {"FP32": torch.float32, "INT64": torch.int64}


def sequence_model(name: str, vocab: int = 12, max_length: int = 16, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sequence_model(ModelSpec(name, hidden_sizes=(16, 8), embedding_dim=8, heads=2), vocab, max_length,
                                classes).eval()


@pytest.mark.parametrize("name, shape", LIBTORCH_CASES)
def test_torchscript_matches_the_libtorch_backend_conventions(name: str, shape: tuple[int, ...]) -> None:
    """Triton's libtorch backend calls forward() with the config's inputs in INPUT__<i> order and reads its
    outputs as OUTPUT__<i>: so one tensor in (the batch dimension first, then the signature's dims, -1 any
    size), one tensor out, [batch, classes] -- the signature the trainer publishes (docs/serving.md)."""
    from modelops.triton.signature import Signature

    if name in SEQUENCE_MODELS:
        model, signature = sequence_model(name), Signature.sequence_classifier(3)
    else:
        model = build_model(ModelSpec(name, hidden_sizes=(8,), channels=(4,)), shape, 3, Stats([0.0], [1.0], ()))
        signature = Signature.classifier(shape, 3)
    dtype = TORCH_TYPES[signature.inputs[0].datatype]
    example_shape = [2, *(d if d > 0 else 5 for d in signature.inputs[0].dims)]
    loaded = torch.jit.load(io.BytesIO(to_torchscript(model, torch.ones(example_shape, dtype=dtype) * 2)))
    arguments = loaded.forward.schema.arguments
    assert [a.name for a in arguments][0] == "self" and len(arguments) == 2
    assert str(arguments[1].type) == "Tensor" and str(loaded.forward.schema.returns[0].type) == "Tensor"
    assert [t.name for t in signature.inputs] == ["INPUT__0"] and [t.name for t in signature.outputs] == ["OUTPUT__0"]
    for batch, variable in ((1, 3), (5, 11)):
        dims = [d if d > 0 else variable for d in signature.inputs[0].dims]
        out = loaded(torch.ones([batch, *dims], dtype=dtype) * 2)
        assert list(out.shape) == [batch, *signature.outputs[0].dims] and out.dtype == torch.float32


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_a_sequence_answers_the_same_alone_and_padded_among_longer_ones(name: str) -> None:
    """The mask comes from the pad id inside the model: padding never changes a row's logits."""
    model = torch.jit.load(io.BytesIO(to_torchscript(sequence_model(name), torch.tensor([[2, 3, 0], [4, 5, 6]]))))
    short = [2, 9, 4]
    longer = [[5, 6, 7, 8, 9, 10, 11, 2, 3], [3] * 14]
    with torch.inference_mode():
        alone = model(torch.tensor([short]))
        padded = model(torch.tensor([short + [0] * 11, longer[0] + [0] * 5, longer[1]]))
        extra_padding = model(torch.tensor([short + [0] * 40]))
        longer_alone = model(torch.tensor([longer[0]]))
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert torch.allclose(alone, extra_padding, atol=1e-5)
    assert torch.allclose(longer_alone[0], padded[1], atol=1e-5)
    assert not torch.allclose(padded[0], padded[1], atol=1e-3)  # the rows really differ


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_sequence_models_map_unknown_ids_and_cut_at_max_length(name: str) -> None:
    model = sequence_model(name, vocab=12, max_length=6)
    with torch.inference_mode():
        unknown = model(torch.tensor([[2, 1, 4], [2, 99, 4], [2, -7, 4]]))
        cut = (model(torch.tensor([[2, 3, 4, 5, 6, 7]])), model(torch.tensor([[2, 3, 4, 5, 6, 7] + [8] * 10])))
        empty = model(torch.zeros(1, 4, dtype=torch.long))
    assert torch.allclose(unknown[0], unknown[1]) and torch.allclose(unknown[0], unknown[2])
    assert torch.allclose(cut[0], cut[1], atol=1e-5)  # tokens past max_length are cut
    assert torch.isfinite(empty).all()  # an all-pad row answers, it does not poison a batch with NaN


def test_sequence_model_choices() -> None:
    with pytest.raises(TrainerError, match="needs sequence data"):
        build_model(ModelSpec("gru"), (4,), 2, Stats([0.0], [1.0], (1,)))
    with pytest.raises(TrainerError, match="must be a multiple of --heads 4"):
        build_sequence_model(ModelSpec("transformer", embedding_dim=10, heads=4), 10, 8, 2)
    with pytest.raises(TrainerError, match="not a sequence model"):
        build_sequence_model(ModelSpec("mlp"), 10, 8, 2)
