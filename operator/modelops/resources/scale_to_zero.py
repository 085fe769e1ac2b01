"""Pure: scale to zero for a ModelService (autoscaling.minReplicas 0; docs/scale-to-zero.md).

When a dedicated ModelService's replicas may go to zero, and when demand brings them back; and what routes
to it: its Service keeps selecting its pods (ready only once the model check passed), and a second slice of
ours under that Service lists the activator pods while no pod is ready; plus the activator-target slice
telling the activator which pods (or pool servers) to wait for and why they are not ready yet. The operator
writes both slices; the activator only reads the second."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.api.modelservice import Autoscaling, ModelServiceSpec
from modelops.clock import parse_rfc3339
from modelops.resources import modelservice as build

# What the activator reads (activator/routing.py has the same names; the activator is a layer above, and a
# unit test keeps both equal).
TARGETS_LABEL = "modelops.dev/activator-targets"
SERVICE_LABEL = "modelops.dev/modelservice"
MODEL_ANNOTATION = "modelops.dev/model"
VERSION_ANNOTATION = "modelops.dev/model-version"
REASON_ANNOTATION = "modelops.dev/not-ready-reason"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # (the same names as pooled_service_plan's)
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "modelops.dev"
DRAIN_SECONDS = 5.0
"""Between the Service's slice switching to the activator and the last replica going: kube-proxy's lag (as a
pool waits before unloading a copy a Service listed)."""
ACTIVATOR_PORTS = (("http", build.HTTP_PORT), ("grpc", build.GRPC_PORT))
"""The activator listens on Triton's ports (modelops activator --http-port/--grpc-port, the chart's defaults)."""


@dataclass(frozen=True)
class Demand:
    """What the activators hold for one ModelService now (summed over the activator pods)."""

    held: int = 0
    since: float | None = None
    """Unix time the oldest request held now came."""


def scales_to_zero(spec: ModelServiceSpec) -> bool:
    scaling = spec.autoscaling
    return scaling is not None and scaling.provider == "builtin" and scaling.min_replicas == 0


def zero_decision(scaling: Autoscaling, current: int, decided: int, requests: float | None, demand: Demand,
                  activators: tuple[str, ...], last_scale: str | None, now: datetime) -> tuple[int, str]:
    """(replicas, why) at minReplicas 0: `decided` is the autoscaler's count with a floor of 1 (at the metric's
    pace); `requests` Triton's successes and failures over the idle period (None: Prometheus has no data).

    Demand brings a ModelService at zero to one replica at once. It goes to zero only when Triton counted no
    request for the whole idle period, nothing is held, its last scale is as old, and an activator is there to
    hold what comes next: missing metrics, or no activator, never scale to zero."""
    if demand.held:
        return max(decided, 1), f"{demand.held} requests held by the activator"
    if current == 0:
        return 0, "at zero: no request held by the activator"
    window = scaling.scale_to_zero_after_seconds
    if requests is None or requests > 0 or decided > 1:
        return decided, ""
    if not activators:
        return decided, "no activator endpoints: not scaling to zero"
    changed = _time(last_scale)
    if changed is not None and 0 <= (now - changed).total_seconds() < window:
        return decided, ""
    return 0, f"no request for {window}s: scaling to zero"


def routing(meta: build.ServiceMeta, model: str, version: int | None, pods: list[dict[str, Any]],
            activators: tuple[str, ...], to_zero: bool, reason: str) -> list[dict[str, Any]]:
    """The Service (it keeps selecting its pods: the EndpointSlice controller lists the ready ones), a slice
    of ours under the same Service that lists the activator pods while no pod is ready or the replicas are to
    go (and nothing otherwise), and the activator-target slice.

    Why not a selector-less Service, as the design first said: a Service that loses its selector keeps the
    slices the EndpointSlice controller wrote (Kubernetes 1.33, tests/integration/test_scale_to_zero.py), so
    kube-proxy would go on routing to pods that are gone. kube-proxy merges every slice of a Service; a pod
    is listed ready only once the model check passed (its readiness gate), so "ready" is Triton's word."""
    running = sorted((p for p in pods if (p.get("status") or {}).get("podIP")
                      and not p["metadata"].get("deletionTimestamp")), key=lambda p: p["metadata"]["name"])
    ready = [p for p in running if (build.model_ready_condition(p) or {}).get("status") == "True" and _pod_ready(p)]
    name = build.service_name(meta)
    listed = sorted(activators) if to_zero or not ready else []
    served = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": meta.child_metadata(activator_slice_name(meta),
                                              {**meta.selector, SERVICE_NAME_LABEL: name,
                                               SLICE_MANAGER_LABEL: SLICE_MANAGER}),
              "addressType": "IPv4",
              "endpoints": [{"addresses": [address], "conditions": {"ready": True}} for address in listed],
              "ports": [{"name": n, "port": port, "protocol": "TCP"} for n, port in ACTIVATOR_PORTS]}
    return [build.service(meta), served, targets_slice(meta, model, version or 0, running, reason)]


def activator_slice_name(meta: build.ServiceMeta) -> str:
    return f"{build.service_name(meta)}-activator"


def targets_slice(meta: build.ServiceMeta, model: str, version: int, pods: list[dict[str, Any]],
                  reason: str) -> dict[str, Any]:
    """What the activator reads (activator/routing.backend_from_slice): the model, its version, why nothing
    is ready, and every pod (or pool server) that may become ready. No kubernetes.io/service-name label:
    kube-proxy ignores it."""
    metadata = meta.child_metadata(targets_name(meta), {**meta.selector, TARGETS_LABEL: "true",
                                                        SERVICE_LABEL: meta.name})
    metadata["annotations"] = {MODEL_ANNOTATION: model, VERSION_ANNOTATION: str(version), REASON_ANNOTATION: reason}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
            "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"]],
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": meta.namespace}}
                          for p in sorted(pods, key=lambda p: p["metadata"]["name"])],
            "ports": [{"name": n, "port": port, "protocol": "TCP"} for n, port in ACTIVATOR_PORTS]}


def targets_name(meta: build.ServiceMeta) -> str:
    return f"{meta.name}-activator-targets"


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _time(stamp: Any) -> datetime | None:
    try:
        return parse_rfc3339(stamp) if isinstance(stamp, str) and stamp else None
    except ValueError:
        return None
