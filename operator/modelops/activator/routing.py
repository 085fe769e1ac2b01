"""The activator's pure decisions: which ModelService a request is for, whether it may be held, the model name
inside a gRPC request's bytes, and a ModelService's targets read from its EndpointSlice. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# The EndpointSlices the operator writes for the activator (docs/scale-to-zero.md): no
# kubernetes.io/service-name label, so kube-proxy ignores them; they list where the model is being brought up.
TARGETS_LABEL = "modelops.dev/activator-targets"
SERVICE_LABEL = "modelops.dev/modelservice"
MODEL_ANNOTATION = "modelops.dev/model"
VERSION_ANNOTATION = "modelops.dev/model-version"
REASON_ANNOTATION = "modelops.dev/not-ready-reason"


@dataclass(frozen=True)
class Target:
    """One Triton server that will serve the model: its HTTP and gRPC addresses."""

    host: str
    http_port: int = 8000
    grpc_port: int = 8001

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"


@dataclass(frozen=True)
class Backend:
    """A ModelService as the activator knows it: the model version it serves and where it will be ready."""

    namespace: str
    name: str
    model: str
    version: int
    targets: tuple[Target, ...] = ()
    reason: str = ""  # why nothing is ready yet, as the operator reports it (e.g. Unschedulable: ...)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Limits:
    """Bounds on what the activator holds: per ModelService, in all, and for how long."""

    per_service: int = 1000
    total: int = 5000
    hold_seconds: float = 300.0
    retry_after: int = 5  # seconds, in the Retry-After of a refusal


def pick_backend(backends: Mapping[str, Backend], host: str = "", model: str | None = None) -> Backend | None:
    """The ModelService a request is for.

    1. The Host (HTTP) names the Service: `<name>.<namespace>[.svc[.cluster.local]][:port]`.
    2. A bare `<name>` (a caller in the same namespace) or no usable Host: the one ModelService of that name,
       else the one serving `model` (the name in the URL, or inside a gRPC request; grpcio's Python server
       does not expose :authority). Ambiguous or unknown: None (the caller answers why).
    A request for a model other than the picked ModelService's is not this ModelService's: None."""
    labels = host.lower().rsplit(":", 1)[0].split(".") if host and not host.startswith("[") else []
    found: Backend | None = None
    if len(labels) >= 2 and f"{labels[1]}/{labels[0]}" in backends:
        found = backends[f"{labels[1]}/{labels[0]}"]
    if found is None and labels:
        found = _only(b for b in backends.values() if b.name == labels[0])
    if found is None and model:
        found = _only(b for b in backends.values() if b.model == model)
    if found is None and not model:
        found = _only(backends.values())
    if found is not None and model and found.model != model:
        return None
    return found


def _only(backends: Iterable[Backend]) -> Backend | None:
    matches = list(backends)
    return matches[0] if len(matches) == 1 else None


def refusal(limits: Limits, held_here: int, held_total: int) -> str | None:
    """Why one more request may not be held (None: it may)."""
    if held_here >= limits.per_service:
        return f"the activator already holds {held_here} requests for this ModelService (limit {limits.per_service})"
    if held_total >= limits.total:
        return f"the activator already holds {held_total} requests in all (limit {limits.total})"
    return None


def timed_out(limits: Limits, backend: Backend) -> str:
    """The answer to a request held for the whole hold time: why, with the operator's reason when it has one."""
    why = f"no ready copy of model {backend.model} version {backend.version} after {limits.hold_seconds:g}s"
    return f"{why}: {backend.reason}" if backend.reason else why


def grpc_model(message: bytes) -> tuple[str, str]:
    """(model name, version) from a serialized ModelInferRequest, ModelMetadataRequest or ModelReadyRequest:
    all three carry them as fields 1 and 2 (strings). Reads the protobuf wire format directly, so the request
    bytes are forwarded as they came, never decoded and encoded again. ('', '') when absent or malformed."""
    fields: dict[int, str] = {}
    at = 0
    try:
        while at < len(message) and len(fields) < 2:
            key, at = _varint(message, at)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, at = _varint(message, at)
            elif wire == 1:
                at += 8
            elif wire == 5:
                at += 4
            elif wire == 2:
                size, at = _varint(message, at)
                if at + size > len(message):
                    return "", ""
                if number in (1, 2):
                    fields[number] = message[at:at + size].decode()
                at += size
            else:
                return "", ""
    except (IndexError, UnicodeDecodeError):
        return "", ""
    return fields.get(1, ""), fields.get(2, "")


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def backend_from_slice(obj: Mapping[str, Any]) -> Backend | None:
    """A Backend from one of the operator's activator-target EndpointSlices (None when it is not one).

    Every listed address is a target, ready or not: the activator asks Triton itself, and a pod's readiness
    says nothing about the model."""
    meta = obj.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    name, model, version = labels.get(SERVICE_LABEL), notes.get(MODEL_ANNOTATION), notes.get(VERSION_ANNOTATION)
    if not (name and model and str(version or "").isdigit()):
        return None
    ports = {p.get("name"): p.get("port") for p in obj.get("ports") or []}
    targets = tuple(Target(address, int(ports.get("http") or 8000), int(ports.get("grpc") or 8001))
                    for endpoint in obj.get("endpoints") or [] for address in endpoint.get("addresses") or [])
    return Backend(meta.get("namespace", ""), name, model, int(str(version)), targets, notes.get(REASON_ANNOTATION, ""))
