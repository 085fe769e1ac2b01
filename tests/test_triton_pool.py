"""A pool server on the real tritonserver: started with no model in explicit mode over a repository of
published versions, it loads copies of two models and two versions through the repository API with the
operator's config and runtime, serves each its own weights, reports residency, statistics and measured
memory, gives the memory back on unload, reloads, and answers the requests in flight when a model unloads."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelops.triton.pool import (POOL_REPOSITORY, ModelToLoad, ResidentModel, ServerReport, load_config,
                                  server_args)
from modelops.triton.pool_client import TritonPoolClient, TritonPoolError
from modelops.triton.server import TritonServer, find_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]

SAMPLE = Path(__file__).resolve().parents[1] / "model_repo" / "digits" / "1"
SIGNATURE = json.loads((SAMPLE / "metadata.json").read_text())["signature"]


def publish(repository: Path, name: str, version: int, scale: float = 1.0, module: Any = None) -> Path:
    """A published version folder as the trainer leaves it: the sample's files, its weights times `scale`
    (so each version answers differently), or `module` (TorchScript) instead."""
    import torch

    folder = repository / name / str(version)
    shutil.copytree(SAMPLE, folder)
    if module is None:
        module = torch.jit.load(str(SAMPLE / "model.pt"))
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.mul_(scale)
    torch.jit.save(module, str(folder / "model.pt"))
    return folder


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool-repository")
    publish(root, "digits", 1)
    publish(root, "digits", 2, scale=1.5)
    publish(root, "other", 1, scale=0.5)
    publish(root, "slow", 1, module=slow_module(1.5))
    # the trainer's model-level config.pbtxt (libtorch) sits there too; a pool never uses it
    shutil.copy(SAMPLE.parent / "config.pbtxt", root / "digits" / "config.pbtxt")
    return root


class PoolServer(TritonServer):
    """tritonserver with the pool server's own args (server_args), on free loopback ports, its repository
    the local folder instead of the pod's mount at POOL_REPOSITORY."""

    def command(self) -> list[str]:
        args = server_args(self.http_port, self.grpc_port, self.metrics_port)
        args[args.index(f"--model-repository={POOL_REPOSITORY}")] = f"--model-repository={self.model_repository}"
        return [str(self.install.binary), f"--backend-directory={self.install.backends}",
                "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", *args, *self.extra_args]


@pytest.fixture
def pool(repository: Path) -> Iterator[tuple[TritonServer, TritonPoolClient]]:
    with PoolServer(repository, env={"OMP_NUM_THREADS": "1"}) as server:
        assert not any(arg.startswith("--load-model") for arg in server.command())
        yield server, TritonPoolClient(f"http://{server.http_url}", metrics_url=server.metrics_url)


def copy(repository: Path, name: str, version: int, **triton: Any) -> ModelToLoad:
    """What the operator loads, with one change: VERSION_DIRECTORY names the local folder instead of the
    pod's mount of the repository at POOL_REPOSITORY."""
    config = load_config(name, version, {"backend": "python", **triton}, 2.0, signature=SIGNATURE)
    parameter = config["parameters"]["VERSION_DIRECTORY"]
    assert parameter["string_value"] == f"{POOL_REPOSITORY}/{name}/{version}"
    parameter["string_value"] = str(repository / name / str(version))
    return ModelToLoad(name, version, "python", config)


def expected(repository: Path, name: str, version: int, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.jit.load(str(repository / name / str(version) / "model.pt"))(torch.from_numpy(x)).numpy()


def infer(server: TritonServer, name: str, x: np.ndarray) -> tuple[int, Any]:
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{name}/infer", data=body)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            output = json.loads(response.read())["outputs"][0]
            return response.status, np.array(output["data"], np.float32).reshape(output["shape"])
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def stubs(server: TritonServer) -> dict[int, tuple[str, int]]:
    """The server's python-backend stub processes: pid -> (instance name, RssAnon + RssShmem bytes)."""
    assert server._process is not None
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if re.search(rf"^PPid:\s+{server._process.pid}$", status, re.M) and b"triton_python_backend_stub" in args[0]:
            memory = sum(int(v) for v in re.findall(r"^(?:RssAnon|RssShmem):\s+(\d+) kB", status, re.M)) * 1024
            found[int(entry.name)] = (args[-3].decode(), memory)  # the stub's args end: <instance> <kind>
    return found


def settled(client: TritonPoolClient, condition: Callable[[dict[str, ResidentModel]], bool],
            timeout: float = 10.0) -> dict[str, ResidentModel]:
    """The resident models once `condition` holds: Triton counts a request in its statistics a moment after
    it has answered it (the python backend records them when execute() returns)."""
    deadline = time.monotonic() + timeout
    while True:
        models = {m.name: m for m in client.report().models}
        if condition(models) or time.monotonic() > deadline:
            return models
        time.sleep(0.05)


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 1, 8, 8)).astype(np.float32)


