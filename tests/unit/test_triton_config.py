"""Unit tests of config.pbtxt rendering, signatures and repository layout (the operator-side, torch-free package)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelops.triton.config import render_config
from modelops.triton.repository import list_versions, next_version, validate_model_name
from modelops.triton.signature import Signature, TensorSpec, load_signature

DIGITS = Signature.classifier((1, 8, 8), 10, {"mean": [4.9], "std": [6.0], "shape": [1, 1, 1]})

PYTHON_PINNED = """\
name: "digits"
backend: "python"
max_batch_size: 32
version_policy: { specific: { versions: [ 3 ] } }
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    dims: [ 1, 8, 8 ]
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 100
}
"""

PYTORCH_DEFAULTS = """\
name: "digits"
platform: "pytorch_libtorch"
max_batch_size: 64
input [
  {
    name: "INPUT__0"
    data_type: TYPE_FP32
    dims: [ 1, 8, 8 ]
  }
]
output [
  {
    name: "OUTPUT__0"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [
  {
    count: 1
    kind: KIND_AUTO
  }
]
dynamic_batching {
}
"""


def test_python_backend_pinned_version_golden() -> None:
    text = render_config("digits", DIGITS, backend="python", max_batch_size=32, preferred_batch_sizes=(8, 16),
                         max_queue_delay_us=100, instance_count=2, instance_kind="KIND_CPU", version=3)
    assert text == PYTHON_PINNED


def test_pytorch_defaults_golden() -> None:
    assert render_config("digits", DIGITS) == PYTORCH_DEFAULTS


def test_no_batching_puts_the_batch_dimension_in_dims() -> None:
    text = render_config("digits", DIGITS, max_batch_size=0)
    assert "dims: [ -1, 1, 8, 8 ]" in text and "dims: [ -1, 10 ]" in text
    assert "dynamic_batching" not in text and "max_batch_size: 0" in text


def test_several_tensors_are_comma_separated() -> None:
    signature = Signature(inputs=(TensorSpec("A", "FP32", (3,)), TensorSpec("B", "INT64", (1,))),
                          outputs=(TensorSpec("C", "FP32", (2,)),), num_classes=2)
    text = render_config("m", signature)
    assert '    name: "A"\n    data_type: TYPE_FP32\n    dims: [ 3 ]\n  },\n  {\n    name: "B"' in text
    assert "data_type: TYPE_INT64" in text


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_size": -1}, "max_batch_size"),
    ({"instance_count": 0}, "instance_count"),
    ({"preferred_batch_sizes": (128,)}, "preferred_batch_sizes"),
    ({"version": 0}, "version"),
    ({"backend": "tensorflow"}, "tensorflow"),
    ({"instance_kind": "KIND_TPU"}, "KIND_TPU"),
])
def test_invalid_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_config("digits", DIGITS, **kwargs)  # type: ignore[arg-type]


def test_signature_round_trip_and_load(tmp_path: Path) -> None:
    assert Signature.from_dict(json.loads(json.dumps(DIGITS.to_dict()))) == DIGITS
    (tmp_path / "metadata.json").write_text(json.dumps({"signature": DIGITS.to_dict()}))
    assert load_signature(tmp_path) == DIGITS
    with pytest.raises(ValueError, match="does not exist"):
        load_signature(tmp_path / "nope")
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(ValueError, match="no valid signature"):
        load_signature(tmp_path)
    with pytest.raises(ValueError, match="unknown Triton datatype"):
        TensorSpec("x", "FLOAT", (1,))


def test_repository_versions(tmp_path: Path) -> None:
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "10", ".publishing-x", "latest", "07"):
        (tmp_path / name).mkdir()
    (tmp_path / "11").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 3, 10]
    assert next_version(tmp_path) == 11
    assert validate_model_name("digits-v2.cnn_1") == "digits-v2.cnn_1"
    for bad in ("", ".hidden", "a/b", "x" * 64):
        with pytest.raises(ValueError):
            validate_model_name(bad)


def test_triton_package_never_imports_torch() -> None:
    code = ("import sys, modelops.triton.config, modelops.triton.server, modelops.triton.signature, "
            "modelops.triton.repository, modelops.trainer.progress; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
