"""Quick measurement: what N resident models cost one pool server, and how long loads, unloads and reloads take.

One tritonserver (the nvidia-pytriton wheel's, python backend: the only backend that build has, so the
libtorch backend's figures cannot be taken here) in explicit model-control mode, started with no model over
a repository of N published versions (the sample digits CNN of model_repo/, each copy's weights scaled so
every model is its own), driven by the operator's pool client (modelops.triton.pool_client) with the config
and runtime the operator sends. For each model in turn: load (request -> READY, the call's wall time), the
bytes the client measured, the first inference; then, with all N resident, each stub process's memory from
/proc (RSS, PSS, anonymous, shared file pages) and the Triton process's; then each model unloaded (wall
time, bytes given back) and loaded again (reload: request -> READY, and -> first answered inference).
Prints a table (p50 and max of each time; with small N, max is the p99) and, with --json, the raw numbers.

What the libtorch backend would change, by proxy: it runs every model inside Triton's one process, so a
resident model costs what torch.jit.load and a first forward add to a process that already has torch. The
bench measures exactly that in a child Python process (same torch, same N models, anonymous memory before
and after each), which is the libtorch backend's per-model figure up to Triton's own bookkeeping; the
process-wide cost (torch itself) is then paid once per server instead of once per model.

Run:   flock /tmp/modelops-e2e.lock .venv/bin/python e2e/bench/bench_pool_triton.py --models 8
(N is limited by memory: each resident python-backend model holds about 300 MB of its own, see the output.)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from modelops.triton.pool import ModelToLoad, load_config  # noqa: E402
from modelops.triton.pool_client import TritonPoolClient  # noqa: E402
from modelops.triton.server import TritonServer  # noqa: E402

SAMPLE = ROOT / "model_repo" / "digits" / "1"
MB = 1 << 20


def publish(repository: Path, count: int) -> list[str]:
    import torch

    names = []
    for index in range(count):
        name = f"m{index:03d}"
        folder = repository / name / "1"
        shutil.copytree(SAMPLE, folder)
        module = torch.jit.load(str(SAMPLE / "model.pt"))
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.mul_(1.0 + index / 100)
        torch.jit.save(module, str(folder / "model.pt"))
        names.append(name)
    return names


def to_load(repository: Path, name: str, signature: dict[str, Any], cpu: float) -> ModelToLoad:
    config = load_config(name, 1, {"backend": "python"}, cpu, signature=signature)
    config["parameters"]["VERSION_DIRECTORY"]["string_value"] = str(repository / name / "1")  # not the pod's mount
    return ModelToLoad(name, 1, "python", config)


def infer(server: TritonServer, name: str) -> float:
    body = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": [0.5] * 64}]}).encode()
    start = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(f"http://{server.http_url}/v2/models/{name}/infer", data=body),
                                timeout=60) as response:
        response.read()
    return time.perf_counter() - start


def smaps(pid: int) -> dict[str, int]:
    """RSS, PSS, anonymous and shared (clean) bytes of a process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[key] = int(rest.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "anonymous": fields["Anonymous"],
            "shared": fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)}


def stub_pids(server: TritonServer) -> list[int]:
    assert server._process is not None
    parent = server._process.pid
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if re.search(rf"^PPid:\s+{parent}$", (entry / "status").read_text(), re.M) and \
                    b"triton_python_backend_stub" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


INPROCESS = """
import json, re, sys, torch
torch.set_num_threads(1)
def anonymous():
    status = open("/proc/self/status").read()
    return sum(int(v) for v in re.findall(r"^(?:RssAnon|RssShmem):\\s+(\\d+) kB", status, re.M)) * 1024
steps = [anonymous()]
modules = []
for path in sys.argv[1:]:
    module = torch.jit.load(path).eval()
    with torch.inference_mode():
        module(torch.zeros(1, 1, 8, 8))
    modules.append(module)
    steps.append(anonymous())
print(json.dumps(steps))
"""