def test_two_models_and_two_versions_load_serve_report_unload_and_reload(
        pool: tuple[TritonServer, TritonPoolClient], repository: Path) -> None:
    server, client = pool
    assert client.report() == ServerReport(reachable=True, models=(), memory_bytes=0)

    loaded = {"digits": client.load(copy(repository, "digits", 1)),
              "other": client.load(copy(repository, "other", 1, instanceCount=2))}
    # measured: the stubs' own anonymous memory (two instances, two processes, for "other"), as /proc has it
    processes = stubs(server)
    for name, measured in loaded.items():
        mine = [memory for instance, memory in processes.values() if instance.startswith(f"{name}_")]
        assert len(mine) == (2 if name == "other" else 1)
        assert measured is not None and measured > 50 << 20
        assert measured == pytest.approx(sum(mine), rel=0.05), (name, measured, processes)

    x = images(5)
    started_ms = time.time() * 1000
    for name in ("digits", "other"):
        status, logits = infer(server, name, x)
        assert status == 200
        np.testing.assert_allclose(logits, expected(repository, name, 1, x), rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected(repository, "digits", 1, x), expected(repository, "other", 1, x))

    settled(client, lambda models: all(m.inference_count == 5 for m in models.values()))
    report = client.report()
    assert report.reachable and [(m.name, m.version, m.ready) for m in report.models] == [
        ("digits", 1, True), ("other", 1, True)]
    for model in report.models:
        assert model.inference_count == 5 and model.queue_ns > 0
        assert started_ms - 1000 <= model.last_inference_ms <= time.time() * 1000 + 1000
        assert model.bytes is not None and model.bytes >= loaded[model.name] * 0.9  # refreshed while serving
    assert report.memory_bytes == sum(m.bytes or 0 for m in report.models)

    # last_inference moves with the next request, for that model only
    before = {m.name: m for m in report.models}
    time.sleep(0.05)
    assert infer(server, "other", x[:1])[0] == 200
    after = settled(client, lambda models: models["other"].inference_count == 6)
    assert after["other"].last_inference_ms > before["other"].last_inference_ms
    assert after["other"].inference_count == 6 and after["digits"] == before["digits"]

    # unload: the bytes given back are measured, and the stub is indeed gone
    digits_pids = {pid for pid, (instance, _) in stubs(server).items() if instance.startswith("digits_")}
    given_back = client.unload("digits")
    assert given_back is not None and given_back == pytest.approx(before["digits"].bytes, rel=0.05)
    assert not digits_pids & set(stubs(server))
    assert [(m.name, m.version) for m in client.report().models] == [("other", 1)]
    assert infer(server, "digits", x)[0] == 404

    # the other version of the same name: its own weights
    assert client.load(copy(repository, "digits", 2))
    status, logits = infer(server, "digits", x)
    assert status == 200
    np.testing.assert_allclose(logits, expected(repository, "digits", 2, x), rtol=1e-4, atol=1e-4)
    ready = urllib.request.Request(f"http://{server.http_url}/v2/models/digits/versions/1/ready")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(ready, timeout=10)
    assert {(m.name, m.version) for m in client.report().models} == {("digits", 2), ("other", 1)}

    # reload after an unload
    assert client.unload("other")
    assert client.load(copy(repository, "other", 1))
    status, logits = infer(server, "other", x)
    assert status == 200
    np.testing.assert_allclose(logits, expected(repository, "other", 1, x), rtol=1e-4, atol=1e-4)


