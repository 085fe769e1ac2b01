"""Benchmark: the operator at scale on the local cluster (issue 10, and issue 18's model-check pressure).

Starts its own local cluster (kwok nodes, API server audit log on) in a scratch directory, applies the
CRDs, runs the real operator (`python -m modelops run`) as a subprocess under its own client certificate,
then creates TrainingJobs (1 worker, no GPU, hostPath repository) and ModelServices (pinned model version
with a signature, hostPath repository, 1 replica, no autoscaling) spread over several namespaces, and
measures:

- create -> children present (TrainingJob: a worker pod; ModelService: a revision Deployment) and
  create -> first status (status.observedGeneration set), p50/p99, for a paced sample of objects created
  with 0, N and 2N objects present (watch-fed, so the measurement itself does not load the API server);
- operator RSS, CPU seconds, open fds, threads and API connections at 0, N/2, N and 2N objects
  (objects = TrainingJobs + ModelServices, after convergence);
- API requests per minute by verb made by the operator over a steady-state window, from the API
  server's audit log (the operator is the only client using its certificate's user name);
- after `kill -9` of the converged operator: time until idle (no operator request but watches for 10 s)
  and the writes it made meanwhile; its RSS before the kill, its peak during the resync (VmHWM) and its
  RSS once idle;
- up to 200 training pods finishing at once: time until their jobs all show Succeeded;
- fds and RSS at the start and end of the steady window, while every serving pod's model check stays
  pending (kwok runs no Triton).

Run: .venv/bin/python e2e/bench/bench_scale.py [--n 1000] [--steady-seconds 300] [--out result.json]
Smoke: .venv/bin/python e2e/bench/bench_scale.py --n 20 --steady-seconds 30 --sample 5
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from modelops.dev.cluster import LocalCluster, NodeSpec, build_tools, free_port

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "modelops.dev", "v1alpha1"
TJ, MS = "TrainingJob", "ModelService"
PLURALS = {TJ: "trainingjobs", MS: "modelservices"}
EXIT_ANNOTATION = "e2e.modelops.dev/exit-code"
# The bench's own requests must never look like the operator's (its user agent starts with "modelops").
BENCH_AGENT = "scale-bench/1.0"
OPERATOR_USER = "modelops-bench-operator"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
READ_VERBS = ("get", "list", "watch")
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
MODELS_PATH = "/tmp/modelops-bench-models"  # never touched: kwok pods mount nothing
IDLE_SECONDS = 10.0


class BenchError(RuntimeError):
    """The benchmark cannot go on (the operator died, the cluster broke)."""


# ---- the operator process and what /proc says about it ---------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child: SIGKILL it when the bench dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


@dataclass
class ProcessSample:
    rss_mb: float
    peak_rss_mb: float  # VmHWM: the most RSS the process ever had, between samples too
    cpu_s: float
    fds: int
    threads: int
    api_connections: int
    fd_kinds: dict[str, int] = field(default_factory=dict)  # socket, pipe, anon_inode, file

    def brief(self) -> str:
        return (f"RSS {self.rss_mb:.0f} MB, CPU {self.cpu_s:.1f} s, {self.fds} fds, {self.threads} threads, "
                f"{self.api_connections} API conns")


def sample_process(pid: int, api_port: int) -> ProcessSample:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    sockets = set()
    fds = 0
    kinds: Counter[str] = Counter()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue
        kinds["file" if target.startswith("/") else target.split(":", 1)[0]] += 1
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    connections = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            # remote address is HEX_IP:HEX_PORT; state 01 = ESTABLISHED; column 9 is the socket inode
            if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == api_port and cols[9] in sockets:
                connections += 1
    megabytes = lambda field: int(status[field].split()[0]) / 1024  # noqa: E731 - "123456 kB"
    return ProcessSample(rss_mb=megabytes("VmRSS"), peak_rss_mb=megabytes("VmHWM"),
                         cpu_s=(int(stat[11]) + int(stat[12])) / ticks, fds=fds, threads=int(status["Threads"]),
                         api_connections=connections, fd_kinds=dict(kinds.most_common()))


class Operator:
    """`modelops run` as a child process, with its own kubeconfig (so the audit log can tell it apart)."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log_path: Path, extra_args: list[str],
                 repo: Path = REPO) -> None:
        self.kubeconfig, self.namespaces, self.log_path, self.extra_args = kubeconfig, namespaces, log_path, extra_args
        self.repo = repo
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        args = [sys.executable, "-m", "modelops", "run", "--liveness-port", "0", "--metrics-port", str(free_port())]
        for namespace in self.namespaces:
            args += ["-n", namespace]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        if self.repo != REPO:  # another checkout's package first on the path
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.repo / "operator"), env.get("PYTHONPATH")]))
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== bench: operator start #{self.starts}: {shlex.join(args + self.extra_args)}\n".encode())
            log.flush()
            self.process = subprocess.Popen([*args, *self.extra_args], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, cwd=self.repo,
                                            preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise BenchError(f"the operator exited (code {code}); log tail:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def operator_kubeconfig(cluster: LocalCluster, path: Path) -> Path:
    """A kubeconfig like the cluster's, but with a client certificate of its own (user OPERATOR_USER, group
    system:masters), signed by the local cluster's CA: every request the operator makes, through any of its
    clients, carries that user name in the audit log."""
    pki = cluster.root / "pki"
    work = path.parent / "operator-pki"
    work.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)

    (work / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
            "-subj", f"/O=system:masters/CN={OPERATOR_USER}")
    openssl("x509", "-req", "-in", "client.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
            "-CAcreateserial", "-CAserial", str(work / "ca.srl"), "-out", "client.crt", "-days", "30",
            "-extfile", "client.ext")
    import base64

    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {
        "client-certificate-data": base64.b64encode((work / "client.crt").read_bytes()).decode(),
        "client-key-data": base64.b64encode((work / "client.key").read_bytes()).decode()}}]
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


