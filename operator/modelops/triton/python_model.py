"""Triton python-backend runtime: serves the TorchScript model.pt of a published model version.

The operator ships this file (it is data to the operator, never imported there: it needs torch and numpy) in
each python-backend revision's ConfigMap, which the pod mounts as `<model>/<version>/model.py` of Triton's
repository; the published version folder is mounted elsewhere, read-only, and named by the config's
VERSION_DIRECTORY parameter. So every version, whenever it was published, is served by the operator's
current runtime, and a `model.py` that older trainers copied into version folders is never loaded.

Threads: each model instance is its own stub process with its own torch. Left alone, every instance's torch
starts one OpenMP thread per core, and the instances, Triton's own threads and the OpenMP workers spinning
while they wait all fight over the cores: two instances ran several times slower than one. So each instance
takes INTRA_OP_THREAD_COUNT torch threads (config.pbtxt `parameters`, rendered by the operator from the pod's
CPU limit), or, without it, the share the same rule gives of the cores this process may use (its CPU affinity
and the cgroup's cpu.max quota).

Sequences: a sequence model's input is INT64 token ids [batch, -1], 0 = padding at the end; the model derives
its mask from the pad id, so a row answers the same alone or padded among longer ones. Integer inputs stay
int64 (never cast to float), and requests of different lengths that reach one execute() are padded with 0 to
the longest before they share a forward pass (Triton's dynamic batcher itself only batches requests of one
shape; this keeps the runtime correct whatever it is handed).

Memory: each instance exports its stub process's anonymous memory (RssAnon + RssShmem of /proc/self/status:
the interpreter, torch's heap, the weights, activations -- what the process gives back when it exits; the
shared libraries' file pages are page cache, mapped once per server) as the gauge
modelops_model_memory_bytes{model, version, instance} on Triton's metrics endpoint, set after the model loads
and refreshed at most once a second while it serves. The pool client (modelops.triton.pool) sizes a resident
model by it: Triton itself has no per-model CPU memory figure.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils  # provided by Triton's python backend
except ImportError:  # imported outside Triton, for its thread rule (tests)
    pb_utils = None

INPUT_NAME = "INPUT__0"
OUTPUT_NAME = "OUTPUT__0"
MODEL_FILE = "model.pt"
PAD_ID = 0  # token id of padding, as the trainer's sequence data (modelops.trainer.data.PAD_ID)
MEMORY_METRIC = "modelops_model_memory_bytes"
MEMORY_REFRESH_S = 1.0


def process_memory(status_path: str = "/proc/self/status") -> int:
    """This process's anonymous and shared-memory resident bytes (RssAnon + RssShmem); 0 if unreadable."""
    total = 0
    try:
        with open(status_path) as handle:
            for line in handle:
                if line.startswith(("RssAnon:", "RssShmem:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return total


def threads_per_instance(cores: float, instances: int) -> int:
    """torch intra-op threads for each of `instances` model instances sharing `cores` (the operator's config
    renderer, modelops.triton.config.threads_per_instance, applies the same rule): one core is left to
    Triton's own work (HTTP/gRPC, the batcher, the stub IPC) when there are two or more, the rest is split
    evenly, never below one thread."""
    usable = max(1, int(cores) - 1)
    return max(1, usable // max(1, instances))


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup's CPU quota (a pod's CPU limit)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """The CPU quota in cores (cgroup v2 cpu.max, or v1 cfs quota/period); None when unlimited or unknown."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as q, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as p:
            quota_us, period_us = int(q.read()), int(p.read())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _string_parameter(config: dict[str, Any], key: str) -> str:
    return str((config.get("parameters") or {}).get(key, {}).get("string_value", ""))


def _parameter(config: dict[str, Any], key: str) -> int:
    try:
        return int(_string_parameter(config, key))
    except ValueError:
        return 0


def version_directory(config: dict[str, Any], args: dict[str, Any]) -> str:
    """The published version folder to serve: VERSION_DIRECTORY (the pod's mount of it), else the folder
    Triton loaded this file from (a repository laid out by hand)."""
    return _string_parameter(config, "VERSION_DIRECTORY") or os.path.join(args["model_repository"],
                                                                           args["model_version"])


def thread_counts(config: dict[str, Any], cores: float | None = None) -> tuple[int, int]:
    """(intra-op, inter-op) torch threads for one instance of this model config."""
    intra = _parameter(config, "INTRA_OP_THREAD_COUNT")
    inter = _parameter(config, "INTER_OP_THREAD_COUNT")
    if intra < 1:  # every instance of this model in the pod: count, on each of its GPUs for KIND_GPU
        groups = config.get("instance_group") or [{}]
        instances = sum(int(g.get("count", 1)) * (max(1, len(g.get("gpus") or ())) if g.get("kind") == "KIND_GPU"
                                                  else 1) for g in groups)
        intra = threads_per_instance(available_cores() if cores is None else cores, instances)
    return intra, inter if inter >= 1 else 1


def stack_requests(arrays: list[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """One batch from every request's input: integer token ids of different lengths are padded with PAD_ID to
    the longest (the model masks padding), anything else is concatenated as it is."""
    if len(arrays) == 1:
        return arrays[0]
    if arrays[0].ndim == 2 and np.issubdtype(arrays[0].dtype, np.integer) and len({a.shape[1] for a in arrays}) > 1:
        longest = max(a.shape[1] for a in arrays)
        arrays = [np.pad(a, ((0, 0), (0, longest - a.shape[1])), constant_values=PAD_ID) for a in arrays]
    return np.concatenate(arrays)


class TritonPythonModel:
    """Batches every request of an execute() call through one forward pass."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        intra, inter = thread_counts(config)
        # Before torch starts its thread pools: OpenMP reads these once.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(intra)
        import torch

        torch.set_num_threads(intra)
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError:  # already set by an earlier instance in this process
            pass
        self.torch = torch
        path = os.path.join(version_directory(config, args), MODEL_FILE)
        self.on_gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', 0)}" if self.on_gpu else "cpu")
        try:
            self.model = torch.jit.load(path, map_location=self.device).eval()
        except Exception as exc:  # Triton reports the load failure with this message (the model check quotes it)
            raise RuntimeError(f"cannot load {path}: {exc}") from None
        logger = getattr(pb_utils, "Logger", None)
        if logger is not None:
            logger.log_info(f"{args.get('model_instance_name')}: serving {path}, "
                            f"torch threads intra-op {intra}, inter-op {inter}")
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        self.memory = self.memory_family = None
        metric_family: Any = getattr(pb_utils, "MetricFamily", None)
        try:
            self.memory_family = metric_family(name=MEMORY_METRIC, kind=metric_family.GAUGE,
                                               description="anonymous resident memory of a model instance's process")
            self.memory = self.memory_family.Metric(labels={"model": str(args.get("model_name", "")),
                                                            "version": str(args.get("model_version", "")),
                                                            "instance": str(args.get("model_instance_name", ""))})
        except Exception as exc:  # noqa: BLE001 -- Triton's metrics off: serve anyway, the pool sees "not measured"
            if logger is not None:
                logger.log_warn(f"{args.get('model_instance_name')}: no {MEMORY_METRIC}: {exc}")
        self.memory_at = -MEMORY_REFRESH_S
        self._report_memory()

    def _report_memory(self) -> None:
        now = time.monotonic()
        if self.memory is not None and now - self.memory_at >= MEMORY_REFRESH_S:
            self.memory_at = now
            self.memory.set(process_memory())

    def execute(self, requests: list[Any]) -> list[Any]:
        torch = self.torch
        arrays = [pb_utils.get_input_tensor_by_name(request, INPUT_NAME).as_numpy() for request in requests]
        try:
            batch = torch.from_numpy(stack_requests(arrays))
            if batch.is_floating_point() and batch.dtype != torch.float32:
                batch = batch.float()
            elif not batch.is_floating_point() and batch.dtype != torch.int64:  # token ids: int64 embeddings
                batch = batch.long()
            if self.on_gpu:
                batch = batch.to(self.device)
            with torch.inference_mode():
                logits = self.model(batch)
            if logits.dtype == torch.bfloat16:  # numpy has no bfloat16
                logits = logits.float()
            logits = (logits.cpu() if self.on_gpu else logits).numpy()
            if logits.dtype != self.output_dtype:
                logits = logits.astype(self.output_dtype)
        except Exception as exc:
            # Raised rather than answered as error responses: Triton fails every request of the batch either
            # way, but counts only a raised error in nv_inference_request_failure (error responses count as
            # successes), which the rollout analysis reads to roll back a failing version.
            raise RuntimeError(f"inference failed: {exc}") from None
        self._report_memory()
        if len(arrays) == 1:
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT_NAME, logits)])]
        responses = []
        start = 0
        for array in arrays:
            end = start + len(array)
            tensor = pb_utils.Tensor(OUTPUT_NAME, logits[start:end])
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start = end
        return responses

    def finalize(self) -> None:
        self.model = self.memory = self.memory_family = None