def test_a_failed_load_raises_and_the_server_keeps_serving(pool: tuple[TritonServer, TritonPoolClient],
                                                           repository: Path, tmp_path: Path) -> None:
    server, client = pool
    assert client.load(copy(repository, "other", 1))
    missing = copy(repository, "digits", 9)  # no such published version
    with pytest.raises(TritonPoolError, match="cannot load .*digits/9/model.pt"):
        client.load(missing)
    assert [(m.name, m.ready) for m in client.report().models] == [("other", True)]
    assert infer(server, "other", images(1))[0] == 200
    assert client.unload("never-loaded") is None  # idempotent: Triton accepts it, nothing was there to give back


def test_without_metrics_a_copy_serves_unmeasured(repository: Path) -> None:
    """A server whose metrics are off (a user's extra args): the runtime serves without its gauge, and the
    client says "not measured" rather than failing or guessing."""
    with PoolServer(repository, extra_args=["--allow-metrics=false"], env={"OMP_NUM_THREADS": "1"}) as server:
        client = TritonPoolClient(f"http://{server.http_url}", metrics_url=server.metrics_url)
        assert client.load(copy(repository, "digits", 1)) is None
        status, logits = infer(server, "digits", images(2))
        assert status == 200 and logits.shape == (2, 10)
        report = client.report()
        assert [(m.name, m.ready, m.bytes) for m in report.models] == [("digits", True, None)]
        assert report.memory_bytes is None
        assert client.unload("digits") is None and client.report().models == ()


def slow_module(seconds_per_call: float) -> Any:
    """A TorchScript classifier whose forward pass takes about `seconds_per_call` on one thread."""
    import torch

    class Slow(torch.nn.Module):
        def __init__(self, rounds: int) -> None:
            super().__init__()
            self.rounds = rounds

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = torch.full((256, 256), 1.0 / 256)
            y = torch.ones(256, 256)
            for _ in range(self.rounds):
                y = y @ w
            return x.reshape(x.shape[0], -1)[:, :10] * y[0, 0]

    torch.set_num_threads(1)
    probe = torch.jit.script(Slow(50))
    start = time.perf_counter()
    probe(torch.zeros(1, 1, 8, 8))
    rounds = max(50, int(50 * seconds_per_call / max(time.perf_counter() - start, 1e-4)))
    return torch.jit.script(Slow(rounds))


def test_an_unload_answers_the_requests_in_flight_and_refuses_the_next(
        pool: tuple[TritonServer, TritonPoolClient], repository: Path) -> None:
    """What clients of a copy see while it unloads: a request Triton is executing completes (200) and the
    unload waits for it; requests sent after the unload began get 404 'has no available versions' (the
    planner takes the server out of the model's endpoints first); nothing else (no 5xx, no broken reply)."""
    server, client = pool
    assert client.load(copy(repository, "slow", 1, maxBatchSize=1))
    assert infer(server, "slow", images(1))[0] == 200

    results: list[tuple[float, int, Any]] = []  # (sent at, status, answer)
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            status, answer = infer(server, "slow", images(1))
            results.append((sent, status, answer))

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for thread in callers:
        thread.start()
    time.sleep(2.0)  # every caller has a request executing or queued
    unload_at = time.monotonic()
    assert client.unload("slow") is not None
    unloaded_at = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for thread in callers:
        thread.join(timeout=60)

    in_flight = [r for r in results if r[0] < unload_at - 0.1]  # surely at Triton before the unload
    after = [r for r in results if r[0] > unloaded_at]
    print(f"unload took {unloaded_at - unload_at:.2f}s; sent before it: {len(in_flight)} "
          f"({sum(r[1] == 200 for r in in_flight)} answered 200); sent after: {len(after)} "
          f"(statuses {sorted({r[1] for r in after})})")
    assert len(in_flight) >= 3 and all(r[1] == 200 for r in in_flight), in_flight
    assert after and all(r[1] == 404 and "has no available versions" in r[2] for r in after), after[:3]
    assert {r[1] for r in results} <= {200, 404}
