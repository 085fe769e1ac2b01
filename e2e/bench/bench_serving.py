"""Benchmark: the operator's Triton serving config against TorchServe at its best, on the same TorchScript model.

One TorchScript digits CNN (trained here with `python -m modelops.trainer --dataset digits`) is served by
  (a) Triton (the nvidia-pytriton wheel's tritonserver, python backend: the only backend that build has) with
      exactly the config.pbtxt, python-backend runtime and server arguments the operator renders for a
      ModelService (resources/modelservice.config_map and .deployment; Triton's repository laid out as the
      pod mounts it): the defaults, and a sweep of the knobs a user sets (maxBatchSize, preferredBatchSizes,
      maxQueueDelayMicroseconds, instanceCount); and the "old-style" sample version (model_repo/digits/1 with
      the model.py every version published before issue 15 carries) with instanceCount 1 and 2, served by the
      operator's runtime and, for comparison, by its own model.py as the operator did before issue 31;
  (b) Triton without dynamic batching (maxBatchSize 0);
  (c) TorchServe (PyPI torchserve + torch-model-archiver in a venv of its own, Java 17) with a minimal custom
      handler, quiet logging, and batch size, max batch delay, workers and torch threads tuned.
Every server listens on 127.0.0.1 only. The same client drives all of them: asyncio, keep-alive HTTP/1.1
connections (one per concurrent user), binary tensors both ways (Triton's binary tensor extension; raw
float32 bytes for TorchServe), one request in flight per connection; for Triton also gRPC (grpc.aio, one
channel, pre-serialised ModelInferRequest). Each point runs `--seconds` after `--warmup`, `--reps` times
(reps interleaved across the servers so that drifting background load hits them alike); the table shows
medians of req/s, p50 and p99 latency, and the CPU shares (of all cores) of the client and of the server
processes, and the ratios against TorchServe's best throughput at the same concurrency.

Run:   .venv/bin/python e2e/bench/bench_serving.py --max-load 1.5 --max-other 0.25 --json .work/bench.json
       (full: 20 s x 3 reps at c = 1, 16, 64; on a shared machine it waits for a quiet moment and measures a
       point again when other processes took more than 25% of the CPU during it)
Smoke: .venv/bin/python e2e/bench/bench_serving.py --seconds 5 --reps 1 --warmup 1
       (--only REGEX picks variants by label, --list shows them, --show-configs prints each config.pbtxt)
Old-style versions against fresh ones, at concurrency 16:
       .venv/bin/python e2e/bench/bench_serving.py --only 'old-style|^triton default$|^triton instanceCount 2$' \
           --no-grpc --concurrency 16

Setup (idempotent, done by the bench): the TorchServe venv at ~/.cache/modelops/venvs/torchserve (pinned
torchserve/torch-model-archiver; it borrows torch from the project's venv through a .pth file, so both
servers run the very same torch build), and Java 17 (`apt-get install openjdk-17-jre-headless` when absent
and running as root on Debian). Work files go to .work/bench-serving/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TORCHSERVE_VERSION = "0.12.0"
TORCHSERVE_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modelops/venvs/torchserve"
MODEL = "digits"
INPUT_SHAPE = (1, 8, 8)
INPUT_NAME, OUTPUT_NAME = "INPUT__0", "OUTPUT__0"
HOST = "127.0.0.1"
OLD_STYLE = "old-style sample"
"""Variants of this version serve model_repo/digits/1 with OLD_MODEL_PY in its folder, as published before."""
OLD_MODEL_PY = ROOT / "tests" / "data" / "model_py_before_issue_15.py"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
"""Dropped from the servers' environment: a pod has none of them, the rendered config must do the work."""


# ---------------------------------------------------------------------------------------------- the client
# Runs in its own process (`bench_serving.py _client JSON`), stdlib only (grpc for gRPC), so that its start is
# cheap and its CPU time is its own.

