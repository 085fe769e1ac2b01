"""Benchmark: M small models served (a) by one dedicated ModelService each and (b) as pooled ModelServices in
one ModelPool, in one run on the local cluster, under the same skewed traffic with a moving hot set.

Everything is real: the local cluster (.cluster/ of this checkout) with kube-proxy, the operator, the kubelet
stand-in running tritonserver pods (the nvidia-pytriton wheel's, python backend), requests through each
ModelService's Service ClusterIP. The M models are the sample digits CNN of model_repo/ with each copy's weights
scaled (every model is its own, bench_pool_triton.publish).

Traffic (the same schedule for (a) and (b)): `--hot` models get `--hot-rate` req/s each, the other models share
`--cold-rate` req/s (random pick), and the hot set moves to the next of `--groups` sets of `--hot` models every
`--seconds / --phases` (cycling, so a model that cooled comes back hot).
Open loop: each request on a new connection (kube-proxy balances connections), sent on schedule whatever the
previous answer did, 10 s timeout. A request counts against the "ready copy" column when the model's Service
listed a ready endpoint (its EndpointSlices, polled every 0.5 s) when it was sent, else "zero copies".

Reported per arm: server pods; memory of every Triton process tree (tritonserver and its python-backend stubs)
as PSS (shared library pages split between the processes sharing them: the honest sum) and RSS (each process
counted whole), sampled after the traffic; CPU of the operator and of the servers during the traffic (share of
one core); p50/p99 latency of the requests to the hot models; requests failed (by cause). For (b) also the
loads Triton logged on the pool servers (its own "loading" -> "successfully loaded" timestamps, so request ->
ready on the server), split into first loads and reloads of a model loaded before in the pool (a copy that was
unloaded as surplus or evicted and comes back), and the pool's load/unload/eviction totals.

(a) runs at replicas 1 with no autoscaling (the dedicated baseline the issue names: minReplicas 1 each); (b) uses
autoscaling minReplicas 1, maxReplicas `--max-copies` on inferenceRatePerReplica (target half the hot rate), so
a hot model gets a second copy and loses it when it cools. (a) runs first and is deleted before (b): both arms
never share the machine's 2 cores or its memory.

Run (under the shared e2e lock; needs root: pods run in network and mount namespaces):
  flock /tmp/modelops-e2e.lock .venv/bin/python e2e/bench/bench_pool.py --models 24 --per-server 8 --seconds 180 --json .work/pool.json
Smoke:
  flock /tmp/modelops-e2e.lock .venv/bin/python e2e/bench/bench_pool.py --models 3 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "e2e"), str(REPO / "tests"), str(REPO / "e2e" / "bench"), str(REPO / "operator")]

from bench_pool_triton import SAMPLE, publish  # noqa: E402
from kubelet import ProcessKubelet  # noqa: E402
from lifecycle import Space  # noqa: E402
from support import OperatorProcess, eventually  # noqa: E402

from modelops.dev.cluster import LocalCluster, build_tools  # noqa: E402

NAMESPACE = "bench-pool"
API = "modelops.dev/v1alpha1"
POOL = "shared"
MB = 1 << 20
BODY = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1, 1, 8, 8], "datatype": "FP32",
                               "data": [0.5] * 64}]}).encode()


# ---------------------------------------------------------------------------------------------- processes

def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def _descendants(children: dict[int, list[int]], root: int) -> list[int]:
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def triton_trees() -> dict[int, list[int]]:
    """tritonserver pid -> it and its descendants (the python-backend stubs), for the tritonservers this bench
    started (its kubelet stand-in's pods): others on a shared machine are not counted."""
    children = _proc_children()
    trees = {}
    for pid in _descendants(children, os.getpid()):
        try:
            exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if exe.endswith(b"/tritonserver") or exe == b"tritonserver":
            trees[pid] = _descendants(children, pid)
    return trees


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def server_cpu() -> dict[int, float]:
    return {pid: cpu_seconds(pid) for tree in triton_trees().values() for pid in tree}


def memory() -> dict[str, float]:
    """Sum over every Triton process tree: PSS and RSS (MiB), and the number of trees and stubs."""
    pss = rss = 0
    trees = triton_trees()
    for tree in trees.values():
        for pid in tree:
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            pss += int(re.search(r"^Pss:\s+(\d+) kB", text, re.M).group(1)) * 1024  # type: ignore[union-attr]
            rss += int(re.search(r"^Rss:\s+(\d+) kB", text, re.M).group(1)) * 1024  # type: ignore[union-attr]
    return {"pss_mib": pss / MB, "rss_mib": rss / MB, "servers": len(trees),
            "stubs": sum(len(t) - 1 for t in trees.values())}


# ------------------------------------------------------------------------------------------------ traffic

@dataclass
class Result:
    sent: float
    model: str
    hot: bool
    ready: bool
    """The model's Service listed a ready endpoint when the request was sent."""
    latency: float
    error: str = ""


@dataclass
class Routing:
    """Polls the namespace's EndpointSlices: which Services list a ready endpoint now."""

    space: Space
    ready: dict[str, bool] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        from kubernetes import client, config

        api = client.DiscoveryV1Api(config.new_client_from_config(config_file=str(self.space.cluster.kubeconfig)))
        while not self.stop.is_set():
            try:
                slices = api.list_namespaced_endpoint_slice(self.space.namespace).items
                ready: dict[str, bool] = {}
                for s in slices:
                    service = (s.metadata.labels or {}).get("kubernetes.io/service-name", "")
                    ok = any(e.conditions is None or e.conditions.ready is not False for e in s.endpoints or [])
                    ready[service] = ready.get(service, False) or ok
                self.ready = ready
            except Exception:  # noqa: BLE001 - the API server busy for a moment: keep the last picture
                pass
            self.stop.wait(0.5)


async def _request(address: str, model: str) -> str:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
    status, body = reply[9:12], reply.split(b"\r\n\r\n", 1)[-1]
    return "" if status == b"200" else f"HTTP {status.decode(errors='replace')}: {body[:120].decode(errors='replace')}"


def schedule(models: list[str], seconds: float, phases: int, groups: int, hot: int, hot_rate: float,
             cold_rate: float, seed: int) -> list[tuple[float, str, bool]]:
    """(time, model, hot) of every request: Poisson arrivals; the hot set moves each phase to the next of
    `groups` sets of `hot` models, and back to the first (so that a model comes back hot after cooling)."""
    rng = random.Random(seed)
    events = []
    length = seconds / phases
    for phase in range(phases):
        hot_set = [models[((phase % groups) * hot + i) % len(models)] for i in range(hot)]
        cold = [m for m in models if m not in hot_set]
        start, end = phase * length, (phase + 1) * length
        for model in hot_set:
            t = start + rng.expovariate(hot_rate)
            while t < end:
                events.append((t, model, True))
                t += rng.expovariate(hot_rate)
        if cold and cold_rate > 0:
            t = start + rng.expovariate(cold_rate)
            while t < end:
                events.append((t, rng.choice(cold), False))
                t += rng.expovariate(cold_rate)
    return sorted(events)


async def _drive(events: list[tuple[float, str, bool]], addresses: dict[str, str], routing: Routing) -> list[Result]:
    results: list[Result] = []
    start = time.monotonic()

    async def one(model: str, hot: bool) -> None:
        ready = routing.ready.get(model, False)
        sent = time.monotonic()
        try:
            error = await asyncio.wait_for(_request(addresses[model], model), 10)
        except Exception as failure:  # noqa: BLE001 - every failure counts, by kind
            error = f"{type(failure).__name__}: {failure}"[:120]
        results.append(Result(sent - start, model, hot, ready, time.monotonic() - sent, error))

    tasks = []
    for t, model, hot in events:
        delay = start + t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(model, hot)))
    await asyncio.gather(*tasks)
    return results


