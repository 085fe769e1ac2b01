"""A freshly published model served by the real tritonserver (python backend) answers correctly over HTTP and gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelops.triton.config import render_config
from modelops.triton.server import TritonServer, find_triton
from modelops.triton.signature import load_signature

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    repository = tmp_path_factory.mktemp("models")
    train = subprocess.run(
        [sys.executable, "-m", "modelops.trainer", "--dataset", "digits", "--epochs", "4", "--batch-size", "32",
         "--lr", "0.003", "--num-threads", "1", "--repository", str(repository), "--model-name", "digits",
         "--checkpoint-dir", str(tmp_path_factory.mktemp("ckpt"))],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert train.returncode == 0, train.stderr
    version_dir = repository / "digits" / "1"
    config = render_config("digits", load_signature(version_dir), backend="python", max_batch_size=64,
                           instance_kind="KIND_CPU", version=1)
    (repository / "digits" / "config.pbtxt").write_text(config)
    with TritonServer(repository, models=["digits"], env={"OMP_NUM_THREADS": "1"}) as server:
        yield server, version_dir


def held_out(version_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test-split images and labels, and the TorchScript module's own logits for them."""
    import torch

    from modelops.trainer.data import Missing, load_builtin, prepare

    data = prepare(load_builtin("digits", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.2, seed=0)
    x = data.test.x[:100]
    with torch.inference_mode():
        logits = torch.jit.load(str(version_dir / "model.pt"))(torch.from_numpy(x)).numpy()
    return x, data.test.y[:100], logits


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictions_match_torchscript_and_labels(served: tuple[TritonServer, Path], protocol: str) -> None:
    server, version_dir = served
    if protocol == "http":
        import tritonclient.http as client
        url = server.http_url
    else:
        import tritonclient.grpc as client  # type: ignore[no-redef]
        url = server.grpc_url
    x, labels, expected = held_out(version_dir)
    triton = client.InferenceServerClient(url)
    assert triton.is_model_ready("digits", "1")
    outputs = []
    for batch in (x[:1], x[1:37], x[37:]):  # several batch sizes
        tensor = client.InferInput("INPUT__0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = triton.infer("digits", [tensor], outputs=[client.InferRequestedOutput("OUTPUT__0")])
        outputs.append(result.as_numpy("OUTPUT__0"))
    logits = np.concatenate(outputs)
    assert logits.dtype == np.float32 and logits.shape == (100, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == labels).mean() >= 0.9


def test_wrong_input_shape_is_rejected(served: tuple[TritonServer, Path]) -> None:
    import tritonclient.http as client
    from tritonclient.utils import InferenceServerException

    server, _ = served
    tensor = client.InferInput("INPUT__0", [2, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 64), np.float32))
    with pytest.raises(InferenceServerException):
        client.InferenceServerClient(server.http_url).infer("digits", [tensor])


def test_evaluation_pod_program_scores_the_published_held_out_set(served: tuple[TritonServer, Path],
                                                                   tmp_path: Path) -> None:
    """What the evaluation gate's pod runs: the version's eval.npz through Triton, as the candidate and as the
    stable reference, reporting the same accuracy the trainer measured on exactly those rows."""
    import json

    server, version_dir = served
    metadata = json.loads((version_dir / "metadata.json").read_text())
    described = metadata["evaluation"]
    assert (version_dir / "eval.npz").is_file() and described["samples"] > 0
    address = server.http_url.removeprefix("http://")
    report_file = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(version_dir),
                          "--model", "digits", "--version", "1", "--candidate", address, "--stable", address,
                          "--stable-version", "1", "--batch-size", "16", "--report", str(report_file)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(report_file.read_text())
    assert report["samples"] == described["samples"] and report["sha256"] == described["sha256"]
    assert report["accuracy"] == pytest.approx(described["accuracy"], abs=1e-9)
    assert report["stableAccuracy"] == report["accuracy"] >= 0.9
    assert report["lineage"]["testAccuracy"] == metadata["metrics"]["testAccuracy"]
    assert report["lineage"]["datasetFingerprint"] == metadata["dataset"]["fingerprint"]

    # A version folder without an evaluation set is reported as skipped, not as a failure.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metadata.json").write_text(json.dumps({k: v for k, v in metadata.items() if k != "evaluation"}))
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(bare), "--model",
                          "digits", "--version", "1", "--candidate", address, "--report", str(report_file)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "no evaluation set" in json.loads(report_file.read_text())["skipped"]

    # A candidate that cannot be reached: exit 1 and the reason in the report, for the operator to quote.
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(version_dir),
                          "--model", "digits", "--version", "1", "--candidate", "127.0.0.1:9", "--report",
                          str(report_file)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "127.0.0.1:9" in json.loads(report_file.read_text())["error"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_two_instances_from_the_operators_config_load_and_answer(served: tuple[TritonServer, Path],
                                                                 tmp_path: Path) -> None:
    """instanceCount 2 as the operator renders it for a ModelService (python backend, no CPU limit): both
    instances load, each takes its share of the cores for torch (never all of them), and answers are right."""
    import json
    import shutil

    import tritonclient.http as client

    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build
    from modelops.trainer.triton_model import threads_per_instance

    _, version_dir = served
    signature = json.loads((version_dir / "metadata.json").read_text())["signature"]
    spec = ModelServiceSpec.model_validate({"model": {"name": "digits", "version": 1, "signature": signature},
                                            "repository": {"hostPath": {"path": str(tmp_path)}},
                                            "triton": {"backend": "python", "instanceCount": 2}})
    config = build.config_map(build.ServiceMeta("d", "ns", "uid"), spec, "r", build.Target(1, signature))
    model_dir = tmp_path / "digits"
    shutil.copytree(version_dir, model_dir / "1")
    (model_dir / "config.pbtxt").write_text(config["data"]["config.pbtxt"])
    x, labels, expected = held_out(version_dir)
    with TritonServer(tmp_path, models=["digits"], startup_timeout=60) as server:
        triton = client.InferenceServerClient(server.http_url)
        outputs = []
        for batch in (x[:50], x[50:]):
            tensor = client.InferInput("INPUT__0", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            outputs.append(triton.infer("digits", [tensor]).as_numpy("OUTPUT__0"))
        triton.close()
        np.testing.assert_allclose(np.concatenate(outputs), expected, rtol=1e-4, atol=1e-4)
        log = server.log_tail(200_000)
    threads = threads_per_instance(len(os.sched_getaffinity(0)), 2)
    assert log.count(f"torch threads intra-op {threads}, inter-op 1") == 2, log[-3000:]