@dataclass
class Recorder:
    measuring: bool = False
    running: bool = True
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def done(self, started: float, ok: bool, why: str = "") -> None:
        if self.measuring:
            if ok:
                self.latencies.append(time.perf_counter() - started)
            else:
                self.errors += 1
                self.first_error = self.first_error or why


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with one request in flight; parses Content-Length framed replies."""

    def __init__(self, request: bytes, recorder: Recorder, closed: asyncio.Future[None]) -> None:
        self.request, self.recorder, self.closed = request, recorder, closed
        self.buffer = bytearray()
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.started = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
        if match:
            total = end + 4 + int(match.group(1))
            if len(buffer) < total:
                return
        elif b"chunked" in head:
            if not buffer.endswith(b"0\r\n\r\n"):
                return
            total = len(buffer)
        else:
            total = end + 4
        status = head[9:12]
        ok = status == b"200"
        self.recorder.done(self.started, ok, "" if ok else bytes(buffer[:total])[:300].decode(errors="replace"))
        del buffer[:total]
        if self.recorder.running:
            self.send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.recorder.running:
            self.recorder.errors += 1
            self.recorder.first_error = self.recorder.first_error or f"connection lost: {exc}"
        if not self.closed.done():
            self.closed.set_result(None)


def server_cpu_seconds(session: int) -> float:
    """utime + stime of every process in the server's session (tritonserver and its stubs; java and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 (session id), counted after the ")" that ends comm
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def _http_load(spec: dict[str, Any], recorder: Recorder) -> None:
    request = spec["request_head"].encode("latin-1") + bytes.fromhex(spec["body_hex"])
    loop = asyncio.get_running_loop()
    closed = []
    for _ in range(spec["concurrency"]):
        future: asyncio.Future[None] = loop.create_future()
        await loop.create_connection(lambda f=future: HttpConnection(request, recorder, f), spec["host"], spec["port"])
        closed.append(future)
    await _window(spec, recorder)
    await asyncio.wait(closed, timeout=10)


async def _grpc_load(spec: dict[str, Any], recorder: Recorder) -> None:
    import grpc

    request = bytes.fromhex(spec["body_hex"])
    async with grpc.aio.insecure_channel(f"{spec['host']}:{spec['port']}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def user() -> None:
            while recorder.running:
                started = time.perf_counter()
                try:
                    await infer(request, timeout=30)
                    recorder.done(started, True)
                except grpc.RpcError as exc:
                    recorder.done(started, False, str(exc)[:300])

        users = [asyncio.ensure_future(user()) for _ in range(spec["concurrency"])]
        await _window(spec, recorder)
        await asyncio.wait(users, timeout=10)


async def _window(spec: dict[str, Any], recorder: Recorder) -> None:
    await asyncio.sleep(spec["warmup"])
    recorder.measuring = True
    cpu0, server0, busy0, wall0 = _cpu(), server_cpu_seconds(spec["session"]), _busy(), time.perf_counter()
    await asyncio.sleep(spec["seconds"])
    recorder.measuring = False
    cpu1, server1, busy1, wall1 = _cpu(), server_cpu_seconds(spec["session"]), _busy(), time.perf_counter()
    recorder.running = False
    spec["_window"] = (wall1 - wall0, cpu1 - cpu0, server1 - server0, busy1 - busy0)


def _busy() -> float:
    """Seconds of CPU the whole machine spent busy (all processes; /proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_main(spec: dict[str, Any]) -> dict[str, Any]:
    recorder = Recorder()
    runner = _grpc_load if spec["protocol"] == "grpc" else _http_load
    asyncio.run(runner(spec, recorder))
    wall, cpu, server_cpu, busy = spec["_window"]
    cores = len(os.sched_getaffinity(0))
    latencies = sorted(recorder.latencies)
    n = len(latencies)

    def quantile(q: float) -> float:
        return latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {"requests": n, "rps": n / wall, "p50_ms": quantile(0.50), "p99_ms": quantile(0.99),
            "errors": recorder.errors, "first_error": recorder.first_error,
            "client_cpu": cpu / (wall * cores), "server_cpu": server_cpu / (wall * cores),
            "other_cpu": max(0.0, busy - cpu - server_cpu) / (wall * cores), "load1": os.getloadavg()[0]}


# ------------------------------------------------------------------------------------------------ servers

@dataclass
class Endpoint:
    protocol: str  # http | grpc
    port: int
    request_head: str
    body: bytes


class Server:
    label: str
    session: int
    version = "trained"
    """Which model version it serves: "trained" (here) or OLD_STYLE."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def endpoints(self) -> list[Endpoint]: ...


def _http_head(path: str, body_length: int, extra: str = "") -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n"
            f"Content-Type: application/octet-stream\r\n{extra}Content-Length: {body_length}\r\n\r\n")