# ------------------------------------------------------------------------------------------------- the arms

def model_service(name: str, repository: Path, signature: dict[str, Any], pooled: dict[str, Any] | None
                  ) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": name, "version": 1, "signature": signature},
                            "repository": {"hostPath": {"path": str(repository)}},
                            "triton": {"backend": "python"}}
    if pooled is None:
        spec |= {"replicas": 1}
    else:
        spec |= {"pool": POOL, "resources": {"memory": "320Mi"}, "autoscaling": pooled}
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name}, "spec": spec}


def model_pool(repository: Path, servers: int, max_servers: int, per_server: int) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelPool", "metadata": {"name": POOL},
            "spec": {"repository": {"hostPath": {"path": str(repository)}},
                     "resources": {"cpu": "2", "memory": f"{per_server * 400 + 1024}Mi"},
                     "capacity": f"{per_server * 320}Mi", "overcommit": 0.1,
                     "minServers": servers, "maxServers": max_servers}}


def all_ready(space: Space, models: list[str]) -> bool:
    items = {m["metadata"]["name"]: m for m in space.get("ms").get("items", [])}
    return all(any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (items.get(name, {}).get("status") or {}).get("conditions", [])) for name in models)


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def run_arm(label: str, space: Space, operator: OperatorProcess, models: list[str],
            events: list[tuple[float, str, bool]], setup: Callable[[], None], log: Callable[[str], None],
            ready_timeout: float) -> dict[str, Any]:
    assert operator.process is not None
    op_pid = operator.process.pid
    op0, started = cpu_seconds(op_pid), time.monotonic()
    setup()
    eventually(lambda: all_ready(space, models), ready_timeout, f"({label}) every ModelService Ready", interval=2)
    setup_s = time.monotonic() - started
    log(f"  ({label}) all {len(models)} ModelServices Ready in {setup_s:.0f}s")
    time.sleep(5)  # kube-proxy follows the last EndpointSlices
    addresses = {m: f"{space.get('service', m)['spec']['clusterIP']}:8000" for m in models}
    routing = Routing(space)
    poller = threading.Thread(target=routing.poll, daemon=True)
    poller.start()
    time.sleep(1)
    servers0, op1, wall0, began = server_cpu(), cpu_seconds(op_pid), time.monotonic(), time.time()
    results = asyncio.run(_drive(events, addresses, routing))
    servers1, op2, wall = server_cpu(), cpu_seconds(op_pid), time.monotonic() - wall0
    routing.stop.set()
    mem = memory()
    pods = [p for p in space.get("pods").get("items", []) if p["status"].get("phase") == "Running"]
    server_s = sum(v - servers0.get(pid, 0.0) for pid, v in servers1.items())
    hot = [r.latency * 1000 for r in results if r.hot and not r.error]
    failed_ready = [r for r in results if r.error and r.ready]
    failed_zero = [r for r in results if r.error and not r.ready]
    errors: dict[str, int] = {}
    for r in failed_ready + failed_zero:
        errors[r.error[:80]] = errors.get(r.error[:80], 0) + 1
    return {"label": label, "server_pods": len(pods), "ready_seconds": setup_s, **mem,
            "operator_cpu": (op2 - op1) / wall, "operator_cpu_setup": (op1 - op0) / setup_s,
            "server_cpu": server_s / wall, "requests": len(results),
            "hot_requests": sum(r.hot for r in results), "hot_p50_ms": quantile(hot, 0.5),
            "hot_p99_ms": quantile(hot, 0.99), "all_p99_ms": quantile([r.latency * 1000 for r in results
                                                                        if not r.error], 0.99),
            "failed_ready": len(failed_ready), "failed_zero_copies": len(failed_zero),
            "sent_at_zero_copies": sum(not r.ready for r in results), "errors": errors,
            "failures": [{"t": round(r.sent, 2), "model": r.model, "hot": r.hot, "ready": r.ready,
                          "latency_s": round(r.latency, 2), "error": r.error[:80]}
                         for r in (failed_ready + failed_zero)[:50]],
            "traffic_started": time.strftime("%H:%M:%S", time.gmtime(began))}