# ---- the audit log, read incrementally ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    stage: str           # ResponseStarted (watches only) or ResponseComplete
    verb: str
    resource: str        # e.g. "pods", "trainingjobs/status"
    received: float      # epoch seconds
    agent: str
    code: int


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class AuditLog:
    """The operator's requests from the API server's JSON audit log, parsed from where the last read stopped."""

    def __init__(self, path: Path, username: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.needle = f'"username":"{username}"'.encode()
        self.lines = 0

    def drain(self) -> list[Request]:
        out: list[Request] = []
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return out
        with handle:
            handle.seek(self.offset)
            while chunk := handle.read(8 << 20):
                self.offset += len(chunk)
                lines = (self.partial + chunk).split(b"\n")
                self.partial = lines.pop()
                self.lines += len(lines)
                for line in lines:
                    if self.needle in line:
                        request = self._parse(line)
                        if request is not None:
                            out.append(request)
        return out

    @staticmethod
    def _parse(line: bytes) -> Request | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None
        stage = event.get("stage", "")
        if stage not in ("ResponseComplete", "ResponseStarted"):
            return None
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or event.get("requestURI", "?").split("?")[0]
        if ref.get("subresource"):
            resource += "/" + ref["subresource"]
        return Request(stage=stage, verb=event.get("verb", "?"), resource=resource,
                       received=_epoch(event["requestReceivedTimestamp"]), agent=event.get("userAgent", ""),
                       code=int((event.get("responseStatus") or {}).get("code") or 0))


@dataclass
class RequestTally:
    """Requests counted once each (ResponseComplete; watch starts from ResponseStarted)."""

    by_verb: Counter[str] = field(default_factory=Counter)
    by_verb_resource: Counter[str] = field(default_factory=Counter)
    by_agent: Counter[str] = field(default_factory=Counter)
    watch_starts: int = 0

    def add(self, request: Request) -> None:
        if request.stage == "ResponseStarted":
            self.watch_starts += request.verb == "watch"
            return
        self.by_verb[request.verb] += 1
        self.by_verb_resource[f"{request.verb} {request.resource}"] += 1
        self.by_agent[request.agent.split(" ")[0]] += 1

    @property
    def writes(self) -> int:
        return sum(self.by_verb[v] for v in WRITE_VERBS)

    @property
    def reads(self) -> int:
        return sum(self.by_verb[v] for v in READ_VERBS)

    def as_json(self, minutes: float | None = None) -> dict[str, Any]:
        scale = (lambda n: round(n / minutes, 1)) if minutes else (lambda n: n)
        return {"by_verb": {k: scale(v) for k, v in sorted(self.by_verb.items())},
                "reads": scale(self.reads), "writes": scale(self.writes), "watch_starts": scale(self.watch_starts),
                "by_verb_resource": {k: scale(v) for k, v in self.by_verb_resource.most_common()},
                "by_user_agent": {k: scale(v) for k, v in self.by_agent.most_common()}}


# ---- the API, and watch-fed tracking of what the operator did ---------------------------------------------


class Api:
    """Typed clients for writes, and raw HTTP for list+watch (no model deserialisation: cheap)."""

    def __init__(self, kubeconfig: Path) -> None:
        configuration = k8s.Configuration()
        k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        self.configuration = configuration
        self.api_client = k8s.ApiClient(configuration)
        self.api_client.user_agent = BENCH_AGENT
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.pool = self.api_client.rest_client.pool_manager
        self.host = configuration.host.rstrip("/")

    def request(self, path: str, query: dict[str, Any], read_timeout: float) -> urllib3.BaseHTTPResponse:
        response = self.pool.request("GET", self.host + path, fields=query, preload_content=False,
                                     headers={"Accept": "application/json", "User-Agent": BENCH_AGENT},
                                     timeout=urllib3.Timeout(connect=10, read=read_timeout), retries=False)
        if response.status != 200:
            body = response.read()[:300]
            response.release_conn()
            raise BenchError(f"GET {path}: HTTP {response.status} {body!r}")
        return response


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())


