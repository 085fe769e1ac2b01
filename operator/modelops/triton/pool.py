"""PLACEHOLDER for issue 24's Triton half (helper 24b owns this module; the lead keeps 24b's at merge).

Exactly the names the pool's Kubernetes half imports, with the contract's signatures. `server_args` and
`load_config` return the minimum the contract describes so the pure builders and planner run; the client
reports every server unreachable and its load/unload raise NotImplementedError (unit tests inject an
in-memory server instead)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POOL_REPOSITORY = "/repository"
"""Where a pool server pod mounts the pool's whole model repository, read-only."""


@dataclass(frozen=True)
class ResidentModel:
    name: str
    version: int
    ready: bool
    last_inference_ms: int
    inference_count: int
    queue_ns: int
    bytes: int | None


@dataclass(frozen=True)
class ServerReport:
    reachable: bool
    models: tuple[ResidentModel, ...]
    memory_bytes: int | None


@dataclass(frozen=True)
class ModelToLoad:
    name: str
    version: int
    backend: str
    config: dict[str, Any]


class TritonPoolError(RuntimeError):
    """A load or unload Triton refused or did not finish."""


def server_args(http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002) -> list[str]:
    """tritonserver args for a pool server: explicit model-control mode, no model at start."""
    return [f"--model-repository={POOL_REPOSITORY}", "--model-control-mode=explicit", "--strict-readiness=true",
            "--exit-on-error=false", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}", "--allow-metrics=true"]


def load_config(name: str, version: int, triton_spec: dict[str, Any], cpu_limit: float | None) -> dict[str, Any]:
    """The JSON model config for a pool copy (placeholder: name, backend and the pinned version only)."""
    backend = triton_spec.get("backend", "pytorch")
    return {"name": name, "backend": backend, "max_batch_size": int(triton_spec.get("maxBatchSize", 64)),
            "version_policy": {"specific": {"versions": [version]}}}


class TritonPoolClient:
    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url, self.timeout = base_url, timeout

    def report(self) -> ServerReport:
        """Placeholder: this module cannot talk to Triton, so every server reads as unreachable (the contract's
        answer for a server that does not answer): the planner then places nothing on it."""
        return ServerReport(reachable=False, models=(), memory_bytes=None)

    def load(self, model: ModelToLoad) -> int | None:
        raise NotImplementedError("issue 24b: TritonPoolClient.load")

    def unload(self, name: str) -> int | None:
        raise NotImplementedError("issue 24b: TritonPoolClient.unload")
