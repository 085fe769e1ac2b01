"""A freshly published model served by the real tritonserver (python backend, the operator's runtime) answers
correctly over HTTP and gRPC; so does a version published with an older trainer's model.py, without the
instanceCount collapse that model.py had."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modelops.triton.config import render_config
from modelops.triton.repository import stage_python_model
from modelops.triton.server import TritonServer, find_triton
from modelops.triton.signature import load_signature

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]

OLD_MODEL_PY = Path(__file__).parent / "data" / "model_py_before_issue_15.py"
"""The model.py trainers copied into every version they published before issue 15 (byte for byte the one
model_repo/digits/1 carried until issue 31): torch on every core in each instance, no thread rule."""


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
    # the model and what describes it, no serving code
    assert sorted(p.name for p in version_dir.iterdir()) == ["eval.npz", "metadata.json", "model.pt"]
    config = render_config("digits", load_signature(version_dir), backend="python", max_batch_size=64,
                           instance_kind="KIND_CPU", version=1, version_directory=str(version_dir))
    serving = tmp_path_factory.mktemp("serving")
    stage_python_model(serving, "digits", 1, config)
    with TritonServer(serving, models=["digits"], env={"OMP_NUM_THREADS": "1"}) as server:
        yield server, version_dir


def operator_repository(root: Path, version_dir: Path, **triton: object) -> Path:
    """Triton's repository as a python-backend ModelService pod has it, from the revision's ConfigMap
    (config.pbtxt and the runtime as model.py) for the published `version_dir` (version 1). The one change:
    VERSION_DIRECTORY names `version_dir` itself instead of the pod's mount of it."""
    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build

    signature = json.loads((version_dir / "metadata.json").read_text())["signature"]
    spec = ModelServiceSpec.model_validate({"model": {"name": "digits", "version": 1, "signature": signature},
                                            "repository": {"hostPath": {"path": str(version_dir.parent.parent)}},
                                            "triton": {"backend": "python", **triton}})
    data = build.config_map(build.ServiceMeta("d", "ns", "uid"), spec, "r", build.Target(1, signature))["data"]
    mounted = json.dumps(build.version_path("digits", 1))
    assert mounted in data["config.pbtxt"]
    model_dir = stage_python_model(root, "digits", 1,
                                   data["config.pbtxt"].replace(mounted, json.dumps(str(version_dir))))
    assert (model_dir / "1" / "model.py").read_text() == data["model.py"]
    return root


def throughput(server: TritonServer, image: np.ndarray, concurrency: int = 16, seconds: float = 3.0) -> float:
    """Answered requests per second (one image each) for `concurrency` keep-alive HTTP clients with one
    request in flight each, after a second of warm-up (asyncio: a light client on a small machine)."""
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1, *image.shape], "datatype": "FP32",
                                   "data": image.ravel().tolist()}]}).encode()
    request = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    async def load() -> int:
        loop = asyncio.get_running_loop()
        start = loop.time() + 1.0
        stop, answered = start + seconds, 0

        async def client() -> None:
            nonlocal answered
            reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
            while loop.time() < stop:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head.lower())
                answer = await reader.readexactly(int(length.group(1)) if length else 0)
                assert head.startswith(b"HTTP/1.1 200"), head + answer
                answered += loop.time() >= start
            writer.close()

        await asyncio.gather(*(client() for _ in range(concurrency)))
        return answered

    return asyncio.run(load()) / seconds


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
    [own] = report["sets"]  # the stable revision serves the same version: one set
    assert (own["name"], own["source"]) == ("candidate", "version 1")
    assert own["samples"] == described["samples"] and own["sha256"] == described["sha256"]
    assert own["accuracy"] == pytest.approx(described["accuracy"], abs=1e-9)
    assert own["stableAccuracy"] == own["accuracy"] >= 0.9
    assert report["lineage"]["testAccuracy"] == metadata["metrics"]["testAccuracy"]
    assert report["lineage"]["datasetFingerprint"] == metadata["dataset"]["fingerprint"]

    # A stable version copied in by hand, without metadata.json: no set of its own, and that is said. A stable
    # revision answering with errors (this server has no version 2) costs its scores, not the candidate's verdict.
    bare_stable = tmp_path / "2"
    bare_stable.mkdir()
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(version_dir),
                          "--model", "digits", "--version", "1", "--candidate", address, "--stable", address,
                          "--stable-version", "2", "--stable-dir", str(bare_stable), "--report", str(report_file)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    own, stable = json.loads(report_file.read_text())["sets"]
    assert own["accuracy"] >= 0.9 and "stableAccuracy" not in own and "no stable score" in own["note"]
    assert stable == {"name": "stable", "source": "version 2", "note": "version 2 has no metadata.json, so no "
                                                                       "evaluation set"}

    # A reference set the spec names must be there and be the file its sha256 pins: else the gate fails, at once.
    with np.load(version_dir / "eval.npz") as held_out:
        np.savez(tmp_path / "reference.npz", x=held_out["x"][:50], y=held_out["y"][:50])
    for path, pinned, why in [(tmp_path / "absent.npz", "", "is not a file in the model repository"),
                              (tmp_path / "reference.npz", "0" * 64, "not the 000000000000... recorded for it")]:
        run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", "--version-dir", str(version_dir),
                              "--model", "digits", "--version", "1", "--candidate", address, "--reference",
                              str(path), "--reference-name", "ref.npz", "--reference-sha256", pinned,
                              "--report", str(report_file)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and why in json.loads(report_file.read_text())["failed"], run.stderr

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


