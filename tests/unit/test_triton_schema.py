"""Every config.pbtxt the operator renders parses against Triton's own ModelConfig protobuf (the schema
tritonclient ships), for both backends and every architecture's signature, and follows the libtorch backend's
naming and batching conventions (docs/serving.md)."""

from __future__ import annotations

import re

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from modelops.triton.config import Backend, render_config
from modelops.triton.pool import load_config
from modelops.triton.signature import Signature

# One signature per architecture, as the trainer publishes them (trainer.cli._publish).
SIGNATURES = {
    "cnn": Signature.classifier((1, 8, 8), 10, {"mean": [4.9], "std": [6.0], "shape": [1, 1, 1]}),
    "mlp": Signature.classifier((20,), 4),
    "gru": Signature.sequence_classifier(4),  # INT64 token ids, variable length
    "transformer": Signature.sequence_classifier(4),
}
# libtorch binds config tensors to the TorchScript forward() arguments and outputs by position, read from
# the names' "<anything>__<index>" suffix.
LIBTORCH_NAME = re.compile(r"^(INPUT|OUTPUT)__(\d+)$")

SETTINGS = [
    {},
    {"max_batch_size": 0},
    {"max_batch_size": 32, "preferred_batch_sizes": (8, 16), "max_queue_delay_us": 100, "instance_count": 2,
     "instance_kind": "KIND_CPU", "version": 3, "cpu_cores": 4},
    {"instance_kind": "KIND_GPU", "gpus": 2, "cpu_cores": 8},
]


def parse(text: str) -> model_config_pb2.ModelConfig:
    """text_format.Parse raises ParseError on any field, enum value or syntax ModelConfig does not know."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _cases() -> list[tuple[str, Backend, dict[str, object]]]:
    cases = []
    for arch in SIGNATURES:
        for backend in Backend:
            for settings in SETTINGS:
                cases.append((arch, backend, settings))
            if backend is Backend.PYTHON:
                cases.append((arch, backend, {"version": 2, "version_directory": "/published/digits/2"}))
    return cases


@pytest.mark.parametrize("arch, backend, settings", _cases())
def test_rendered_config_parses_as_triton_model_config(arch: str, backend: Backend,
                                                        settings: dict[str, object]) -> None:
    signature = SIGNATURES[arch]
    config = parse(render_config("m", signature, backend=backend, **settings))  # type: ignore[arg-type]
    batch = int(settings.get("max_batch_size", 64))  # type: ignore[call-overload]
    assert config.name == "m"
    assert config.max_batch_size == batch
    if backend is Backend.PYTORCH:
        assert (config.platform, config.backend) == ("pytorch_libtorch", "")
    else:
        assert (config.platform, config.backend) == ("", "python")
    for got, want in [*zip(config.input, signature.inputs, strict=True),
                      *zip(config.output, signature.outputs, strict=True)]:
        assert got.name == want.name
        assert model_config_pb2.DataType.Name(got.data_type) == want.config_datatype
        # With batching on, dims leave the batch dimension out; without it, the batch is an explicit -1.
        assert list(got.dims) == (list(want.dims) if batch else [-1, *want.dims])
    assert config.HasField("dynamic_batching") == (batch > 0)
    if "version" in settings:
        assert list(config.version_policy.specific.versions) == [settings["version"]]
    if "cpu_cores" in settings:
        assert set(config.parameters) == {"INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"}
    if "version_directory" in settings:
        assert config.parameters["VERSION_DIRECTORY"].string_value == settings["version_directory"]
    assert [g.count for g in config.instance_group] == [settings.get("instance_count", 1)]


@pytest.mark.parametrize("arch", SIGNATURES)
@pytest.mark.parametrize("backend", [b.value for b in Backend])
@pytest.mark.parametrize("batch", [0, 16])
def test_pool_load_config_parses_as_triton_model_config(arch: str, backend: str, batch: int) -> None:
    """A pool copy's JSON config (Triton's repository API) is the same schema in its JSON form."""
    signature = SIGNATURES[arch].to_dict()
    spec = {"backend": backend, "maxBatchSize": batch, "instanceCount": 2,
            "dynamicBatching": {"preferredBatchSizes": [4, 8] if batch else [], "maxQueueDelayMicroseconds": 50}}
    config = json_format.ParseDict(load_config("m", 3, spec, 4.0, signature=signature),
                                   model_config_pb2.ModelConfig())
    assert config.max_batch_size == batch and list(config.version_policy.specific.versions) == [3]
    assert [list(t.dims) for t in config.input] == [list(t["dims"]) if batch else [-1, *t["dims"]]
                                                    for t in signature["inputs"]]


@pytest.mark.parametrize("arch", SIGNATURES)
def test_signatures_follow_libtorch_naming(arch: str) -> None:
    """INPUT__0.. and OUTPUT__0.., indices 0..n-1 in order: the libtorch backend's positional convention."""
    signature = SIGNATURES[arch]
    for prefix, tensors in (("INPUT", signature.inputs), ("OUTPUT", signature.outputs)):
        matches = [LIBTORCH_NAME.match(t.name) for t in tensors]
        assert all(m and m.group(1) == prefix for m in matches), [t.name for t in tensors]
        assert [int(m.group(2)) for m in matches if m] == list(range(len(tensors)))


def test_a_field_triton_does_not_know_is_rejected() -> None:
    """The check has teeth: a misspelt field or enum value fails to parse."""
    text = render_config("m", SIGNATURES["mlp"])
    with pytest.raises(text_format.ParseError):
        parse(text.replace("max_batch_size", "max_batchsize"))
    with pytest.raises(text_format.ParseError):
        parse(text.replace("TYPE_FP32", "TYPE_FLOAT32"))
    with pytest.raises(text_format.ParseError):
        parse(text.replace("KIND_AUTO", "KIND_TPU"))