LOAD_LINE = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d+) .*?(loading: |successfully loaded )['\"]?(\w+)")


def triton_loads(pods_dir: Path) -> dict[str, Any]:
    """Load times from the pool servers' Triton logs: "loading: m:1" -> "successfully loaded 'm'" per server;
    a load of a model already loaded before in the pool (on any server) is a reload."""
    loads: list[tuple[datetime, str, str, float]] = []
    for path in sorted(pods_dir.glob(f"*{POOL}-s*/*.log")):
        pending: dict[str, datetime] = {}
        for line in path.read_text(errors="replace").splitlines():
            match = LOAD_LINE.search(line)
            if not match:
                continue
            when = datetime.strptime(f"2026{match.group(1)} {match.group(2)[:15]}", "%Y%m%d %H:%M:%S.%f")
            if match.group(3).startswith("loading"):
                pending[match.group(4)] = when
            elif match.group(4) in pending:
                began = pending.pop(match.group(4))
                loads.append((began, path.parent.name, match.group(4), (when - began).total_seconds()))
    seen: set[str] = set()
    first, again = [], []
    for began, _, model, seconds in sorted(loads):
        (again if model in seen else first).append(seconds)
        seen.add(model)
    return {"loads": len(loads), "first_p50_s": quantile(first, 0.5), "first_p99_s": quantile(first, 0.99),
            "reloads": len(again), "reload_p50_s": quantile(again, 0.5), "reload_p99_s": quantile(again, 0.99)}


# --------------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=12, help="M (default 12)")
    parser.add_argument("--seconds", type=float, default=120.0, help="traffic per arm (default 120)")
    parser.add_argument("--phases", type=int, default=6, help="times the hot set is chosen (default 6)")
    parser.add_argument("--groups", type=int, default=3, help="hot sets the phases cycle through (default 3)")
    parser.add_argument("--hot", type=int, default=0, help="hot models at a time (default max(1, M/5))")
    parser.add_argument("--hot-rate", type=float, default=10.0, help="req/s to each hot model (default 10)")
    parser.add_argument("--cold-rate", type=float, default=2.0, help="req/s over all cold models (default 2)")
    parser.add_argument("--per-server", type=int, default=6, help="models per pool server (capacity)")
    parser.add_argument("--max-copies", type=int, default=2, help="a pooled model's maxReplicas (copies)")
    parser.add_argument("--arms", default="dedicated,pool", help="which arms, in order")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=REPO / ".work" / "bench-pool")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_pool needs root: pods run in network and mount namespaces", file=sys.stderr)
        return 2
    hot = args.hot or max(1, round(args.models / 5))
    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"publishing {args.models} models into {work / 'models'}", flush=True)
    models = publish(work / "models", args.models)
    signature = {k: v for k, v in json.loads((SAMPLE / "metadata.json").read_text())["signature"].items()
                 if k in ("inputs", "outputs")}
    events = schedule(models, args.seconds, args.phases, args.groups, hot, args.hot_rate, args.cold_rate, args.seed)
    log = lambda text: print(text, flush=True)  # noqa: E731

    cluster = LocalCluster(REPO / ".cluster", build_tools(REPO))
    ours = not cluster.running()
    if ours:
        log(f"starting the local cluster ({cluster.root})")
        cluster.up(kube_proxy=True)
    elif cluster.status().get("components", {}).get("kube-proxy") != "running":
        cluster.start_kube_proxy()
    space = Space(cluster, NAMESPACE)
    results: list[dict[str, Any]] = []
    info = {"models": args.models, "hot": hot, "seconds": args.seconds, "phases": args.phases, "groups": args.groups,
            "hot_rate": args.hot_rate, "cold_rate": args.cold_rate, "per_server": args.per_server,
            "requests_per_arm": len(events), "cores": len(os.sched_getaffinity(0)),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=180s")
        cluster.kubectl("create", "namespace", NAMESPACE)
        eventually(lambda: cluster.kubectl("-n", NAMESPACE, "get", "sa", "default", check=False).returncode == 0,
                   30, "the namespace's default ServiceAccount", interval=0.2)
        with ExitStack() as stack:
            stack.enter_context(ProcessKubelet(cluster.kubeconfig, work / "kubelet", namespaces=(NAMESPACE,)))
            operator = OperatorProcess(cluster.kubeconfig, NAMESPACE, work / "operator.log")
            operator.start()
            stack.callback(operator.stop)
            ready_timeout = 120 + 30 * args.models
            for arm in args.arms.split(","):
                log(f"==> ({arm}) {args.models} models, {len(events)} requests over {args.seconds:g}s, "
                    f"{hot} hot at a time")
                if arm == "dedicated":
                    setup = lambda: space.apply(*(model_service(m, work / "models", signature, None)  # noqa: E731
                                                  for m in models))
                else:
                    servers = math.ceil(args.models / args.per_server)
                    scaling = {"minReplicas": 1, "maxReplicas": args.max_copies, "metric": "inferenceRatePerReplica",
                               "target": args.hot_rate / 2, "scaleUp": {"periodSeconds": 5},
                               "scaleDown": {"stabilizationWindowSeconds": 10, "periodSeconds": 5}}
                    setup = lambda: space.apply(  # noqa: E731
                        model_pool(work / "models", servers, servers + 1, args.per_server),
                        *(model_service(m, work / "models", signature, scaling) for m in models))
                result = run_arm(arm, space, operator, models, events, setup, log, ready_timeout)
                if arm == "pool":
                    pool = space.get("mp", POOL).get("status") or {}
                    result["pool_totals"] = pool.get("totals")
                    result["pool_servers"] = [{"name": s["name"], "models": len(s.get("models") or []),
                                               "bytes_used_mib": s.get("bytesUsed", 0) / MB}
                                              for s in pool.get("servers") or []]
                    result["triton_loads"] = triton_loads(work / "kubelet" / "pods")
                results.append(result)
                log(json.dumps(result, indent=1, default=str))
                space.kubectl("delete", "ms", "--all", "--wait=true", "--timeout=300s")
                space.kubectl("delete", "mp", "--all", "--wait=true", "--timeout=300s", check=False)
                eventually(lambda: not space.get("pods").get("items"), 300, "the arm's pods to go", interval=2)
    finally:
        if ours:
            cluster.down()
    report(info, results, log)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "arms": results}, indent=1, default=str))
    return 0