@dataclass
class TritonVariant(Server):
    label: str
    triton: dict[str, Any]
    """spec.triton of the ModelService (wire names); backend python is added."""
    resources: dict[str, Any] = field(default_factory=dict)
    grpc: bool = False
    before: bool = False
    """Serve it as the operator did before issue 15: a 100 us queue delay, torch on every core in each instance
    (no thread parameters; model.py then used torch's default), Triton's four latency quantiles."""
    version: str = "trained"
    own_model_py: bool = False
    """Serve the version folder itself as Triton's model version, with the model.py in it: how the operator
    served the python backend before issue 31."""

    def prepare(self, workdir: Path, version_dir: Path, signature: dict[str, Any]) -> None:
        from modelops.api.modelservice import ModelServiceSpec
        from modelops.resources import modelservice as build

        spec = ModelServiceSpec.model_validate({
            "model": {"name": MODEL, "version": 1, "signature": signature},
            "repository": {"hostPath": {"path": str(version_dir.parent.parent)}},
            "triton": {"backend": "python", **self.triton}, "resources": self.resources})
        meta = build.ServiceMeta("bench", "default", "uid")
        target = build.Target(1, signature)
        data = build.config_map(meta, spec, "bench", target)["data"]
        self.config = data["config.pbtxt"]
        args = build.deployment(meta, spec, "bench", target, 1)["spec"]["template"]["spec"]["containers"][0]["args"]
        owned = ("--model-repository", "--model-control-mode", "--load-model", "--exit-on-error", "--http-port",
                 "--grpc-port", "--metrics-port")
        self.args = [a for a in args if not a.startswith(owned)] + ["--allow-cpu-metrics=false"]
        if self.before:
            self.args = [a for a in self.args if "summary_quantiles" not in a]
            self.config += "".join(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
                                   for key, value in (("INTRA_OP_THREAD_COUNT", len(os.sched_getaffinity(0))),
                                                      ("INTER_OP_THREAD_COUNT", len(os.sched_getaffinity(0)))))
        self.repository = workdir / "triton" / _slug(self.label)
        shutil.rmtree(self.repository, ignore_errors=True)
        if self.own_model_py:  # (its model.py reads no parameters: VERSION_DIRECTORY changes nothing for it)
            (self.repository / MODEL).mkdir(parents=True)
            shutil.copytree(version_dir, self.repository / MODEL / "1")
            (self.repository / MODEL / "config.pbtxt").write_text(self.config)
        else:  # as the pod mounts the ConfigMap; VERSION_DIRECTORY names the local folder, not the pod's mount
            from modelops.triton.repository import stage_python_model

            mounted = json.dumps(build.version_path(MODEL, 1))
            model_dir = stage_python_model(self.repository, MODEL, 1,
                                           self.config.replace(mounted, json.dumps(str(version_dir))))
            assert (model_dir / "1" / "model.py").read_text() == data["model.py"]
        self.log_path = workdir / "logs" / f"triton-{_slug(self.label)}.log"

    def start(self) -> None:
        from modelops.triton.server import TritonServer

        self.server = TritonServer(self.repository, models=[MODEL], extra_args=self.args, log_path=self.log_path)
        self.server.start()
        self.session = self.server._process.pid  # type: ignore[union-attr]  # started in a new session

    def stop(self) -> None:
        self.server.stop()

    def endpoints(self) -> list[Endpoint]:
        body = _triton_http_body()
        header_length = len(body) - 4 * _elements()
        head = _http_head(f"/v2/models/{MODEL}/versions/1/infer", len(body),
                          f"Inference-Header-Content-Length: {header_length}\r\n")
        points = [Endpoint("http", self.server.http_port, head, body)]
        if self.grpc:
            points.append(Endpoint("grpc", self.server.grpc_port, "", _triton_grpc_body()))
        return points


