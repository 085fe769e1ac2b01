"""The activator in front of the real tritonserver: requests (HTTP and gRPC, with tritonclient) are held while
Triton is not up and while the model is not loaded, and answered by the model once Triton says it is ready; a
burst of 200 held requests is answered whole; over the limits the answer is 503 + Retry-After / UNAVAILABLE
with the reason; and what the activator adds to a request's latency when it is in the path (printed)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelops.activator.routing import Backend, Limits, Target
from modelops.activator.server import Activator, Ports, serve
from modelops.triton.pool_client import TritonPoolClient
from modelops.triton.server import TritonServer, find_triton, free_ports
from test_triton_pool import SAMPLE, PoolServer, copy, images

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, TritonPoolClient]]:
    """A Triton in explicit model-control mode with no model loaded (a pool server, or a pod still loading)."""
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(SAMPLE, repository / "digits" / "1")
    with PoolServer(repository, env={"OMP_NUM_THREADS": "1"}) as server:
        yield server, TritonPoolClient(f"http://{server.http_url}")


class Running:
    """An activator serving on free loopback ports from its own thread and event loop."""

    def __init__(self, limits: Limits) -> None:
        self.activator = Activator(limits)
        http, grpc_port, admin = free_ports(3)
        self.ports = Ports(http, grpc_port, admin, "127.0.0.1")
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def ready() -> None:
            started.set()

        self._task: Future[None] = asyncio.run_coroutine_threadsafe(serve(self.activator, self.ports, ready),
                                                                    self.loop)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        assert started.wait(10), "the activator did not start"

    def set_backend(self, backend: Backend) -> None:
        self.loop.call_soon_threadsafe(self.activator.set_backend, backend)

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.admin}{path}", timeout=70) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        value = self.activator.metrics.registry.get_sample_value(name, {"namespace": "ns", "modelservice": "digits",
                                                                         **labels})
        return value or 0.0

    def stop(self) -> None:
        self._task.cancel()
        time.sleep(0.5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def activator(triton: tuple[TritonServer, TritonPoolClient]) -> Iterator[Running]:
    server, client = triton
    unload(server, client)  # every test starts with the model not loaded
    running = Running(Limits(per_service=300, total=400, hold_seconds=60))
    running.set_backend(Backend("ns", "digits", "digits", 1, (Target("127.0.0.1", server.http_port, server.grpc_port),)))
    yield running
    running.stop()


def unload(server: TritonServer, client: TritonPoolClient) -> None:
    """The model not loaded (unloading one that never was would wait for a state Triton never reports)."""
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}")
    with urllib.request.urlopen(request, timeout=10) as response:
        if any(e.get("name") == "digits" and e.get("state") for e in json.loads(response.read())):
            client.unload("digits")


def load(client: TritonPoolClient, server: TritonServer) -> None:
    client.load(copy(Path(server.model_repository), "digits", 1))


def http_infer(port: int, x: np.ndarray, host: str = "") -> np.ndarray:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=120)
    data = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    headers = {"Host": host} if host else None
    return np.asarray(client.infer("digits", [data], headers=headers).as_numpy("OUTPUT__0"))


def grpc_infer(port: int, x: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    data = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    return np.asarray(client.infer("digits", [data], client_timeout=120).as_numpy("OUTPUT__0"))


def test_held_while_triton_is_down_and_the_model_unloaded_then_answered_by_the_model(
        triton: tuple[TritonServer, TritonPoolClient]) -> None:
    server, client = triton
    unload(server, client)
    running = Running(Limits(hold_seconds=60))
    try:
        # the pod has an address but Triton is not listening yet
        (nothing,) = free_ports(1)
        running.set_backend(Backend("ns", "digits", "digits", 1, (Target("127.0.0.1", nothing, nothing),)))
        x = images(3)
        pool = ThreadPoolExecutor(6)
        calls: dict[str, Future[Any]] = {
            "http infer": pool.submit(http_infer, running.ports.http, x, "digits.ns.svc.cluster.local:8000"),
            "grpc infer": pool.submit(grpc_infer, running.ports.grpc, x),
            "http ready": pool.submit(lambda: httpclient.InferenceServerClient(
                f"127.0.0.1:{running.ports.http}", network_timeout=120).is_model_ready("digits")),
            "grpc metadata": pool.submit(lambda: grpcclient.InferenceServerClient(
                f"127.0.0.1:{running.ports.grpc}").get_model_metadata("digits", as_json=True)),
            "grpc ready": pool.submit(lambda: grpcclient.InferenceServerClient(
                f"127.0.0.1:{running.ports.grpc}").is_model_ready("digits")),
        }
        demand = json.loads(running.admin("/demand?since=-1&wait=0"))
        deadline = time.monotonic() + 10
        while demand["demand"].get("ns/digits", {}).get("held", 0) < len(calls) and time.monotonic() < deadline:
            demand = json.loads(running.admin(f"/demand?since={demand['seq']}&wait=5"))  # the operator's read
        assert demand["demand"]["ns/digits"]["held"] == len(calls), demand
        assert demand["demand"]["ns/digits"]["since"] > 0
        time.sleep(1)
        assert not any(f.done() for f in calls.values()), {k: f.result() for k, f in calls.items() if f.done()}

        # the pod's Triton is up (the operator writes its address), the model still not loaded: still held
        running.set_backend(Backend("ns", "digits", "digits", 1,
                                    (Target("127.0.0.1", server.http_port, server.grpc_port),)))
        time.sleep(1.5)
        assert not any(f.done() for f in calls.values())
        assert running.metric("modelops_activator_holding_requests") == len(calls)

        load(client, server)
        direct = http_infer(server.http_port, x)
        np.testing.assert_allclose(calls["http infer"].result(30), direct, rtol=1e-5)
        np.testing.assert_allclose(calls["grpc infer"].result(30), direct, rtol=1e-5)
        assert calls["http ready"].result(30) is True and calls["grpc ready"].result(30) is True
        assert calls["grpc metadata"].result(30)["name"] == "digits"
        assert running.metric("modelops_activator_cold_start_seconds_count") == len(calls)
        assert running.metric("modelops_activator_held_requests_total") == len(calls)
        assert running.metric("modelops_activator_forwarded_requests_total") == len(calls)
        assert json.loads(running.admin("/demand"))["demand"]["ns/digits"]["held"] == 0
        assert "modelops_activator_cold_start_seconds_bucket" in running.admin("/metrics")

        # ready now: the next requests go straight through, not held
        np.testing.assert_allclose(grpc_infer(running.ports.grpc, x), direct, rtol=1e-5)
        assert running.metric("modelops_activator_held_requests_total") == len(calls)
    finally:
        running.stop()


def test_a_burst_of_200_held_requests_is_answered_whole(activator: Running,
                                                        triton: tuple[TritonServer, TritonPoolClient]) -> None:
    server, client = triton
    x = images(1)
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]})

    async def burst() -> list[Any]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            grpc_client = grpcaio.InferenceServerClient(f"127.0.0.1:{activator.ports.grpc}")

            async def one_http() -> Any:
                async with session.post(f"http://127.0.0.1:{activator.ports.http}/v2/models/digits/infer",
                                        data=body, timeout=aiohttp.ClientTimeout(total=120)) as response:
                    return response.status, await response.json()

            async def one_grpc() -> Any:
                data = grpcaio.InferInput("INPUT__0", list(x.shape), "FP32")
                data.set_data_from_numpy(x)
                result = await grpc_client.infer("digits", [data], client_timeout=120)
                return 200, {"outputs": [{"data": result.as_numpy("OUTPUT__0").ravel().tolist()}]}

            tasks = [asyncio.ensure_future(one_http()) for _ in range(150)]
            tasks += [asyncio.ensure_future(one_grpc()) for _ in range(50)]
            await asyncio.sleep(2)
            assert not any(t.done() for t in tasks)
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, load, client, server)
            answers = await asyncio.gather(*tasks)
            print(f"\nburst of 200 held: all answered {time.monotonic() - started:.2f}s after the load began")
            await grpc_client.close()
            return answers

    answers = asyncio.run(burst())
    direct = http_infer(server.http_port, x).ravel()
    assert len(answers) == 200
    for status, answer in answers:
        assert status == 200, answer
        np.testing.assert_allclose(answer["outputs"][0]["data"], direct, rtol=1e-5)
    assert activator.metric("modelops_activator_cold_start_seconds_count") == 200
    assert activator.metric("modelops_activator_rejected_requests_total", why="limit") == 0


def test_over_the_limits_the_answer_is_503_or_unavailable_with_the_reason(
        triton: tuple[TritonServer, TritonPoolClient]) -> None:
    server, client = triton
    unload(server, client)
    running = Running(Limits(per_service=4, total=10, hold_seconds=3, retry_after=7))
    reason = "Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu"
    running.set_backend(Backend("ns", "digits", "digits", 1, (Target("127.0.0.1", server.http_port, server.grpc_port),),
                                reason=reason))
    url = f"http://127.0.0.1:{running.ports.http}/v2/models/digits/infer"

    def post() -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(url, data=b'{"inputs": []}', headers={"Host": "digits.ns"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()

    try:
        pool = ThreadPoolExecutor(4)
        held = [pool.submit(post) for _ in range(4)]
        deadline = time.monotonic() + 10
        while running.metric("modelops_activator_holding_requests") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers, text = post()  # the fifth: over the per-ModelService limit, at once
        assert status == 503 and headers["Retry-After"] == "7", text
        assert "(limit 4)" in json.loads(text)["error"] and reason in json.loads(text)["error"]
        with pytest.raises(InferenceServerException) as refused:
            grpcclient.InferenceServerClient(f"127.0.0.1:{running.ports.grpc}").is_model_ready("digits")
        assert refused.value.status() == "StatusCode.UNAVAILABLE" and "(limit 4)" in refused.value.message()

        for future in held:  # held for the whole hold time: the reason, never a silent drop
            status, headers, text = future.result(30)
            assert status == 503 and headers["Retry-After"] == "7"
            assert json.loads(text)["error"] == f"no ready copy of model digits version 1 after 3s: {reason}"
        assert running.metric("modelops_activator_rejected_requests_total", why="timeout") == 4
        assert running.metric("modelops_activator_rejected_requests_total", why="limit") == 2
        assert running.metric("modelops_activator_forwarded_requests_total") == 0

        unknown = urllib.request.Request(f"http://127.0.0.1:{running.ports.http}/v2/models/other/infer", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(unknown, timeout=10)
        assert missing.value.code == 404 and "no ModelService known" in missing.value.read().decode()
    finally:
        running.stop()


def test_added_latency_in_the_path(activator: Running, triton: tuple[TritonServer, TritonPoolClient]) -> None:
    """Not a timed test: prints the medians, asserts only that every answer is the model's."""
    server, client = triton
    load(client, server)
    x = images(1)
    direct_client = httpclient.InferenceServerClient(server.http_url)
    via_client = httpclient.InferenceServerClient(f"127.0.0.1:{activator.ports.http}")
    data = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    data.set_data_from_numpy(x)
    expected = direct_client.infer("digits", [data]).as_numpy("OUTPUT__0")
    timings: dict[str, list[float]] = {"direct": [], "activator": []}
    for _ in range(300):
        for name, c in (("direct", direct_client), ("activator", via_client)):
            started = time.perf_counter()
            answer = c.infer("digits", [data]).as_numpy("OUTPUT__0")
            timings[name].append(time.perf_counter() - started)
            np.testing.assert_allclose(answer, expected, rtol=1e-5)
    p50 = {k: statistics.median(v[50:]) * 1000 for k, v in timings.items()}
    p99 = {k: sorted(v[50:])[int(0.99 * 250)] * 1000 for k, v in timings.items()}
    print(f"\nHTTP infer, 250 sequential requests each (after 50 warm-up), one client: "
          f"direct p50 {p50['direct']:.2f} ms p99 {p99['direct']:.2f} ms; through the activator p50 "
          f"{p50['activator']:.2f} ms p99 {p99['activator']:.2f} ms; added p50 "
          f"{p50['activator'] - p50['direct']:.2f} ms (x{p50['activator'] / p50['direct']:.2f})")
    grpc_timings: dict[str, list[float]] = {"direct": [], "activator": []}
    clients = {"direct": grpcclient.InferenceServerClient(server.grpc_url),
               "activator": grpcclient.InferenceServerClient(f"127.0.0.1:{activator.ports.grpc}")}
    grpc_data = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    grpc_data.set_data_from_numpy(x)
    for _ in range(300):
        for name, g in clients.items():
            started = time.perf_counter()
            answer = g.infer("digits", [grpc_data]).as_numpy("OUTPUT__0")
            grpc_timings[name].append(time.perf_counter() - started)
            np.testing.assert_allclose(answer, expected, rtol=1e-5)
    g50 = {k: statistics.median(v[50:]) * 1000 for k, v in grpc_timings.items()}
    print(f"gRPC infer, the same: direct p50 {g50['direct']:.2f} ms; through the activator p50 "
          f"{g50['activator']:.2f} ms; added {g50['activator'] - g50['direct']:.2f} ms "
          f"(x{g50['activator'] / g50['direct']:.2f})")
    # only the first request waited (a fresh activator knows no ready target until it asks Triton once)
    assert activator.metric("modelops_activator_held_requests_total") == 1


