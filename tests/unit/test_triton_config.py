"""Unit tests of config.pbtxt rendering, signatures and repository layout (the operator-side, torch-free package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelops.triton.config import python_model_source, render_config, threads_per_instance
from modelops.triton.repository import list_versions, next_version, stage_python_model, validate_model_name
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
    ({"version_directory": "/models/digits/1"}, "python backend only"),
    ({"version_directory": "digits/1", "backend": "python"}, "absolute path"),
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
    """Nor does reading the python-backend runtime for a ConfigMap: its source is data to the operator."""
    code = ("import sys, modelops.triton.config, modelops.triton.server, modelops.triton.signature, "
            "modelops.triton.repository, modelops.trainer.progress, modelops.resources.modelservice; "
            "assert 'class TritonPythonModel' in modelops.triton.config.python_model_source(); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'; "
            "assert 'modelops.triton.python_model' not in sys.modules, 'the runtime was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


PYTHON_FOUR_CORES = """\
instance_group [
  {
    count: 2
    kind: KIND_AUTO
  }
]
dynamic_batching {
}
parameters {
  key: "INTRA_OP_THREAD_COUNT"
  value: { string_value: "1" }
}
parameters {
  key: "INTER_OP_THREAD_COUNT"
  value: { string_value: "1" }
}
"""


@pytest.mark.parametrize("cores, instances, threads", [
    (0.5, 1, 1), (1, 1, 1), (1.5, 1, 1), (2, 1, 1), (2, 2, 1), (3, 1, 2), (4, 1, 3), (4, 2, 1), (4, 3, 1),
    (8, 1, 7), (8, 2, 3), (8, 4, 1), (16, 3, 5), (64, 1, 63), (2, 16, 1),
])
def test_threads_per_instance(cores: float, instances: int, threads: int) -> None:
    """One core left to Triton (HTTP, batcher, IPC) from two cores up, the rest split evenly between the
    instances: instances x threads <= cores whenever the cores allow one thread per instance."""
    assert threads_per_instance(cores, instances) == threads
    if instances < cores:
        assert instances * threads <= cores


def test_the_python_backend_model_applies_the_same_thread_rule() -> None:
    """The runtime carries its own copy of the rule, for pods without a CPU limit; it must agree with the
    renderer's, and read the rendered parameters when they are there."""
    from modelops.triton import python_model

    for cores in range(1, 40):
        for instances in range(1, 9):
            assert python_model.threads_per_instance(cores, instances) == threads_per_instance(cores, instances)
    rendered = {"parameters": {"INTRA_OP_THREAD_COUNT": {"string_value": "3"},
                               "INTER_OP_THREAD_COUNT": {"string_value": "1"}}}
    assert python_model.thread_counts(rendered, cores=64) == (3, 1)
    two = {"instance_group": [{"count": 2, "kind": "KIND_CPU"}]}
    assert python_model.thread_counts(two, cores=8) == (3, 1)
    assert python_model.thread_counts(two, cores=2) == (1, 1)
    assert python_model.thread_counts({}, cores=4) == (3, 1)
    on_gpus = {"instance_group": [{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}]}
    assert python_model.thread_counts(on_gpus, cores=9) == (2, 1)
    assert 1 <= python_model.available_cores() <= (os.cpu_count() or 1)


def test_the_runtime_serves_the_version_folder_the_config_names(tmp_path: Path) -> None:
    """The rendered VERSION_DIRECTORY as the runtime reads it from Triton's JSON form of the config; without
    it, the version folder Triton loaded model.py from. stage_python_model lays a repository out as a
    python-backend pod sees it: the rendered config and the operator's runtime, nothing of the version."""
    from modelops.triton import python_model

    text = render_config("digits", DIGITS, backend="python", version=1, version_directory="/models/digits/1")
    assert text.endswith('parameters {\n  key: "VERSION_DIRECTORY"\n  value: { string_value: "/models/digits/1" }\n}\n')
    triton_json = {"parameters": {"VERSION_DIRECTORY": {"string_value": "/models/digits/1"}}}
    args = {"model_repository": "/serving/digits", "model_version": "1"}
    assert python_model.version_directory(triton_json, args) == "/models/digits/1"
    assert python_model.version_directory({}, args) == "/serving/digits/1"

    model_dir = stage_python_model(tmp_path, "digits", 1, text)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "digits", "digits/1", "digits/1/model.py", "digits/config.pbtxt"]
    assert (model_dir / "config.pbtxt").read_text() == text
    runtime = (model_dir / "1" / "model.py").read_text()
    assert runtime == python_model_source() == Path(python_model.__file__).read_text()