def in_process(paths: list[Path]) -> list[int]:
    """Anonymous bytes of one Python process with torch imported, then after each model is loaded and run."""
    import subprocess

    run = subprocess.run([sys.executable, "-c", INPROCESS, *map(str, paths)], capture_output=True, text=True,
                         timeout=600, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(run.stdout.strip().splitlines()[-1])


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):6.2f}  max {max(values):6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--cpu", type=float, default=2.0, help="the pool server's CPU limit (torch threads)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    try:
        names = publish(work / "repository", args.models)
        signature = json.loads((SAMPLE / "metadata.json").read_text())["signature"]
        with TritonServer(work / "repository", env={"OMP_NUM_THREADS": "1"}) as server:
            client = TritonPoolClient(f"http://{server.http_url}", metrics_url=server.metrics_url, timeout=300)
            empty = smaps(server._process.pid)  # type: ignore[union-attr]
            results: dict[str, Any] = {"models": args.models, "load_s": [], "measured_bytes": [], "first_infer_s": [],
                                       "unload_s": [], "given_back_bytes": [], "reload_s": [],
                                       "reload_to_answer_s": []}
            for name in names:
                start = time.perf_counter()
                results["measured_bytes"].append(client.load(to_load(work / "repository", name, signature, args.cpu)))
                results["load_s"].append(time.perf_counter() - start)
                results["first_infer_s"].append(infer(server, name))
            stubs = [smaps(pid) for pid in stub_pids(server)]
            triton = smaps(server._process.pid)  # type: ignore[union-attr]
            report = client.report()
            for name in names:
                start = time.perf_counter()
                results["given_back_bytes"].append(client.unload(name))
                results["unload_s"].append(time.perf_counter() - start)
                start = time.perf_counter()
                client.load(to_load(work / "repository", name, signature, args.cpu))
                results["reload_s"].append(time.perf_counter() - start)
                infer(server, name)
                results["reload_to_answer_s"].append(time.perf_counter() - start)
        results["in_process_anonymous_bytes"] = in_process([work / "repository" / n / "1" / "model.pt" for n in names])
        results.update(stubs=stubs, triton_empty=empty, triton_loaded=triton, report_memory_bytes=report.memory_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def mb(values: list[int]) -> str:
        return f"p50 {statistics.median(values) / MB:6.0f}  max {max(values) / MB:6.0f} MB"

    print(f"{args.models} python-backend models on one tritonserver (one stub process each)")
    print(f"  load (request -> READY)       s   {summary(results['load_s'])}")
    print(f"  first inference after load    s   {summary(results['first_infer_s'])}")
    print(f"  unload (request -> gone)      s   {summary(results['unload_s'])}")
    print(f"  reload (request -> READY)     s   {summary(results['reload_s'])}")
    print(f"  reload -> first answer        s   {summary(results['reload_to_answer_s'])}")
    print(f"  measured per model (gauge)        {mb(results['measured_bytes'])}")
    print(f"  given back per unload             {mb(results['given_back_bytes'])}")
    for key in ("rss", "pss", "anonymous", "shared"):
        print(f"  stub {key:<9}                     {mb([s[key] for s in results['stubs']])}")
    total_pss = sum(s["pss"] for s in results["stubs"]) + results["triton_loaded"]["pss"]
    print(f"  tritonserver process RSS: {results['triton_empty']['rss'] / MB:.0f} MB empty, "
          f"{results['triton_loaded']['rss'] / MB:.0f} MB with {args.models} models")
    print(f"  server total PSS (triton + stubs) {total_pss / MB:.0f} MB; "
          f"report.memory_bytes {results['report_memory_bytes'] / MB:.0f} MB")
    steps = results["in_process_anonymous_bytes"]
    added = [b - a for a, b in zip(steps, steps[1:])]
    print(f"  libtorch proxy (one process): torch alone {steps[0] / MB:.0f} MB anonymous; each model adds "
          f"{mb(added)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