def test_the_modelops_activator_command(triton: tuple[TritonServer, TritonPoolClient], tmp_path: Path) -> None:
    """`modelops activator` as its own process, with a fixed routing entry: a request held, SIGTERM (the pod
    stopping): not ready any more, but the held request is still answered by the model, then the process ends."""
    server, client = triton
    unload(server, client)
    http, grpc_port, admin = free_ports(3)
    backend = f"ns/digits=digits:1@127.0.0.1:{server.http_port}:{server.grpc_port}"
    log = (tmp_path / "activator.log").open("w+")
    process = subprocess.Popen([sys.executable, "-m", "modelops", "activator", "--no-watch", "--backend", backend,
                                "--address", "127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc_port}",
                                f"--admin-port={admin}", "--drain-lag=0.5"], stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1) as response:
                    return response.status == 200
            except urllib.error.HTTPError as error:
                assert error.code == 503 and error.read() == b"draining"
                return False
            except OSError:
                return False

        deadline = time.monotonic() + 30
        while not healthy():
            assert process.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()
            time.sleep(0.2)
        x = images(2)
        held = ThreadPoolExecutor(1).submit(grpc_infer, grpc_port, x)
        time.sleep(1)
        assert not held.done()
        process.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert not healthy() and process.poll() is None and not held.done()
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
            metrics = response.read().decode()  # still served while draining
        assert 'modelops_activator_holding_requests{modelservice="digits",namespace="ns"} 1.0' in metrics
        load(client, server)
        np.testing.assert_allclose(held.result(30), http_infer(server.http_port, x), rtol=1e-5)
        assert process.wait(15) == 0  # nothing held any more: the drain ends
        log.seek(0)
        assert "drained: 0 requests still held" in log.read()
    finally:
        process.terminate()
        process.wait(10)
        log.close()
