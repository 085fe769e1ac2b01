"""A pool server: one Triton in explicit model-control mode holding many models, loaded and unloaded by the
operator through Triton's repository API, and what it reports (residency, per-model statistics, memory).

This module is pure (the planners import it): the contract's types, the server's args, the load config, and
the reading of Triton's answers. The HTTP client is modelops.triton.pool_client.TritonPoolClient (stdlib
urllib: the operator process stays free of torch, numpy and tritonclient).

How a copy is loaded (verified against the real tritonserver 2.51 of the nvidia-pytriton wheel):
- The server starts with no model (server_args) and the pool's whole repository mounted read-only at
  POOL_REPOSITORY; `POST /v2/repository/models/<name>/load` with a `config` parameter (the model config as
  JSON, version pinned) loads exactly that version. The call returns when the load has finished or failed.
- pytorch backend: the config override alone; Triton reads POOL_REPOSITORY/<name>/<version>/model.pt.
  (The wheel has only the python backend, so this path is not exercised locally.)
- python backend: the request also carries the operator's runtime as `file:<version>/model.py`. Triton then
  builds the model from a temporary folder holding only the files sent (so a model.py an older trainer left in
  the version folder is never run; the pod needs a writable /tmp), and the runtime serves the model.pt of the
  published folder named by its VERSION_DIRECTORY parameter, POOL_REPOSITORY/<name>/<version>.
- Loading another version of a loaded name replaces it (the old one unloads once the new one is ready): the
  pool never puts two versions of one name on a server, so a load always finds the name absent.
- Unload is asynchronous in Triton (the call returns at once, the version sits in UNLOADING until every
  in-flight request of it has been answered and its python stub has exited, about 3 s here): unload() waits
  until the index says the version is gone. Requests already queued are answered; requests sent after the
  unload began are refused (HTTP 400 "... is not found" / "not ready"), which is why the planner takes a
  server out of a model's endpoints before it unloads the model there.

Memory, and why from these sources:
- GPU servers: Triton's per-GPU gauge nv_gpu_memory_used_bytes (summed over the GPUs) read before and after a
  load or unload; the caller serializes loads and unloads per server, so the difference is the model's. This
  also catches what Triton does not give back (triton#3320): an unload's bytes given back is the gauge's fall.
- CPU servers: Triton's nv_cpu_memory_used_bytes is the host's used memory ("system-wide", from
  /proc/meminfo: every pod on the node; 0 until its first update; here it moved by 380 MB in 4 s with our
  server idle, with other people's processes), and Triton has no per-model CPU figure. A python-backend
  model lives in its own stub process, one per instance, so the operator's runtime exports that process's
  anonymous memory (RssAnon + RssShmem) as the gauge modelops_model_memory_bytes{model, version, instance};
  a model's bytes are the sum over its instances. That is what an unload gives back (the process exits),
  and it needs no serialized window. Not in it: Triton's own process (about 35-45 MB RSS here) and the
  shared libraries' file pages (torch's, about 250 MB of page cache mapped by every stub, counted once per
  server): a pool's capacity must leave room for them.
  A pytorch-backend model on a CPU server runs inside Triton's process: not measured (None), the planner
  keeps the ModelService's declared size.
Measured here (e2e/bench/bench_pool_triton.py --models 8; python backend, the sample digits CNN, torch 2.15
CUDA build on CPU, 2 shared cores): one resident model is one stub process of about 547 MB RSS: 296 MB
anonymous (what the gauge reports: 293 MB; nearly all of it is importing torch, not the model) and 251 MB of
shared library pages (PSS 324 MB per stub with 8 resident). Load (request -> READY) p50 3.5 s, max 4.8 s;
unload p50 1.9 s; reload p50 3.0 s, max 4.5 s; first answer 0.05 s after READY. Triton's own process: 34 MB
RSS empty, 43 MB with 8 models. The libtorch backend (not in this wheel) would hold every model in Triton's
one process; by proxy (the same TorchScript models loaded into one process with torch), each model then adds
about 1 MB (the first 5 MB) instead of about 300 MB, and torch's import is paid once per server.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from modelops.api.modelservice import TritonSpec
from modelops.triton.config import PYTHON_MODEL_FILE, Backend, python_model_source, threads_per_instance
from modelops.triton.signature import TensorSpec

POOL_REPOSITORY = "/repository"
"""Where a pool server pod mounts the pool's whole model repository, read-only."""
MEMORY_METRIC = "modelops_model_memory_bytes"
"""The per-instance gauge the python-backend runtime exports (python_model.MEMORY_METRIC, same name)."""
GPU_MEMORY_METRIC = "nv_gpu_memory_used_bytes"
SUMMARY_QUANTILES = "0.5:0.05,0.99:0.001"
"""Triton's latency summaries, as a dedicated ModelService's pods have them."""
DEFAULT_METRICS_PORT = 8002


