"""A sequence model (gru, trained on the built-in order task) served by the real tritonserver through the
operator's python-backend runtime, with the ModelService's own config.pbtxt: INT64 token ids of any length,
padded batches with pad id 0. A sequence answers the same alone, padded in one request among longer ones, and
sent concurrently with requests of other lengths; the model check and the evaluation gate's program work
unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelops.trainer.data import Missing, load_builtin, prepare, sequence_lengths
from modelops.triton.check import check_model
from modelops.triton.repository import stage_python_model
from modelops.triton.server import TritonServer, find_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]

MODEL = "orders"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build

    repository = tmp_path_factory.mktemp("models")
    train = subprocess.run(
        [sys.executable, "-m", "modelops.trainer", "--dataset", "synthetic-sequence", "--model", "gru",
         "--epochs", "8", "--batch-size", "64", "--lr", "0.003", "--num-threads", "1", "--repository",
         str(repository), "--model-name", MODEL, "--checkpoint-dir", str(tmp_path_factory.mktemp("ckpt"))],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=180)
    assert train.returncode == 0, train.stderr
    version_dir = repository / MODEL / "1"
    signature = json.loads((version_dir / "metadata.json").read_text())["signature"]
    # The ModelService's ConfigMap, as a python-backend pod mounts it (VERSION_DIRECTORY: our folder, not the
    # pod's mount); a queue delay lets the dynamic batcher gather concurrent requests.
    spec = ModelServiceSpec.model_validate({
        "model": {"name": MODEL, "version": 1, "signature": signature},
        "repository": {"hostPath": {"path": str(repository)}},
        "triton": {"backend": "python", "maxBatchSize": 64, "dynamicBatching": {"maxQueueDelayMicroseconds": 20000}}})
    data = build.config_map(build.ServiceMeta("d", "ns", "uid"), spec, "r", build.Target(1, signature))["data"]
    assert "data_type: TYPE_INT64" in data["config.pbtxt"] and "dims: [ -1 ]" in data["config.pbtxt"]
    config = data["config.pbtxt"].replace(json.dumps(build.version_path(MODEL, 1)), json.dumps(str(version_dir)))
    serving = tmp_path_factory.mktemp("serving")
    stage_python_model(serving, MODEL, 1, config)
    with TritonServer(serving, models=[MODEL], env={"OMP_NUM_THREADS": "1"}) as server:
        yield server, version_dir


def order_task_rows() -> tuple[list[np.ndarray], np.ndarray]:
    """40 test-split sequences, unpadded, of every length the set has, and their labels."""
    data = prepare(load_builtin("synthetic-sequence", 0), missing=Missing.DROP, val_fraction=0.1,
                   test_fraction=0.2, seed=0)
    x, y = data.test.x[:40], data.test.y[:40]
    return [row[:n] for row, n in zip(x, sequence_lengths(x), strict=True)], y


def infer(url: str, batch: np.ndarray) -> np.ndarray:
    import tritonclient.http as client

    tensor = client.InferInput("INPUT__0", list(batch.shape), "INT64")
    tensor.set_data_from_numpy(batch.astype(np.int64))
    triton = client.InferenceServerClient(url)
    try:
        result = triton.infer(MODEL, [tensor], outputs=[client.InferRequestedOutput("OUTPUT__0")])
        return result.as_numpy("OUTPUT__0")
    finally:
        triton.close()


def pad(rows: list[np.ndarray], length: int | None = None) -> np.ndarray:
    width = length or max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r))) for r in rows])


def test_a_sequence_answers_the_same_alone_padded_and_batched_with_longer_ones(
        served: tuple[TritonServer, Path]) -> None:
    server, _ = served
    rows, labels = order_task_rows()
    alone = np.concatenate([infer(server.http_url, row[None, :]) for row in rows])
    assert alone.shape == (40, 4) and alone.dtype == np.float32
    assert (alone.argmax(1) == labels).mean() >= 0.95
    assert len({len(r) for r in rows}) > 3  # lengths really vary

    # one request: every row padded to the longest (0 = padding), and again padded far beyond it
    padded = infer(server.http_url, pad(rows))
    np.testing.assert_allclose(padded, alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(infer(server.http_url, pad(rows, 60)), alone, rtol=1e-5, atol=1e-5)
    # the shortest row batched with only the longest ones
    order = np.argsort([len(r) for r in rows])
    short, longest = order[0], order[-3:]
    mixed = infer(server.http_url, pad([rows[short], *(rows[i] for i in longest)]))
    np.testing.assert_allclose(mixed, alone[[short, *longest]], rtol=1e-5, atol=1e-5)


def test_concurrent_requests_of_different_lengths_get_their_own_answers(served: tuple[TritonServer, Path]) -> None:
    """Sent at once through the dynamic batcher (20 ms queue delay): each request, whatever its length and
    whatever it was batched with, answers exactly as it did alone."""
    server, _ = served
    rows, _ = order_task_rows()
    alone = [infer(server.http_url, row[None, :]) for row in rows]
    before = counts(server.http_url)
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda row: infer(server.http_url, row[None, :]), rows * 3))
    after = counts(server.http_url)
    for got, want in zip(together, alone * 3, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 120 and executions < inferences  # some requests really shared a forward pass


def counts(url: str) -> tuple[int, int]:
    """Triton's inference and execution counts for the model: fewer executions means batched requests."""
    import tritonclient.http as client

    triton = client.InferenceServerClient(url)
    try:
        [stats] = triton.get_inference_statistics(MODEL)["model_stats"]
        return int(stats["inference_count"]), int(stats["execution_count"])
    finally:
        triton.close()


def test_model_check_and_evaluation_gate_work_unchanged(served: tuple[TritonServer, Path], tmp_path: Path) -> None:
    server, version_dir = served
    metadata = json.loads((version_dir / "metadata.json").read_text())
    address = server.http_url.removeprefix("http://")
    result = check_model(address, MODEL, 1, metadata["signature"])
    assert result.verdict == "passed", result.message
    report_file = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(version_dir),
                          "--model", MODEL, "--version", "1", "--candidate", address, "--batch-size", "16",
                          "--report", str(report_file)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [own] = json.loads(report_file.read_text())["sets"]
    assert own["samples"] == metadata["evaluation"]["samples"] == 400
    assert own["accuracy"] == pytest.approx(metadata["evaluation"]["accuracy"], abs=1e-9)
    assert own["accuracy"] >= 0.95