def report(info: dict[str, Any], results: list[dict[str, Any]], log: Callable[[str], None]) -> None:
    log(f"\nM={info['models']} models, {info['hot']} hot at a time at {info['hot_rate']:g} req/s each, cold "
        f"{info['cold_rate']:g} req/s in all, hot set moved {info['phases'] - 1}x (through {info['groups']} sets) in {info['seconds']:g}s, "
        f"{info['requests_per_arm']} requests per arm, {info['cores']} cores")
    rows = (("server pods", "server_pods", "{:.0f}"), ("python-backend stubs", "stubs", "{:.0f}"),
            ("memory PSS MiB", "pss_mib", "{:.0f}"), ("memory RSS MiB", "rss_mib", "{:.0f}"),
            ("operator CPU (cores, traffic)", "operator_cpu", "{:.3f}"),
            ("server CPU (cores, traffic)", "server_cpu", "{:.3f}"),
            ("hot p50 ms", "hot_p50_ms", "{:.1f}"), ("hot p99 ms", "hot_p99_ms", "{:.1f}"),
            ("failed, model had a ready copy", "failed_ready", "{:.0f}"),
            ("failed, model at zero copies", "failed_zero_copies", "{:.0f}"),
            ("seconds to all Ready", "ready_seconds", "{:.0f}"))
    labels = [r["label"] for r in results]
    log(f"{'':36}" + "".join(f"{label:>12}" for label in labels) + ("    (a)/(b)" if len(results) == 2 else ""))
    for name, key, fmt in rows:
        values = [r.get(key) for r in results]
        ratio = ""
        if len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[1]:
            ratio = f"{values[0] / values[1]:>11.2f}"
        log(f"{name:36}" + "".join(f"{fmt.format(v):>12}" for v in values) + ratio)
    for r in results:
        if r.get("triton_loads"):
            t = r["triton_loads"]
            log(f"pool loads (Triton log, request -> ready on the server): {t['loads']} in all; first loads p50 "
                f"{t['first_p50_s']:.2f}s p99 {t['first_p99_s']:.2f}s; reloads {t['reloads']}: p50 "
                f"{t['reload_p50_s']:.2f}s p99 {t['reload_p99_s']:.2f}s; pool totals {r.get('pool_totals')}")
        if r["errors"]:
            log(f"({r['label']}) errors: {r['errors']}")


if __name__ == "__main__":
    raise SystemExit(main())
