"""Pure builders for a ModelPool's children: its Triton server pods.

Servers are individual Pods, not a Deployment: the planner must say which server goes (the one that is
empty, or the one that leaks memory), which a ReplicaSet cannot be told. Each pod is named
<pool>-s<index> (the lowest free index), carries the pool's identity labels and a hash of what shapes it,
so a changed pool spec drains the old servers one by one like any other server to replace. What a server
has measured and done (sizes, loads, unloads, evictions) is recorded on its pod (ANNOTATION_LEDGER), which
outlives an operator restart."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from modelops.api.modelpool import ModelPoolSpec
from modelops.resources.meta import MANAGED_BY, MANAGED_BY_LABEL, OwnerMeta
from modelops.resources.naming import dns_label
from modelops.resources.pods import compute_resources, scheduling, tolerations
from modelops.triton.pool import POOL_REPOSITORY, server_args

LABEL_POOL = "modelops.dev/model-pool"
LABEL_SERVER_INDEX = "modelops.dev/pool-server"
ANNOTATION_TEMPLATE = "modelops.dev/pool-template"
"""Hash of the pod as built: a server whose hash is not the current one is replaced."""
ANNOTATION_LEDGER = "modelops.dev/pool-ledger"
"""JSON: measured sizes, load/unload/eviction counts, leaks and failed loads of this server."""
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002


@dataclass(frozen=True)
class PoolMeta(OwnerMeta):
    kind: ClassVar[str] = "ModelPool"

    @property
    def label(self) -> str:
        return dns_label(self.name)

    @property
    def selector(self) -> dict[str, str]:
        return {LABEL_POOL: self.label}

    @property
    def selector_string(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.selector.items())


def server_name(pool: PoolMeta, index: int) -> str:
    return dns_label(pool.name, f"-s{index}")


def server_index(pod: dict[str, Any]) -> int | None:
    try:
        return int(((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_SERVER_INDEX, ""))
    except ValueError:
        return None


def template_hash(spec: ModelPoolSpec) -> str:
    """What shapes every server pod (not its name or index)."""
    shaping = _pod_spec(spec)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:10]


def _pod_spec(spec: ModelPoolSpec) -> dict[str, Any]:
    repository = spec.repository
    source = ({"persistentVolumeClaim": {**repository.persistent_volume_claim.wire(), "readOnly": True}}
              if repository.persistent_volume_claim else
              {"hostPath": {"path": repository.host_path.path, "type": "Directory"}})  # type: ignore[union-attr]
    container = {
        "name": "triton", "image": spec.image, "command": ["tritonserver"],
        "args": server_args(HTTP_PORT, GRPC_PORT, METRICS_PORT),
        "ports": [{"name": "http", "containerPort": HTTP_PORT}, {"name": "grpc", "containerPort": GRPC_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        # Ready = the server answers; which models it holds is the planner's business (EndpointSlices).
        "readinessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "initialDelaySeconds": 30, "periodSeconds": 10, "failureThreshold": 6},
        "resources": compute_resources(spec.resources),
        "volumeMounts": [{"name": "model-repository", "mountPath": POOL_REPOSITORY, "readOnly": True}],
    }
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": [{"name": "model-repository", **source}],
                                "automountServiceAccountToken": False, "enableServiceLinks": False}
    pod_tolerations = tolerations(spec.tolerations, spec.resources)
    pod_spec.update(scheduling(pod_tolerations, spec.node_selector, spec.priority_class_name))
    return pod_spec


def server_pod(pool: PoolMeta, spec: ModelPoolSpec, index: int) -> dict[str, Any]:
    """Server `index` of the pool: Triton in explicit model-control mode with no model, the whole repository
    mounted read-only at POOL_REPOSITORY, the pool's resources and scheduling."""
    labels = {**pool.selector, LABEL_SERVER_INDEX: str(index), "app.kubernetes.io/name": "modelops-triton-pool",
              MANAGED_BY_LABEL: MANAGED_BY}
    meta = pool.child_metadata(server_name(pool, index), labels, {
        ANNOTATION_TEMPLATE: template_hash(spec),
        "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(spec)}


def pod_monitor(pool: PoolMeta) -> dict[str, Any]:
    """For clusters running the Prometheus Operator: scrape every server of the pool, keeping the pool's label
    (a pooled ModelService's canary analysis selects model, version and this label: many models per server)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": pool.child_metadata(pool.label, pool.selector),
            "spec": {"selector": {"matchLabels": pool.selector}, "podTargetLabels": [LABEL_POOL],
                     "podMetricsEndpoints": [{"port": "metrics", "interval": "5s"}]}}