class Informer(threading.Thread):
    """List, then watch, one collection cluster-wide; re-list when the watch expires or breaks."""

    def __init__(self, api: Api, path: str, handle: Callable[[str, dict[str, Any]], None],
                 stop: threading.Event) -> None:
        super().__init__(name=f"informer {path}", daemon=True)
        self.api, self.path, self.handle, self.stop = api, path, handle, stop
        self.synced = threading.Event()
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                version = self._list()
                self.synced.set()
                self._watch(version)
            except Exception:  # noqa: BLE001 - connection trouble: start over with a fresh list
                self.errors += 1
                self.stop.wait(1.0)

    def _list(self) -> str:
        cont = ""
        while True:
            query: dict[str, Any] = {"limit": 500, **({"continue": cont} if cont else {})}
            response = self.api.request(self.path, query, read_timeout=60)
            try:
                data = json.loads(response.read())
            finally:
                response.release_conn()
            for item in data.get("items", []):
                self.handle("ADDED", item)
            cont = data["metadata"].get("continue", "")
            if not cont:
                return str(data["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        while not self.stop.is_set():
            query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true", "timeoutSeconds": 120}
            response = self.api.request(self.path, query, read_timeout=150)
            try:
                for line in _lines(response):
                    event = json.loads(line)
                    if event.get("type") == "ERROR":  # typically 410 Gone: re-list
                        return
                    obj = event.get("object") or {}
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if event["type"] != "BOOKMARK":
                        self.handle(event["type"], obj)
                    if self.stop.is_set():
                        return
            finally:
                response.release_conn()


def _controller_owner(obj: dict[str, Any], kind: str) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return str(ref["uid"])
    return None


class Tracker:
    """First-seen times (monotonic) per custom object uid, fed by watches: a child, the first status, phases."""

    def __init__(self, api: Api) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.children: dict[str, float] = {}
        self.status: dict[str, float] = {}
        self.phase: dict[str, str] = {}
        self.succeeded_at: dict[str, float] = {}
        self.pod_succeeded_at: dict[str, float] = {}
        self.worker_pods: dict[str, dict[tuple[str, str], str]] = {}  # TrainingJob uid -> {(ns, pod): phase}
        self.informers = [
            Informer(api, f"/apis/{GROUP}/{VERSION}/trainingjobs", self._on_custom, self.stop),
            Informer(api, f"/apis/{GROUP}/{VERSION}/modelservices", self._on_custom, self.stop),
            Informer(api, "/api/v1/pods", self._on_pod, self.stop),
            Informer(api, "/apis/apps/v1/deployments", self._on_deployment, self.stop),
        ]

    def start(self, timeout: float = 60) -> None:
        for informer in self.informers:
            informer.start()
        deadline = time.monotonic() + timeout
        for informer in self.informers:
            if not informer.synced.wait(max(0.1, deadline - time.monotonic())):
                raise BenchError(f"{informer.name} did not sync in {timeout:.0f}s")

    def close(self) -> None:
        self.stop.set()

    def _on_custom(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        now = time.monotonic()
        uid = obj["metadata"]["uid"]
        status = obj.get("status") or {}
        with self.lock:
            if status.get("observedGeneration") is not None:
                self.status.setdefault(uid, now)
            if status.get("phase"):
                self.phase[uid] = status["phase"]
                if status["phase"] == "Succeeded":
                    self.succeeded_at.setdefault(uid, now)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        owner = _controller_owner(obj, TJ)
        if owner is None:
            return
        now = time.monotonic()
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        phase = (obj.get("status") or {}).get("phase", "Pending")
        with self.lock:
            self.children.setdefault(owner, now)
            pods = self.worker_pods.setdefault(owner, {})
            if kind == "DELETED":
                pods.pop(key, None)
            else:
                pods[key] = phase
                if phase == "Succeeded":
                    self.pod_succeeded_at.setdefault(owner, now)

    def _on_deployment(self, kind: str, obj: dict[str, Any]) -> None:
        owner = _controller_owner(obj, MS)
        if owner is not None and kind != "DELETED":
            with self.lock:
                self.children.setdefault(owner, time.monotonic())

    def missing(self, uids: list[str]) -> tuple[int, int]:
        """(objects without a child yet, objects without a status yet)."""
        with self.lock:
            return sum(u not in self.children for u in uids), sum(u not in self.status for u in uids)

    def running_jobs(self) -> list[tuple[str, str, str]]:
        """(job uid, pod namespace, pod name) for jobs not finished whose worker pod is Running."""
        with self.lock:
            return [(uid, *key) for uid, pods in self.worker_pods.items()
                    if self.phase.get(uid) not in ("Succeeded", "Failed")
                    for key, phase in pods.items() if phase == "Running"]


# ---- creating objects --------------------------------------------------------------------------------------


def manifest(kind: str, name: str) -> dict[str, Any]:
    metadata = {"name": name, "labels": {"bench.modelops.dev/scale": "true"}}
    if kind == TJ:
        spec: dict[str, Any] = {"workers": 1, "trainer": {"epochs": 1},
                                "output": {"modelName": "bench", "repository": {"hostPath": {"path": MODELS_PATH}}}}
    else:
        spec = {"model": {"name": "bench", "version": 1, "signature": SIGNATURE},
                "repository": {"hostPath": {"path": MODELS_PATH}}, "replicas": 1}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": metadata, "spec": spec}


@dataclass(frozen=True)
class Created:
    uid: str
    kind: str
    at: float  # monotonic, when the API server's answer came back


class Fleet:
    """Every object the bench created, and how to create more."""

    def __init__(self, api: Api, namespaces: list[str], threads: int) -> None:
        self.api, self.namespaces, self.threads = api, namespaces, threads
        self.created: list[Created] = []
        self.counts = Counter[str]()
        self.lock = threading.Lock()

    @property
    def total(self) -> int:
        return len(self.created)

    def next_names(self, kind: str, count: int) -> list[tuple[str, str, str]]:
        """(kind, namespace, name) for the next `count` objects of `kind`, round robin over the namespaces."""
        start = self.counts[kind]
        self.counts[kind] += count
        prefix = "tj" if kind == TJ else "ms"
        return [(kind, self.namespaces[i % len(self.namespaces)], f"{prefix}-{i:05d}") for i in range(start, start + count)]

    def create_one(self, item: tuple[str, str, str]) -> Created:
        kind, namespace, name = item
        for attempt in range(8):
            try:
                obj = self.api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind],
                                                                      manifest(kind, name))
                break
            except ApiException as error:
                if error.status == 409:  # a retried create that had gone through
                    obj = self.api.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name)
                    break
                if error.status not in (429, 500, 503, 504) or attempt == 7:
                    raise
            except urllib3.exceptions.HTTPError:
                if attempt == 7:
                    raise
            time.sleep(0.2 * 2 ** attempt)
        created = Created(obj["metadata"]["uid"], kind, time.monotonic())
        with self.lock:
            self.created.append(created)
        return created

    def burst(self, items: list[tuple[str, str, str]]) -> tuple[list[Created], float]:
        """Create concurrently; return the objects and the seconds it took."""
        started = time.monotonic()
        with ThreadPoolExecutor(self.threads) as pool:
            done = list(pool.map(self.create_one, items))
        return done, time.monotonic() - started

    def paced(self, items: list[tuple[str, str, str]], interval: float) -> list[Created]:
        """Create one at a time, `interval` seconds apart (latency of single objects, not of a burst)."""
        started, done = time.monotonic(), []
        for i, item in enumerate(items):
            time.sleep(max(0.0, started + i * interval - time.monotonic()))
            done.append(self.create_one(item))
        return done