@dataclass
class TorchServeVariant(Server):
    label: str
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int
    netty_threads: int = 2

    def prepare(self, workdir: Path, version_dir: Path, signature: dict[str, Any]) -> None:
        self.home = workdir / "torchserve" / _slug(self.label)
        shutil.rmtree(self.home, ignore_errors=True)
        store = self.home / "store"
        store.mkdir(parents=True)
        mar = workdir / "torchserve" / f"{MODEL}.mar"
        if not mar.is_file():
            handler = workdir / "torchserve" / "digits_handler.py"
            handler.write_text(TORCHSERVE_HANDLER)
            subprocess.run([str(TORCHSERVE_VENV / "bin/torch-model-archiver"), "--model-name", MODEL, "--version",
                            "1.0", "--serialized-file", str(version_dir / "model.pt"), "--handler", str(handler),
                            "--export-path", str(mar.parent), "--force"], check=True)
        os.link(mar, store / mar.name)
        self.ports = _free_ports(5)
        models = {MODEL: {"1.0": {"defaultVersion": True, "marName": mar.name, "minWorkers": self.workers,
                                  "maxWorkers": self.workers, "batchSize": self.batch_size,
                                  "maxBatchDelay": self.max_batch_delay_ms, "responseTimeout": 120}}}
        (self.home / "config.properties").write_text("\n".join([
            f"inference_address=http://{HOST}:{self.ports[0]}",
            f"management_address=http://{HOST}:{self.ports[1]}",
            f"metrics_address=http://{HOST}:{self.ports[2]}",
            f"grpc_inference_address={HOST}", f"grpc_management_address={HOST}",
            f"grpc_inference_port={self.ports[3]}", f"grpc_management_port={self.ports[4]}",
            f"model_store={store}", f"load_models={mar.name}", f"models={json.dumps(models)}",
            f"default_workers_per_model={self.workers}",
            f"number_of_netty_threads={self.netty_threads}", f"netty_client_threads={self.netty_threads}",
            "job_queue_size=1000", "disable_token_authorization=true", "enable_metrics_api=false",
            "disable_system_metrics=true", "install_py_dep_per_model=false",
            "vmargs=-Xmx1g -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError", ""]))
        (self.home / "log4j2.xml").write_text(QUIET_LOG4J2)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV and k != "PYTHONPATH"}
        env.update(BENCH_TORCH_THREADS=str(self.threads), LOG_LOCATION=str(self.home / "logs"),
                   METRICS_LOCATION=str(self.home / "logs"), TEMP=str(self.home / "tmp"),
                   PATH=f"{TORCHSERVE_VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}")
        (self.home / "tmp").mkdir(exist_ok=True)
        self.log = open(self.home / "torchserve.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(TORCHSERVE_VENV / "bin/torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
             "--ts-config", str(self.home / "config.properties"), "--model-store", str(self.home / "store"),
             "--log-config", str(self.home / "log4j2.xml")],
            cwd=self.home, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.session = self.process.pid
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"torchserve exited {self.process.returncode}; see {self.home / 'torchserve.log'}")
            try:
                request = urllib.request.Request(f"http://{HOST}:{self.ports[0]}/predictions/{MODEL}",
                                                 data=_raw_input(), method="POST",
                                                 headers={"Content-Type": "application/octet-stream"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        self._wait_workers(deadline)
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"torchserve not ready; see {self.home / 'torchserve.log'}")

    def _wait_workers(self, deadline: float) -> None:
        url = f"http://{HOST}:{self.ports[1]}/models/{MODEL}"
        while time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as response:
                workers = json.loads(response.read())[0]["workers"]
            if sum(w["status"] == "READY" for w in workers) >= self.workers:
                return
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()

    def endpoints(self) -> list[Endpoint]:
        body = _raw_input()
        return [Endpoint("http", self.ports[0], _http_head(f"/predictions/{MODEL}", len(body)), body)]


TORCHSERVE_HANDLER = '''\
"""A minimal TorchServe handler: raw float32 bytes in, raw float32 logits out, one forward pass per batch."""
import os

import numpy as np
import torch


class DigitsHandler:
    def initialize(self, context):
        threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        model_dir = context.system_properties["model_dir"]
        self.model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
        self.initialized = True

    def handle(self, data, context):
        arrays = [np.frombuffer(row.get("body") or row.get("data"), dtype=np.float32) for row in data]
        batch = torch.from_numpy(np.concatenate(arrays).reshape(len(arrays), 1, 8, 8))
        with torch.inference_mode():
            logits = self.model(batch).numpy()
        return [row.tobytes() for row in logits]
'''

QUIET_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT"><PatternLayout pattern="%d{ISO8601} [%-5p] %c - %m%n"/></Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="warn"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.pytorch.serve" level="warn"/>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


# ------------------------------------------------------------------------------------------------ payloads

_INPUT: bytes = b""


def _elements() -> int:
    return INPUT_SHAPE[0] * INPUT_SHAPE[1] * INPUT_SHAPE[2]


def _raw_input() -> bytes:
    return _INPUT


def _triton_http_body() -> bytes:
    header = json.dumps({
        "inputs": [{"name": INPUT_NAME, "shape": [1, *INPUT_SHAPE], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(_INPUT)}}],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": True}}]}, separators=(",", ":")).encode()
    return header + _INPUT


def _triton_grpc_body() -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="1")
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = INPUT_NAME, "FP32"
    tensor.shape.extend([1, *INPUT_SHAPE])
    request.outputs.add().name = OUTPUT_NAME
    request.raw_input_contents.append(_INPUT)
    return request.SerializeToString()


def _check_answer(server: Server, endpoint: Endpoint, expected: Sequence[float]) -> None:
    """One request through a plain client: the logits must be the TorchScript module's own."""
    import numpy as np

    if endpoint.protocol == "grpc":
        import grpc
        from tritonclient.grpc import service_pb2

        with grpc.insecure_channel(f"{HOST}:{endpoint.port}") as channel:
            raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(endpoint.body, timeout=30)
        logits = np.frombuffer(service_pb2.ModelInferResponse.FromString(raw).raw_output_contents[0], np.float32)
    else:
        import http.client

        path = endpoint.request_head.split(" ")[1]
        headers = dict(line.split(": ", 1) for line in endpoint.request_head.split("\r\n")[1:] if ": " in line)
        connection = http.client.HTTPConnection(HOST, endpoint.port, timeout=30)
        connection.request("POST", path, body=endpoint.body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if response.status != 200:
            raise RuntimeError(f"{server.label}: HTTP {response.status}: {data[:300]!r}")
        logits = np.frombuffer(data[-40:], np.float32)
    if not np.allclose(logits, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{server.label} ({endpoint.protocol}) answered {logits}, expected {list(expected)}")


# ------------------------------------------------------------------------------------------------ variants

def variants() -> list[Server]:
    """What the bench serves. Triton variants are ModelService specs (spec.triton, spec.resources)."""
    before = {"dynamicBatching": {"maxQueueDelayMicroseconds": 100}}
    return [
        TritonVariant("triton default", {}, grpc=True),
        TritonVariant("triton no batching (maxBatchSize 0)", {"maxBatchSize": 0}),
        TritonVariant("triton instanceCount 2", {"instanceCount": 2}),
        TritonVariant("triton queue delay 100us", {"dynamicBatching": {"maxQueueDelayMicroseconds": 100}}),
        TritonVariant("triton queue delay 2ms, preferred 8/16/32/64",
                      {"dynamicBatching": {"maxQueueDelayMicroseconds": 2000, "preferredBatchSizes": [8, 16, 32, 64]}}),
        TritonVariant("triton maxBatchSize 16", {"maxBatchSize": 16}),
        TritonVariant("triton before (default)", before, before=True),
        TritonVariant("triton before (instanceCount 2)", {**before, "instanceCount": 2}, before=True),
        TritonVariant(f"triton {OLD_STYLE}", {}, version=OLD_STYLE),
        TritonVariant(f"triton {OLD_STYLE} instanceCount 2", {"instanceCount": 2}, version=OLD_STYLE),
        TritonVariant(f"triton {OLD_STYLE}, own model.py", {}, version=OLD_STYLE, own_model_py=True),
        TritonVariant(f"triton {OLD_STYLE} instanceCount 2, own model.py", {"instanceCount": 2}, version=OLD_STYLE,
                      own_model_py=True),
        TorchServeVariant("torchserve batch 1, 1 worker", batch_size=1, max_batch_delay_ms=0, workers=1, threads=1),
        TorchServeVariant("torchserve batch 16, 2 ms, 1 worker", batch_size=16, max_batch_delay_ms=2, workers=1,
                          threads=1),
        TorchServeVariant("torchserve batch 64, 2 ms, 1 worker", batch_size=64, max_batch_delay_ms=2, workers=1,
                          threads=1),
        TorchServeVariant("torchserve batch 16, 2 ms, 2 workers", batch_size=16, max_batch_delay_ms=2, workers=2,
                          threads=1),
    ]


# ------------------------------------------------------------------------------------------------- running

def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _free_ports(count: int) -> list[int]:
    from modelops.triton.server import free_ports

    return free_ports(count)


def ensure_java() -> str:
    """Java 17+ for TorchServe's frontend: Debian's openjdk-17-jre-headless, installed when absent (as root)."""
    def version() -> int:
        try:
            out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        except FileNotFoundError:
            return 0
        match = re.search(r'version "(\d+)', out)
        return int(match.group(1)) if match else 0

    if version() < 17:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise SystemExit("TorchServe needs Java 17: apt-get install openjdk-17-jre-headless")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openjdk-17-jre-headless"],
                       check=True, env=env)
    return str(version())


def ensure_torchserve() -> None:
    """The TorchServe venv (not the project's): pinned torchserve + torch-model-archiver; torch is the project's
    own build, reached through a .pth file, so both servers run identical torch code."""
    marker = TORCHSERVE_VENV / f".modelops-torchserve-{TORCHSERVE_VERSION}"
    if marker.is_file():
        return
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(TORCHSERVE_VENV)], check=True)
    subprocess.run([str(TORCHSERVE_VENV / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"torchserve=={TORCHSERVE_VERSION}", f"torch-model-archiver=={TORCHSERVE_VERSION}"], check=True)
    site = subprocess.run([str(TORCHSERVE_VENV / "bin/python"), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "zz-modelops-torch.pth").write_text(ours + "\n")
    subprocess.run([str(TORCHSERVE_VENV / "bin/python"), "-c", "import torch, ts"], check=True)
    marker.write_text("ok\n")


def train(workdir: Path) -> tuple[Path, dict[str, Any], list[float]]:
    """The digits CNN, trained and published as the tests do; returns its version folder, signature, and the
    logits of the bench input."""
    global _INPUT
    repository, checkpoints = workdir / "model-repo", workdir / "checkpoints"
    for old in (repository, checkpoints):
        shutil.rmtree(old, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "modelops.trainer", "--dataset", "digits", "--epochs", "4", "--batch-size",
                    "32", "--lr", "0.003", "--num-threads", "1", "--repository", str(repository), "--model-name",
                    MODEL, "--checkpoint-dir", str(checkpoints)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version_dir = repository / MODEL / "1"
    import numpy as np

    from modelops.trainer.data import Missing, load_builtin, prepare

    data = prepare(load_builtin("digits", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.2, seed=0)
    _INPUT = np.ascontiguousarray(data.test.x[:1], dtype=np.float32).tobytes()
    return _described(version_dir)


def old_style_sample(workdir: Path) -> tuple[Path, dict[str, Any], list[float]]:
    """model_repo/digits/1 as versions were published before issue 31, with a model.py: the one of before
    issue 15 (no thread rule), which every version published until then carries."""
    version_dir = workdir / "old-style" / MODEL / "1"
    shutil.rmtree(version_dir.parent, ignore_errors=True)
    shutil.copytree(ROOT / "model_repo" / MODEL / "1", version_dir)
    shutil.copy(OLD_MODEL_PY, version_dir / "model.py")
    return _described(version_dir)


def _described(version_dir: Path) -> tuple[Path, dict[str, Any], list[float]]:
    """The version folder, its signature, and its TorchScript module's logits for the bench input."""
    import numpy as np
    import torch

    signature = json.loads((version_dir / "metadata.json").read_text())["signature"]
    x = np.frombuffer(_INPUT, np.float32).reshape(1, *INPUT_SHAPE)
    with torch.inference_mode():
        expected = torch.jit.load(str(version_dir / "model.pt"))(torch.from_numpy(x.copy())).numpy()[0].tolist()
    return version_dir, signature, expected


def run_point(server: Server, endpoint: Endpoint, concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    spec = {"protocol": endpoint.protocol, "host": HOST, "port": endpoint.port, "request_head": endpoint.request_head,
            "body_hex": endpoint.body.hex(), "concurrency": concurrency, "seconds": seconds, "warmup": warmup,
            "session": server.session}
    out = subprocess.run([sys.executable, __file__, "_client", json.dumps(spec)], capture_output=True, text=True,
                         timeout=seconds + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((r["label"], r["protocol"], r["concurrency"]), []).append(r)
    table = []
    for (label, protocol, concurrency), runs in rows.items():
        table.append({"label": label, "protocol": protocol, "concurrency": concurrency, "reps": len(runs),
                      **{k: median([r[k] for r in runs]) for k in
                         ("rps", "p50_ms", "p99_ms", "client_cpu", "server_cpu", "other_cpu", "load1")},
                      "errors": sum(r["errors"] for r in runs)})
    best: dict[int, dict[str, Any]] = {}
    for row in table:
        if row["label"].startswith("torchserve"):
            c = row["concurrency"]
            if c not in best or row["rps"] > best[c]["rps"]:
                best[c] = row
    for row in table:
        ref = best.get(row["concurrency"])
        row["x_rps"] = row["rps"] / ref["rps"] if ref else float("nan")
        row["x_p99"] = row["p99_ms"] / ref["p99_ms"] if ref else float("nan")
        row["ts_best"] = ref["label"] if ref else ""
    return table


def print_table(table: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    width = max(len(r["label"]) for r in table) + 6
    out(f"{'server / config':<{width}} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'client':>6} "
        f"{'server':>6} {'other':>6} {'x rps':>6} {'x p99':>6}")
    for r in table:
        name = r["label"] + (" grpc" if r["protocol"] == "grpc" else "")
        out(f"{name:<{width}} {r['concurrency']:>3} {r['rps']:>8.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['client_cpu']:>6.0%} {r['server_cpu']:>6.0%} {r['other_cpu']:>6.0%} {r['x_rps']:>6.2f} "
            f"{r['x_p99']:>6.2f}" + (f"  errors {r['errors']}" if r["errors"] else ""))
    out("client/server/other: CPU share of all cores taken by the bench client, by the server's processes, and by "
        "everything else on the machine during the point")
    out("x rps, x p99: ratio to TorchServe's best (highest req/s) at the same concurrency: "
        + "; ".join(sorted({f"c{r['concurrency']}: {r['ts_best']}" for r in table if r["ts_best"]})))
    verdict(table, out)


def verdict(table: list[dict[str, Any]], out: Callable[[str], None] = print) -> None:
    """The issue's targets, checked on this run's medians."""
    def row(label: str, c: int) -> dict[str, Any] | None:
        return next((r for r in table if r["label"] == label and r["protocol"] == "http"
                     and r["concurrency"] == c), None)

    for c in sorted({r["concurrency"] for r in table}):
        default = row("triton default", c)
        ts = [r for r in table if r["label"].startswith("torchserve") and r["concurrency"] == c]
        if default and ts:
            best = max(ts, key=lambda r: r["rps"])
            tail = min(r["p99_ms"] for r in ts)
            out(f"c{c}: default {default['rps']:.0f} req/s = {default['x_rps']:.2f}x TorchServe's best "
                f"({best['rps']:.0f}); p99 {default['p99_ms']:.2f} ms vs {best['p99_ms']:.2f} ms (that config) and "
                f"{tail:.2f} ms (TorchServe's lowest p99)")
        for what, one_label, two_label in (
                ("", "triton default", "triton instanceCount 2"),
                (f"{OLD_STYLE}: ", f"triton {OLD_STYLE}", f"triton {OLD_STYLE} instanceCount 2"),
                (f"{OLD_STYLE} by its own model.py (as before issue 31): ", f"triton {OLD_STYLE}, own model.py",
                 f"triton {OLD_STYLE} instanceCount 2, own model.py")):
            one, two = row(one_label, c), row(two_label, c)
            if one and two:
                out(f"c{c}: {what}instanceCount 2 / 1 = {two['rps'] / one['rps']:.2f} (req/s {two['rps']:.0f} vs "
                    f"{one['rps']:.0f}), p99 {two['p99_ms']:.2f} vs {one['p99_ms']:.2f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per point (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each point")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved across servers)")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated in-flight requests")
    parser.add_argument("--only", default="", help="regex over variant labels")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--no-grpc", action="store_true", help="HTTP only")
    parser.add_argument("--max-load", type=float, default=0.0,
                        help="wait (up to --load-wait s) until the 1-min load average is below this before starting")
    parser.add_argument("--load-wait", type=float, default=1800.0)
    parser.add_argument("--max-other", type=float, default=1.0,
                        help="re-measure a point (up to --retries times, after waiting for the load to fall below "
                             "--max-load) when other processes took more than this share of the CPU during it")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".work" / "bench-serving")
    parser.add_argument("--json", type=Path, help="write every point and the summary here")
    parser.add_argument("--show-configs", action="store_true", help="print each Triton config.pbtxt")
    args = parser.parse_args(argv)
    chosen = [v for v in variants() if re.search(args.only, v.label)]
    if args.list:
        for v in chosen:
            print(v.label)
        return 0
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    for name in THREAD_ENV:
        os.environ.pop(name, None)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "logs").mkdir(exist_ok=True)

    info: dict[str, Any] = {"cores": len(os.sched_getaffinity(0)), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "seconds": args.seconds, "reps": args.reps, "warmup": args.warmup}
    if any(isinstance(v, TorchServeVariant) for v in chosen):
        info["java"] = ensure_java()
        ensure_torchserve()
        info["torchserve"] = TORCHSERVE_VERSION
    from modelops.triton.server import find_triton

    if any(isinstance(v, TritonVariant) for v in chosen) and find_triton() is None:
        raise SystemExit("tritonserver not found: the project's venv needs nvidia-pytriton")
    print(f"training the digits model into {args.workdir} ...", flush=True)
    versions = {"trained": train(args.workdir)}
    if any(v.version == OLD_STYLE for v in chosen):
        versions[OLD_STYLE] = old_style_sample(args.workdir)
    for v in chosen:
        if args.no_grpc and isinstance(v, TritonVariant):
            v.grpc = False
        version_dir, signature, _ = versions[v.version]
        v.prepare(args.workdir, version_dir, signature)  # type: ignore[attr-defined]
        if args.show_configs and isinstance(v, TritonVariant):
            print(f"--- {v.label}: args {' '.join(v.args)}\n{v.config}")
    def wait_for_quiet() -> None:
        deadline = time.monotonic() + args.load_wait
        while args.max_load and os.getloadavg()[0] >= args.max_load and time.monotonic() < deadline:
            print(f"load {os.getloadavg()[0]:.2f} >= {args.max_load}; waiting", flush=True)
            time.sleep(30)

    wait_for_quiet()
    info["load_at_start"] = os.getloadavg()
    print(f"cores {info['cores']}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    results: list[dict[str, Any]] = []
    for rep in range(args.reps):
        for v in chosen:
            v.start()
            try:
                for endpoint in v.endpoints():
                    _check_answer(v, endpoint, versions[v.version][2])
                    for c in concurrencies:
                        point = run_point(v, endpoint, c, args.seconds, args.warmup)
                        retried = 0
                        while point["other_cpu"] > args.max_other and retried < args.retries:
                            retried += 1
                            print(f"  {v.label} c={c}: other processes took {point['other_cpu']:.0%} of the CPU; "
                                  f"measuring again ({retried}/{args.retries})", flush=True)
                            wait_for_quiet()
                            point = run_point(v, endpoint, c, args.seconds, args.warmup)
                        point.update(label=v.label, protocol=endpoint.protocol, concurrency=c, rep=rep,
                                     retries=retried)
                        results.append(point)
                        print(f"rep {rep + 1} {v.label} {endpoint.protocol} c={c}: {point['rps']:.0f} req/s "
                              f"p50 {point['p50_ms']:.2f} p99 {point['p99_ms']:.2f} ms client "
                              f"{point['client_cpu']:.0%} server {point['server_cpu']:.0%} other {point['other_cpu']:.0%}"
                              + (f" errors {point['errors']}: {point['first_error']}" if point["errors"] else ""),
                              flush=True)
            finally:
                v.stop()
    info["load_at_end"] = os.getloadavg()
    table = summarise(results)
    print(f"\nmedians of {args.reps} reps, {args.seconds:g} s per point, {info['cores']} cores, client and servers "
          f"on one machine (127.0.0.1); load average {' '.join(f'{x:.2f}' for x in info['load_at_start'])} before, "
          f"{' '.join(f'{x:.2f}' for x in info['load_at_end'])} after")
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "points": results, "summary": table}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_client":
        print(json.dumps(client_main(json.loads(sys.argv[2]))))
    else:
        sys.path.insert(0, str(ROOT / "operator"))
        # Stop the servers (finally blocks) on SIGTERM too, and on Ctrl-C even when started in the background.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.exit(main())