class TritonPoolError(RuntimeError):
    """A load or unload that Triton refused, failed, or did not finish in time."""


@dataclass(frozen=True)
class ResidentModel:
    name: str
    """Triton model name."""
    version: int
    ready: bool
    """Triton says this version is READY (False while it loads or unloads)."""
    last_inference_ms: int
    """Triton's per-model statistics last_inference (ms since the epoch), 0 = never."""
    inference_count: int
    queue_ns: int
    """Cumulative queue time (ns), for load-driven copies."""
    bytes: int | None
    """Measured memory of this resident model, None if not measured."""


@dataclass(frozen=True)
class ServerReport:
    reachable: bool
    models: tuple[ResidentModel, ...]
    memory_bytes: int | None
    """GPU servers: the GPUs' used memory; CPU servers: the resident models' bytes (see the module docstring);
    None when unknown (a model not measured, or no metrics)."""


@dataclass(frozen=True)
class ModelToLoad:
    name: str
    version: int
    backend: str
    """"pytorch" | "python"."""
    config: dict[str, Any]
    """Triton model config as JSON (version_policy pins `version`), built by load_config()."""


def server_args(http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = DEFAULT_METRICS_PORT) -> list[str]:
    """tritonserver args for a pool server: explicit model-control mode, no model at start, repository
    POOL_REPOSITORY; a load that fails must not stop the server (the other models keep serving)."""
    return [f"--model-repository={POOL_REPOSITORY}", "--model-control-mode=explicit", "--strict-readiness=true",
            "--exit-on-error=false", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}", "--allow-metrics=true", "--allow-gpu-metrics=true",
            "--metrics-config=summary_latencies=true", f"--metrics-config=summary_quantiles={SUMMARY_QUANTILES}"]