def test_cpu_cores_render_thread_parameters_for_every_instance_of_the_pod() -> None:
    text = render_config("digits", DIGITS, backend="python", instance_count=2, cpu_cores=4)
    assert text.endswith(PYTHON_FOUR_CORES)
    libtorch = render_config("digits", DIGITS, cpu_cores=16, instance_count=3)
    assert '  key: "INTRA_OP_THREAD_COUNT"\n  value: { string_value: "5" }' in libtorch
    # KIND_GPU: Triton places `count` instances on each GPU of the pod.
    on_gpus = render_config("digits", DIGITS, cpu_cores=16, instance_count=2, instance_kind="KIND_GPU", gpus=4)
    assert '"INTRA_OP_THREAD_COUNT"\n  value: { string_value: "1" }' in on_gpus
    assert "parameters" not in render_config("digits", DIGITS)  # cores unknown: model.py decides at run time
    with pytest.raises(ValueError, match="cpu_cores"):
        render_config("digits", DIGITS, cpu_cores=0)


SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def served_config(**spec: object) -> str:
    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build

    parsed = ModelServiceSpec.model_validate({"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                                              "repository": {"hostPath": {"path": "/m"}}, **spec})
    return build.config_map(build.ServiceMeta("d", "ns", "u"), parsed, "r", build.Target(1, SIGNATURE))["data"][
        "config.pbtxt"]


def test_modelservice_defaults_batch_without_delay_or_preferred_sizes() -> None:
    """The measured defaults (e2e/bench/bench_serving.py): Triton merges what queues while the instance is
    busy, so no queue delay (it only added latency) and no preferred sizes (maxBatchSize is the target)."""
    text = served_config()
    assert "max_batch_size: 64" in text and text.endswith("dynamic_batching {\n}\n")
    assert "preferred_batch_size" not in text and "max_queue_delay" not in text
    user = served_config(triton={"maxBatchSize": 32, "dynamicBatching": {"maxQueueDelayMicroseconds": 500,
                                                                         "preferredBatchSizes": [16, 32]}})
    assert "max_queue_delay_microseconds: 500" in user and "preferred_batch_size: [ 16, 32 ]" in user
    assert "dynamic_batching" not in served_config(triton={"maxBatchSize": 0})


@pytest.mark.parametrize("cpu, gpus, threads", [("4", 0, "3"), ("500m", 0, "1"), ("2500m", 0, "1"),
                                                 ("16", 2, "7"), (None, 0, None)])
def test_modelservice_cpu_limit_sets_threads(cpu: str | None, gpus: int, threads: str | None) -> None:
    resources: dict[str, object] = {"gpus": gpus, **({"cpu": cpu} if cpu else {})}
    text = served_config(resources=resources)
    if threads is None:
        assert "INTRA_OP_THREAD_COUNT" not in text
    else:
        assert f'"INTRA_OP_THREAD_COUNT"\n  value: {{ string_value: "{threads}" }}' in text


def test_pods_keep_only_the_latency_quantiles_that_are_read() -> None:
    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build

    spec = ModelServiceSpec.model_validate({"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                                            "repository": {"hostPath": {"path": "/m"}}})
    args = build.deployment(build.ServiceMeta("d", "ns", "u"), spec, "r", build.Target(1, SIGNATURE), 1)[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--metrics-config=summary_latencies=true" in args
    assert "--metrics-config=summary_quantiles=0.5:0.05,0.99:0.001" in args


def test_the_runtime_pads_token_requests_of_different_lengths_and_keeps_their_dtype() -> None:
    import numpy as np

    from modelops.triton import python_model

    short, long = np.array([[5, 6]], np.int64), np.array([[7, 8, 9, 10], [2, 3, 4, 0]], np.int64)
    batch = python_model.stack_requests([short, long])
    assert batch.dtype == np.int64
    assert batch.tolist() == [[5, 6, 0, 0], [7, 8, 9, 10], [2, 3, 4, 0]]  # 0 = PAD_ID, masked by the model
    same = python_model.stack_requests([np.ones((1, 3), np.float32), np.zeros((2, 3), np.float32)])
    assert same.shape == (3, 3) and same.dtype == np.float32
    assert python_model.stack_requests([short]) is short