# ---- statistics and the table ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; inf for objects that never got there."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def fmt_s(value: float) -> str:
    return "n/a" if math.isnan(value) else ("never" if math.isinf(value) else f"{value:.2f}s")


@dataclass
class Row:
    metric: str
    value: str
    target: str = ""
    ok: bool | None = None

    def result(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "FAIL")


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.details: list[str] = []
        self.data: dict[str, Any] = {}

    def detail(self, line: str) -> None:
        self.details.append(line)
        print(f"  {line}", flush=True)

    def add(self, metric: str, value: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append(Row(metric, value, target, ok))
        print(f"  {metric}: {value}" + (f"   [{target}: {'PASS' if ok else 'FAIL'}]" if ok is not None else ""),
              flush=True)

    def table(self) -> str:
        widths = [max(len(r.metric) for r in self.rows), max(len(r.value) for r in self.rows),
                  max(len(r.target) for r in self.rows)]
        head = ("metric", "value", "target")
        widths = [max(w, len(h)) for w, h in zip(widths, head)]
        lines = [f"{head[0]:<{widths[0]}}  {head[1]:<{widths[1]}}  {head[2]:<{widths[2]}}  result",
                 "-" * (sum(widths) + 12)]
        lines += [f"{r.metric:<{widths[0]}}  {r.value:<{widths[1]}}  {r.target:<{widths[2]}}  {r.result()}"
                  for r in self.rows]
        return "\n".join(lines)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the benchmark -----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: LocalCluster, operator: Operator, api: Api,
                 tracker: Tracker, audit: AuditLog, namespaces: list[str]) -> None:
        self.args, self.cluster, self.operator, self.api = args, cluster, operator, api
        self.tracker, self.audit, self.namespaces = tracker, audit, namespaces
        self.fleet = Fleet(api, namespaces, args.threads)
        self.api_port = int(cluster.status()["ports"]["apiserver"])  # type: ignore[index]
        self.report = Report()
        self.phase_requests: dict[str, RequestTally] = {}

    # -- helpers

    def sample(self) -> ProcessSample:
        self.operator.check_alive()
        return sample_process(self.operator.pid, self.api_port)

    def tally_phase(self, phase: str) -> None:
        """Every operator request since the last call is booked to `phase` (for the JSON output)."""
        tally = self.phase_requests.setdefault(phase, RequestTally())
        for request in self.audit.drain():
            tally.add(request)

    def wait_idle(self, phase: str, *, quiet: float = 5.0, timeout: float = 300.0) -> float:
        """Wait until the operator made no request but watches for `quiet` seconds (the tail of a burst:
        pods turning Running make jobs Running, each a status write); the seconds it took, inf if never.
        Requests seen meanwhile are booked to `phase`."""
        tally = self.phase_requests.setdefault(phase, RequestTally())
        started, last = time.time(), time.time()
        while time.time() - started < timeout:
            self.operator.check_alive()
            for request in self.audit.drain():
                tally.add(request)
                if request.verb != "watch":
                    last = max(last, request.received)
            if time.time() - last >= quiet:
                return max(0.0, last - started)
            time.sleep(0.5)
        return math.inf

    def wait_converged(self, uids: list[str], what: str) -> tuple[float, int, int]:
        """Wait until each object has a child and a status; (seconds, missing children, missing status).
        Gives up after --converge-timeout; fails when nothing moved for --stall-timeout."""
        started = time.monotonic()
        deadline = started + self.args.converge_timeout
        last_log = last_progress = started
        least = math.inf
        while True:
            no_child, no_status = self.tracker.missing(uids)
            if not no_child and not no_status:
                return time.monotonic() - started, 0, 0
            now = time.monotonic()
            if no_child + no_status < least:
                least, last_progress = no_child + no_status, now
            elif now - last_progress > self.args.stall_timeout:
                raise BenchError(f"{what}: no progress for {self.args.stall_timeout:.0f}s ({no_child} objects without "
                                 f"children, {no_status} without status); operator log tail:\n"
                                 f"{self.operator.log_tail()}")
            if now > deadline:
                log(f"{what}: NOT converged after {self.args.converge_timeout:.0f}s: {no_child} without children, "
                    f"{no_status} without status")
                return now - started, no_child, no_status
            if now - last_log > 30:
                log(f"{what}: waiting: {no_child} without children, {no_status} without status")
                last_log = now
            self.operator.check_alive()
            time.sleep(0.25)

    def wait_operator_watching(self, timeout: float = 90) -> float:
        """Seconds until the operator's first requests on both custom resources show in the audit log."""
        started, seen = time.monotonic(), set()
        while not {"trainingjobs", "modelservices"} <= seen:
            self.operator.check_alive()
            if time.monotonic() - started > timeout:
                raise BenchError(f"the operator made no request on both custom resources within {timeout:.0f}s; "
                                 f"log tail:\n{self.operator.log_tail()}")
            seen |= {r.resource for r in self.audit.drain()}
            time.sleep(0.2)
        return time.monotonic() - started

    # -- phases

    def checkpoint(self, label: str) -> None:
        sample = self.sample()
        self.report.data.setdefault("process", []).append({"objects": self.fleet.total, "label": label,
                                                            **sample.__dict__})
        self.report.add(f"operator at {self.fleet.total} objects", sample.brief())

    def fill_to(self, total: int) -> None:
        tj_target, ms_target = total // 2, total - total // 2
        items = self.fleet.next_names(TJ, max(0, tj_target - self.fleet.counts[TJ])) + \
            self.fleet.next_names(MS, max(0, ms_target - self.fleet.counts[MS]))
        # interleave kinds so both controllers see the burst at the same time
        items.sort(key=lambda item: item[2][3:])
        phase = f"fill to {total}"
        if not items:
            self.report.add(f"creation ({phase})", "nothing to create: the latency samples made them")
        else:
            log(f"{phase}: creating {len(items)} objects with {self.args.threads} threads")
            _, seconds = self.fleet.burst(items)
            rate = len(items) / seconds
            self.report.data.setdefault("creation", []).append({"phase": phase, "objects": len(items),
                                                                 "seconds": round(seconds, 2),
                                                                 "per_second": round(rate, 1)})
            self.report.add(f"creation rate ({phase})", f"{len(items)} objects in {seconds:.1f}s = {rate:.0f}/s")
        seconds, no_child, no_status = self.wait_converged([c.uid for c in self.fleet.created], phase)
        self.report.data.setdefault("convergence", []).append({"phase": phase, "seconds": round(seconds, 1),
                                                                "missing_children": no_child,
                                                                "missing_status": no_status})
        self.report.add(f"convergence after {phase}", f"{seconds:.1f}s" + (
            f" (NOT converged: {no_child} without children, {no_status} without status)" if no_child or no_status
            else ""))
        self.tally_phase(phase)

    def latency_sample(self, label: str, *, present: int) -> None:
        """Paced creation of `--sample` objects of each kind; create -> child and create -> status p50/p99."""
        items = [item for pair in zip(self.fleet.next_names(TJ, self.args.sample),
                                      self.fleet.next_names(MS, self.args.sample)) for item in pair]
        # "With N present" means N settled objects: the tail of the previous fill is reported, not sampled.
        settled = self.wait_idle(f"settle before sample {label}")
        self.report.detail(f"before the sample with {present} present, the operator worked off the previous "
                           f"burst for {fmt_s(settled)} more")
        log(f"sample with {present} objects present: {len(items)} objects, one every {self.args.sample_interval}s")
        created = self.fleet.paced(items, self.args.sample_interval)
        self.wait_converged([c.uid for c in created], f"sample {label}")
        self.tally_phase(f"sample {label}")
        entry: dict[str, Any] = {"present": present}
        for kind in (TJ, MS):
            mine = [c for c in created if c.kind == kind]
            with self.tracker.lock:
                child = [max(0.0, self.tracker.children[c.uid] - c.at) if c.uid in self.tracker.children else math.inf
                         for c in mine]
                status = [max(0.0, self.tracker.status[c.uid] - c.at) if c.uid in self.tracker.status else math.inf
                          for c in mine]
            stats = {"children_p50": percentile(child, 50), "children_p99": percentile(child, 99),
                     "children_max": max(child), "status_p50": percentile(status, 50),
                     "status_p99": percentile(status, 99), "status_max": max(status), "count": len(mine)}
            entry[kind] = stats
            target, ok = "", None
            if label == "2N":
                target, ok = "children p99 <= 2s", stats["children_p99"] <= 2.0
            self.report.add(f"{kind} create->children @{present} present",
                            f"p50 {fmt_s(stats['children_p50'])} p99 {fmt_s(stats['children_p99'])}", target, ok)
            self.report.add(f"{kind} create->status   @{present} present",
                            f"p50 {fmt_s(stats['status_p50'])} p99 {fmt_s(stats['status_p99'])}")
        self.report.data.setdefault("latency", {})[label] = entry

    def steady_state(self) -> None:
        if self.args.settle_seconds:
            log(f"settling {self.args.settle_seconds:.0f}s before the steady-state window")
            time.sleep(self.args.settle_seconds)
        # Steady means settled: kwok may still be starting pods of the last burst (each a first write).
        settled = self.wait_idle("settle")
        self.report.detail(f"before the steady-state window the operator was busy for {fmt_s(settled)} more")
        self.tally_phase("settle")
        objects = self.fleet.total
        log(f"steady-state window: {self.args.steady_seconds:.0f}s with {objects} objects")
        before = self.sample()
        start = time.time()
        tally, pending = RequestTally(), []
        end_at = time.monotonic() + self.args.steady_seconds
        while time.monotonic() < end_at:
            time.sleep(min(5.0, max(0.0, end_at - time.monotonic())))
            self.operator.check_alive()
            pending += self.audit.drain()
        end = time.time()
        after = self.sample()
        time.sleep(2.0)  # requests received before `end` may complete a little after it
        pending += self.audit.drain()
        for request in pending:
            if start <= request.received < end:
                tally.add(request)
        minutes = (end - start) / 60
        per_min = tally.as_json(minutes)
        self.report.data["steady_state"] = {"objects": objects, "seconds": round(end - start, 1),
                                            "per_minute": per_min, "process_start": before.__dict__,
                                            "process_end": after.__dict__}
        verbs = ", ".join(f"{v} {n:g}" for v, n in per_min["by_verb"].items()) or "none"
        writes, gets, lists = per_min["writes"], tally.by_verb["get"] / minutes, tally.by_verb["list"] / minutes
        self.report.add("steady requests/min by verb", verbs)
        self.report.add("steady reads/min (get+list+watch)", f"{per_min['reads']:g} ({objects} objects)")
        self.report.add("steady writes/min", f"{writes:g}", "0", writes == 0)
        # A per-object periodic read shows as GETs (or LISTs not belonging to a watch's list+watch cycle)
        # growing with the objects; allow 1 GET per object per 100 minutes and one LIST per watch (re)start.
        get_budget = objects / 100
        list_ok = tally.by_verb["list"] <= tally.watch_starts + 2
        self.report.add("steady per-object reads", f"GET {gets:.1f}/min, LIST {lists:.1f}/min, "
                        f"watch starts {tally.watch_starts / minutes:.1f}/min",
                        f"GET<={get_budget:g}/min, LIST<=watches", gets <= get_budget and list_ok)
        top = ", ".join(f"{k} {v:g}" for k, v in list(per_min["by_verb_resource"].items())[:8])
        self.report.detail(f"steady state, top operator requests/min: {top or 'none'}")
        self.report.detail(f"steady state, operator requests/min by user agent: {per_min['by_user_agent']}")
        kinds = ", ".join(f"{k} {before.fd_kinds.get(k, 0)}->{n}" for k, n in after.fd_kinds.items())
        self.report.add("model-check pressure: fds", f"{before.fds} -> {after.fds} over {end - start:.0f}s "
                        f"(API conns {before.api_connections} -> {after.api_connections})")
        self.report.detail(f"steady state, operator fds by kind: {kinds}")
        self.report.add("model-check pressure: RSS", f"{before.rss_mb:.0f} -> {after.rss_mb:.0f} MB "
                        f"(threads {before.threads} -> {after.threads})")
        self.report.add("steady operator CPU", f"{(after.cpu_s - before.cpu_s) / minutes:.1f} CPU-s/min")

    def restart(self) -> None:
        log("restart: kill -9 the operator, start it again, wait for it to go idle")
        before = self.sample()
        self.operator.kill(signal.SIGKILL)
        time.sleep(0.5)
        self.tally_phase("before restart")
        started_wall, started = time.time(), time.monotonic()
        self.operator.start()
        tally, last_request, deadline = RequestTally(), None, started + self.args.restart_timeout
        while True:
            self.operator.check_alive()
            for request in self.audit.drain():
                if request.received < started_wall:
                    continue
                tally.add(request)
                if request.verb != "watch":
                    last_request = max(last_request or 0.0, request.received)
            now = time.time()
            idle = last_request is not None and now - last_request >= IDLE_SECONDS
            if idle or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        after = self.sample()
        went_idle = (last_request - started_wall) if idle and last_request else math.inf
        self.report.data["restart"] = {"idle_after_s": went_idle, "idle_definition_s": IDLE_SECONDS,
                                       "timeout_s": self.args.restart_timeout, "requests": tally.as_json(),
                                       "rss_before_kill_mb": before.rss_mb, "peak_rss_mb": after.peak_rss_mb,
                                       "rss_after_mb": after.rss_mb}
        self.report.add("restart: time until idle", (f"{went_idle:.1f}s" if idle else
                        f"not idle within {self.args.restart_timeout:.0f}s") + f" ({tally.reads} reads)")
        self.report.add("restart: writes until idle", str(tally.writes), "0", tally.writes == 0)
        # The grown operator is the yardstick: a restart lists everything at once, and CPython keeps its peak.
        self.report.add("restart: RSS before kill / peak / idle",
                        f"{before.rss_mb:.0f} / {after.peak_rss_mb:.0f} / {after.rss_mb:.0f} MB",
                        "idle <= 1.3x before", after.rss_mb <= 1.3 * before.rss_mb)
        self.report.detail(f"restart: the killed operator had peaked at {before.peak_rss_mb:.0f} MB while it grew")
        writes = [f"{k} {v}" for k, v in tally.by_verb_resource.most_common() if k.split()[0] in WRITE_VERBS]
        self.report.detail(f"restart, operator writes: {', '.join(writes) or 'none'}")

    def completions(self) -> None:
        running = self.tracker.running_jobs()[: self.args.complete]
        if not running:
            self.report.add("completions", "no running training pod to finish")
            return
        log(f"completions: annotating {len(running)} worker pods with {EXIT_ANNOTATION}=0")
        body = {"metadata": {"annotations": {EXIT_ANNOTATION: "0"}}}
        started = time.monotonic()

        def finish(item: tuple[str, str, str]) -> None:
            _, namespace, pod = item
            for attempt in range(5):
                try:
                    self.api.core.patch_namespaced_pod(pod, namespace, body)
                    return
                except (ApiException, urllib3.exceptions.HTTPError):
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * 2 ** attempt)

        with ThreadPoolExecutor(self.args.threads) as pool:
            list(pool.map(finish, running))
        annotated = time.monotonic() - started
        uids = [uid for uid, _, _ in running]
        deadline = started + self.args.complete_timeout
        while time.monotonic() < deadline:
            with self.tracker.lock:
                if all(uid in self.tracker.succeeded_at for uid in uids):
                    break
            self.operator.check_alive()
            time.sleep(0.1)
        with self.tracker.lock:
            jobs = [self.tracker.succeeded_at.get(uid, math.inf) - started for uid in uids]
            pods = [self.tracker.pod_succeeded_at.get(uid, math.inf) - started for uid in uids]
            lags = [max(0.0, self.tracker.succeeded_at.get(uid, math.inf) - self.tracker.pod_succeeded_at[uid])
                    if uid in self.tracker.pod_succeeded_at else math.inf for uid in uids]
        self.report.data["completions"] = {
            "jobs": len(uids), "annotate_s": round(annotated, 2), "all_pods_succeeded_s": max(pods),
            "all_jobs_succeeded_s": max(jobs), "lag_p50_s": percentile(lags, 50), "lag_p99_s": percentile(lags, 99),
            "lag_max_s": max(lags), "jobs_not_succeeded": sum(math.isinf(j) for j in jobs)}
        self.report.add(f"{len(uids)} completions: all jobs Succeeded",
                        f"{fmt_s(max(jobs))} after the first annotation (pods: {fmt_s(max(pods))})", "<= 10s",
                        max(jobs) <= 10.0)
        self.report.detail(f"completions: annotating {len(uids)} pods took {annotated:.1f}s; kwok had them all "
                           f"Succeeded {fmt_s(max(pods))} after the first annotation")
        self.report.add(f"{len(uids)} completions: pod->job lag",
                        f"p50 {fmt_s(percentile(lags, 50))} p99 {fmt_s(percentile(lags, 99))} max {fmt_s(max(lags))}")

    def run(self) -> None:
        n = self.args.n
        log(f"operator watching after {self.wait_operator_watching():.1f}s")
        time.sleep(3.0)
        self.tally_phase("start")
        self.checkpoint("0")
        self.latency_sample("0", present=0)
        for target in (n // 2, n, 2 * n):
            self.fill_to(target)
            self.checkpoint(f"{target}")
            if target == 2 * n:
                process = self.report.data["process"][-1]
                self.report.add(f"RSS at {self.fleet.total} objects", f"{process['rss_mb']:.0f} MB",
                                "<= 150 MB at 1000+1000", process["rss_mb"] <= 150)
            if target in (n, 2 * n):
                present = self.fleet.total
                self.latency_sample("N" if target == n else "2N", present=present)
        self.steady_state()
        self.restart()
        self.completions()
        self.tally_phase("end")
        self.report.data["requests_by_phase"] = {k: v.as_json() for k, v in self.phase_requests.items()}


def wait_for_default_service_accounts(cluster: LocalCluster, namespaces: list[str], timeout: float = 60) -> None:
    """Pods cannot be created in a namespace before its default ServiceAccount exists."""
    deadline = time.monotonic() + timeout
    for namespace in namespaces:
        while cluster.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False).returncode:
            if time.monotonic() > deadline:
                raise BenchError(f"namespace {namespace} never got its default ServiceAccount")
            time.sleep(0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=1000,
                        help="TrainingJobs and ModelServices each at the end (2N objects); checkpoints 0, N/2, N, 2N")
    parser.add_argument("--steady-seconds", type=float, default=300, help="the steady-state window")
    parser.add_argument("--sample", type=int, default=50, help="objects of each kind per latency sample")
    parser.add_argument("--sample-interval", type=float, default=0.1, help="seconds between sample creations")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="concurrent creations")
    parser.add_argument("--complete", type=int, default=200, help="training pods finished at once")
    parser.add_argument("--cluster-wide", action="store_true", help="run the operator for all namespaces")
    parser.add_argument("--operator-args", default="", help="extra arguments for `modelops run` (one string)")
    parser.add_argument("--operator-repo", type=Path, default=REPO,
                        help="run the operator and apply the CRDs from this checkout, e.g. one made with "
                             "`git worktree add /tmp/before <commit>`, to compare two versions")
    parser.add_argument("--settle-seconds", type=float, default=30, help="wait after convergence, before the window")
    parser.add_argument("--converge-timeout", type=float, default=900, help="per phase; then go on regardless")
    parser.add_argument("--stall-timeout", type=float, default=300,
                        help="fail when no object got its children or status for this long")
    parser.add_argument("--restart-timeout", type=float,
                        help="give up waiting for idle after a restart (default: 2 x steady window, 60..300 s)")
    parser.add_argument("--complete-timeout", type=float, default=120)
    parser.add_argument("--workdir", type=Path, help="where the cluster lives (default: a new temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.operator_repo = args.operator_repo.resolve()
    if not (args.operator_repo / "operator" / "modelops").is_dir():
        parser.error(f"--operator-repo {args.operator_repo}: no operator/modelops package there")
    if args.n < 2 or args.sample < 1:
        parser.error("--n must be >= 2 and --sample >= 1")
    if args.restart_timeout is None:
        args.restart_timeout = min(300.0, max(60.0, 2 * args.steady_seconds))
    return args


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None if math.isnan(value) else "never"
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM ends the bench through the finally blocks below, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    pods_per_node = max(2000, args.n + 4 * args.sample)
    cluster = LocalCluster(root, build_tools(REPO), nodes=[NodeSpec(f"cpu-{i}", pods=str(pods_per_node)) for i in range(4)],
                           audit_log=True)
    namespaces = [f"scale-{i}" for i in range(args.namespaces)]
    operator: Operator | None = None
    tracker: Tracker | None = None
    bench: Bench | None = None
    error: BaseException | None = None
    if not args.keep:
        atexit.register(cluster.down)
    try:
        log(f"cluster in {root}")
        log(f"cluster up in {cluster.up(die_with_parent=not args.keep):.1f}s")
        cluster.kubectl("apply", "--server-side", "-f", str(args.operator_repo / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        for namespace in namespaces:
            cluster.kubectl("create", "namespace", namespace)
        wait_for_default_service_accounts(cluster, namespaces)
        api = Api(cluster.kubeconfig)
        tracker = Tracker(api)
        tracker.start()
        audit = AuditLog(cluster.audit_log_path, OPERATOR_USER)
        audit.drain()  # skip the cluster's start-up
        operator = Operator(operator_kubeconfig(cluster, root / "operator.kubeconfig"),
                            [] if args.cluster_wide else namespaces, root / "logs" / "operator.log",
                            shlex.split(args.operator_args), args.operator_repo)
        operator.start()
        bench = Bench(args, cluster, operator, api, tracker, audit, namespaces)
        bench.run()
    except BaseException as exc:  # noqa: BLE001 - report what was measured, then re-raise
        error = exc
    finally:
        if operator is not None:
            if error is not None and not isinstance(error, (BenchError, KeyboardInterrupt, SystemExit)):
                print(f"--- operator log tail ({operator.log_path}) ---\n{operator.log_tail(40)}", flush=True)
            operator.kill(signal.SIGTERM)
        if tracker is not None:
            tracker.close()
        if args.keep:
            log(f"cluster left running: export KUBECONFIG={cluster.kubeconfig}; "
                f"stop it with: .venv/bin/python -m modelops dev cluster down --dir {root}")
        else:
            cluster.down()
            if not args.workdir:
                shutil.rmtree(root, ignore_errors=True)
    if bench is not None and bench.report.rows:
        header = (f"modelops scale benchmark: N={args.n} ({args.n} TrainingJobs + {args.n} ModelServices, plus "
                  f"latency samples of {args.sample} each), {len(namespaces)} namespaces, "
                  f"{'cluster-wide' if args.cluster_wide else 'namespaced'} operator, steady window "
                  f"{args.steady_seconds:.0f}s")
        print("\n" + header + "\n" + bench.report.table(), flush=True)
        for line in bench.report.details:
            print(f"- {line}")
        if args.n != 1000:
            print(f"note: targets are defined for N=1000; this run used N={args.n}")
        if args.out:
            bench.report.data["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
            bench.report.data["table"] = [row.__dict__ | {"result": row.result()} for row in bench.report.rows]
            bench.report.data["error"] = None if error is None else repr(error)
            args.out.write_text(json.dumps(_json_safe(bench.report.data), indent=2))
            print(f"results written to {args.out}")
    if error is not None:
        if isinstance(error, BenchError):
            print(f"bench failed: {error}", file=sys.stderr)
            return 1
        raise error
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