def served_logits(server: TritonServer, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as client

    triton = client.InferenceServerClient(server.http_url)
    outputs = []
    for batch in (x[:50], x[50:]):
        tensor = client.InferInput("INPUT__0", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        outputs.append(triton.infer("digits", [tensor]).as_numpy("OUTPUT__0"))
    triton.close()
    return np.concatenate(outputs)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_two_instances_from_the_operators_config_load_and_answer(served: tuple[TritonServer, Path],
                                                                 tmp_path: Path) -> None:
    """instanceCount 2 as the operator renders it for a ModelService (python backend, no CPU limit): both
    instances load, each takes its share of the cores for torch (never all of them), and answers are right."""
    from modelops.triton.python_model import threads_per_instance

    _, version_dir = served
    x, _, expected = held_out(version_dir)
    with TritonServer(operator_repository(tmp_path, version_dir, instanceCount=2), models=["digits"],
                      startup_timeout=60) as server:
        np.testing.assert_allclose(served_logits(server, x), expected, rtol=1e-4, atol=1e-4)
        log = server.log_tail(200_000)
    threads = threads_per_instance(len(os.sched_getaffinity(0)), 2)
    line = f"serving {version_dir / 'model.pt'}, torch threads intra-op {threads}, inter-op 1"
    assert log.count(line) == 2, log[-3000:]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_an_old_style_version_is_served_by_the_operators_runtime_without_collapse(
        served: tuple[TritonServer, Path], tmp_path: Path) -> None:
    """A version published with the model.py of before issue 15 (which ran torch on every core in each
    instance: with instanceCount 2 on 2 cores it served a ninth of instanceCount 1's requests at concurrency
    16), served with the operator's config: the runtime from the ConfigMap serves it, not its own model.py,
    with the thread split, so instanceCount 2 keeps up with instanceCount 1 (within what a shared 2-core machine
    lets one measure: half). Both servers run side by side and are measured in turns; the best turn of each
    counts."""
    from modelops.triton.python_model import threads_per_instance

    _, fresh = served
    version_dir = tmp_path / "published" / "digits" / "1"
    shutil.copytree(fresh, version_dir)
    shutil.copy(OLD_MODEL_PY, version_dir / "model.py")
    assert "threads" not in (version_dir / "model.py").read_text()  # the old one indeed
    x, _, expected = held_out(version_dir)
    rates: dict[int, list[float]] = {1: [], 2: []}
    with TritonServer(operator_repository(tmp_path / "one", version_dir), models=["digits"]) as one, \
            TritonServer(operator_repository(tmp_path / "two", version_dir, instanceCount=2), models=["digits"]) as two:
        for instances, server in ((1, one), (2, two)):
            np.testing.assert_allclose(served_logits(server, x), expected, rtol=1e-4, atol=1e-4)
            threads = threads_per_instance(len(os.sched_getaffinity(0)), instances)
            line = f"serving {version_dir / 'model.pt'}, torch threads intra-op {threads}, inter-op 1"
            assert server.log_tail(200_000).count(line) == instances, server.log_tail(3000)
        for _ in range(3):
            for instances, server in ((1, one), (2, two)):
                rates[instances].append(throughput(server, x[0]))
    print(f"old-style version, req/s at concurrency 16 by instanceCount: {rates}")
    assert max(rates[2]) >= 0.5 * max(rates[1]), rates


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_failing_forward_pass_fails_the_requests_and_counts_as_failures(served: tuple[TritonServer, Path],
                                                                        tmp_path: Path) -> None:
    """A version whose TorchScript raises: every request gets an error, and Triton counts them in
    nv_inference_request_failure, not as successes (what the canary analysis reads to roll it back)."""
    import io
    import urllib.request

    import torch
    import tritonclient.http as client
    from tritonclient.utils import InferenceServerException

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("deliberately broken")

    _, fresh = served
    version_dir = tmp_path / "published" / "digits" / "1"
    shutil.copytree(fresh, version_dir)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Broken()), buffer)
    (version_dir / "model.pt").write_bytes(buffer.getvalue())
    x, _, _ = held_out(fresh)
    with TritonServer(operator_repository(tmp_path / "serving", version_dir), models=["digits"]) as server:
        triton = client.InferenceServerClient(server.http_url)
        for batch in (x[:1], x[1:9]):
            tensor = client.InferInput("INPUT__0", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            with pytest.raises(InferenceServerException, match="deliberately broken"):
                triton.infer("digits", [tensor])
        triton.close()
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics = response.read().decode()

    def counted(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith(name + "{") and 'model="digits"' in line)

    assert counted("nv_inference_request_failure") == 2 and counted("nv_inference_request_success") == 0, metrics