def load_config(name: str, version: int, triton_spec: dict[str, Any], cpu_limit: float | None, *,
                signature: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON model config for a pool copy, from the ModelService's spec.triton (wire dict), the pool
    server's CPU limit and the version's signature (wire dict: inputs and outputs), with the rules of
    modelops.triton.config.render_config: batching, instances, torch threads, version pinned; python
    backend: VERSION_DIRECTORY is POOL_REPOSITORY/<name>/<version>.

    `signature` is required (keyword, so callers written to the bare contract fail loudly): neither backend
    can serve without inputs and outputs, and the operator never reads the tenant's repository for them.
    Raises ValueError on invalid input."""
    if signature is None:
        raise ValueError(f"{name} version {version}: a pool copy needs the version's signature")
    if version < 1:
        raise ValueError("version must be >= 1")
    if cpu_limit is not None and cpu_limit <= 0:
        raise ValueError("cpu_limit must be > 0")
    spec = TritonSpec.model_validate(triton_spec)
    backend = Backend(spec.backend)
    batched = spec.max_batch_size > 0

    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        specs = [TensorSpec.from_dict(t) for t in items]
        return [{"name": t.name, "data_type": t.config_datatype,
                 "dims": list(t.dims) if batched else [-1, *t.dims]} for t in specs]

    config: dict[str, Any] = {
        "name": name, "max_batch_size": spec.max_batch_size,
        "version_policy": {"specific": {"versions": [version]}},
        "input": tensors(signature["inputs"]), "output": tensors(signature["outputs"]),
        # KIND_AUTO, as a dedicated ModelService without GPUs: a pool server's GPUs (if any) take it
        "instance_group": [{"count": spec.instance_count, "kind": "KIND_AUTO"}],
    }
    config.update({"backend": "python"} if backend is Backend.PYTHON else {"platform": "pytorch_libtorch"})
    if batched:
        batching: dict[str, Any] = {}
        if spec.dynamic_batching.preferred_batch_sizes:
            batching["preferred_batch_size"] = list(spec.dynamic_batching.preferred_batch_sizes)
        if spec.dynamic_batching.max_queue_delay_microseconds:
            batching["max_queue_delay_microseconds"] = spec.dynamic_batching.max_queue_delay_microseconds
        config["dynamic_batching"] = batching
    parameters: dict[str, str] = {}
    if cpu_limit is not None:
        threads = threads_per_instance(cpu_limit, spec.instance_count)
        parameters.update(INTRA_OP_THREAD_COUNT=str(threads), INTER_OP_THREAD_COUNT="1")
    if backend is Backend.PYTHON:
        parameters["VERSION_DIRECTORY"] = f"{POOL_REPOSITORY}/{name}/{version}"
    if parameters:
        config["parameters"] = {key: {"string_value": value} for key, value in parameters.items()}
    return config


def parse_metrics(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in Prometheus text: (labels, value) each."""
    samples = []
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(_LABEL.findall(head[len(name):]))
        try:
            samples.append((labels, float(value)))
        except ValueError:
            continue
    return samples


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Memory:
    """One reading of a server's metrics: bytes per (model, version) from the runtime's gauge, and the GPUs'
    used bytes (None on a server without GPUs)."""

    models: dict[tuple[str, int], int]
    gpu: int | None

    def model(self, name: str, version: int | None = None) -> int:
        """Bytes of `name` (one version, or all), 0 when not measured."""
        return sum(b for (n, v), b in self.models.items() if n == name and version in (None, v))


NO_MEMORY = Memory({}, None)


def read_memory(metrics_text: str) -> Memory:
    """The memory figures of a Triton metrics page."""
    models: dict[tuple[str, int], int] = {}
    for labels, value in parse_metrics(metrics_text, MEMORY_METRIC):
        if labels.get("version", "").isdigit():
            key = (labels.get("model", ""), int(labels["version"]))
            models[key] = models.get(key, 0) + int(value)
    gpus = parse_metrics(metrics_text, GPU_MEMORY_METRIC)
    return Memory(models, int(sum(v for _, v in gpus)) if gpus else None)


def server_report(index: Any, stats: Any, memory: Memory,
                  gpu_bytes: dict[tuple[str, int], int] | None = None) -> ServerReport:
    """A reachable server's report from its repository index, its /v2/models/stats and a memory reading.
    Resident: every version loading, ready or unloading (UNAVAILABLE ones are unloaded or failed). A model's
    bytes: on a GPU server the gauge difference measured at its load (`gpu_bytes`, kept by the client), else
    the runtime's gauge."""
    by_version = {(s.get("name"), str(s.get("version"))): s
                  for s in (stats or {}).get("model_stats", []) if isinstance(s, dict)}
    models = []
    for entry in index if isinstance(index, list) else []:
        state, version = entry.get("state"), str(entry.get("version", ""))
        if state not in ("READY", "LOADING", "UNLOADING") or not version.isdigit():
            continue
        name, number = str(entry["name"]), int(version)
        stat = by_version.get((name, version), {})
        models.append(ResidentModel(
            name=name, version=number, ready=state == "READY",
            last_inference_ms=int(stat.get("last_inference", 0)),
            inference_count=int(stat.get("inference_count", 0)),
            queue_ns=int(((stat.get("inference_stats") or {}).get("queue") or {}).get("ns", 0)),
            bytes=model_bytes(memory, name, number, gpu_bytes or {})))
    if memory.gpu is not None:
        total: int | None = memory.gpu
    elif any(m.bytes is None for m in models):
        total = None
    else:
        total = sum(m.bytes or 0 for m in models)
    return ServerReport(True, tuple(models), total)


def model_bytes(memory: Memory, name: str, version: int, gpu_bytes: dict[tuple[str, int], int]) -> int | None:
    """One resident version's measured bytes, None if not measured."""
    if memory.gpu is not None:
        return gpu_bytes.get((name, version))
    return memory.model(name, version) or None


def load_request(model: ModelToLoad) -> dict[str, Any]:
    """The body of POST /v2/repository/models/<name>/load: the config override, and for the python backend
    the operator's runtime as the version's model.py."""
    parameters = {"config": json.dumps(model.config)}
    if Backend(model.backend) is Backend.PYTHON:
        parameters[f"file:{model.version}/{PYTHON_MODEL_FILE}"] = _runtime_base64()
    return {"parameters": parameters}


@functools.cache
def _runtime_base64() -> str:
    """The runtime as a load request carries a file, base64 (the same text a dedicated pod mounts)."""
    return base64.b64encode(python_model_source().encode()).decode()
