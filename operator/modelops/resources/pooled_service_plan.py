"""Pure planning for a pooled ModelService's pass (spec.pool): no Deployment of its own, its copies live on
the pool's servers (placed by the pool's planner, resources/pool_plan.py). This pass writes what routes to
them: a selector-less Service and one EndpointSlice listing exactly the pool servers where its served
version is loaded AND Triton reports it ready (read from the pool's status, which each pool pass rebuilds from
the servers' reports), so kube-proxy routes /v2/models/<model>/infer with no proxy of ours.

A new version is placed beside the one serving (status.canary: the pool places both, never on one server),
and the EndpointSlice switches to it whole once it has its minimum of ready copies (at least one); the old
version's copies then go (the pool unloads versions no one asks for). Weighted canary steps, their analysis
and the evaluation gate are not applied to pooled ModelServices yet: the EndpointSlice could realise a
weight by listing k servers of one version and m of the other, which is the next step."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.api.modelservice import ModelServiceSpec
from modelops.clock import rfc3339
from modelops.resources import modelservice as build
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.resources.plan import Delete, Plan

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "modelops.dev"
RESYNC_SECONDS = 30.0
PORTS = (("http", build.HTTP_PORT), ("grpc", build.GRPC_PORT), ("metrics", build.METRICS_PORT))


@dataclass(frozen=True)
class PooledObservation:
    meta: build.ServiceMeta
    spec: ModelServiceSpec
    previous: dict[str, Any]
    now: datetime
    target: build.Target | None
    waiting: str
    pool: dict[str, Any] | None
    """The ModelPool object (None: not found)."""
    servers: list[dict[str, Any]]
    """The pool's server pods."""
    owned: list[tuple[str, str, str]]
    """(apiVersion, kind, name) of children left from serving on pods of its own (Deployments, ConfigMaps, an
    HPA): a pooled ModelService has none (they go once the pool serves a ready copy)."""


def min_copies(spec: ModelServiceSpec) -> int:
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def where_ready(pool: dict[str, Any] | None, model: str, version: int) -> list[str]:
    """The pool servers whose report says this version is loaded and ready (pool status), less the copies the
    pool is about to unload (leaving: they go out of the endpoints first)."""
    servers = ((pool or {}).get("status") or {}).get("servers") or []
    return sorted(s["name"] for s in servers if any(
        m.get("name") == model and m.get("version") == version and m.get("ready") and not m.get("leaving")
        for m in s.get("models") or []))


def service(meta: build.ServiceMeta) -> dict[str, Any]:
    """Selector-less: its endpoints are the EndpointSlice this pass writes."""
    ports = [{"name": name, "port": port, "targetPort": port, "protocol": "TCP"} for name, port in PORTS]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta.child_metadata(build.service_name(meta), meta.selector),
            "spec": {"ports": ports}}


def endpoint_slice(meta: build.ServiceMeta, pods: list[dict[str, Any]]) -> dict[str, Any]:
    name = build.service_name(meta)
    endpoints = [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                  "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": meta.namespace}}
                 for p in sorted(pods, key=lambda p: p["metadata"]["name"])]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": meta.child_metadata(name, {**meta.selector, SERVICE_NAME_LABEL: name,
                                                   SLICE_MANAGER_LABEL: SLICE_MANAGER}),
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": n, "port": port, "protocol": "TCP"} for n, port in PORTS]}


def plan_pooled_service(obs: PooledObservation) -> Plan:
    meta, spec, previous = obs.meta, obs.spec, obs.previous
    model = spec.model.name
    wanted = obs.target.version if obs.target else None
    recorded: dict[str, Any] = previous["stable"] if isinstance(previous.get("stable"), dict) else {}
    stable = recorded.get("version") if isinstance(recorded.get("version"), int) else None
    if stable is None:  # (a followed TrainingJob gone: the recorded version keeps serving)
        stable = wanted
    floor = max(1, min_copies(spec))
    canary = wanted if wanted is not None and wanted != stable else None
    if canary is not None and len(where_ready(obs.pool, model, canary)) >= floor:
        stable, canary = canary, None  # the new version has its copies: switch the Service to it whole
    serving = where_ready(obs.pool, model, stable) if stable is not None else []
    pods = [p for p in obs.servers if p["metadata"]["name"] in serving and (p.get("status") or {}).get("podIP")
            and not p["metadata"].get("deletionTimestamp")]

    unplaced = next((u for u in ((obs.pool or {}).get("status") or {}).get("unplaced") or []
                     if u.get("modelService") == meta.name), None)
    if obs.pool is None:
        why = Cond("Ready", False, "PoolNotFound", f"ModelPool {spec.pool} not found in {meta.namespace}")
    elif unplaced:
        why = Cond("Ready", False, str(unplaced.get("reason")), str(unplaced.get("message", "")))
    elif stable is None:
        why = Cond("Ready", False, "Waiting", obs.waiting or "waiting for a model version to serve")
    elif not pods and min_copies(spec) > 0:
        why = Cond("Ready", False, "Placing", f"waiting for a ready copy of {model}:{stable} in pool {spec.pool}")
    else:
        why = Cond("Ready", True, "Serving", f"{len(pods)} ready copies of {model}:{stable} in pool {spec.pool}")
    stalled = obs.pool is None or unplaced is not None
    phase = "Ready" if why.status else "Degraded" if stalled else "Pending" if not pods else "Progressing"
    conds = [why, Cond("Reconciling", not why.status and not stalled, why.reason, "" if why.status else why.message),
             Cond("Stalled", stalled, why.reason, why.message if stalled else "")]
    conditions = merge_conditions(previous.get("conditions", []), conds, now=rfc3339(obs.now),
                                  generation=meta.generation)
    status: dict[str, Any] = {
        "observedGeneration": meta.generation, "phase": phase, "conditions": conditions,
        "replicas": len(serving), "readyReplicas": len(pods), "ready": f"{len(pods)}/{min_copies(spec)}",
        "selector": ",".join(f"{k}={v}" for k, v in meta.selector.items()),
        "url": f"http://{build.service_name(meta)}.{meta.namespace}.svc:{build.HTTP_PORT}",
        "pool": {"name": spec.pool, "copies": len(serving), "servers": serving,
                 **({"canaryServers": where_ready(obs.pool, model, canary)} if canary is not None else {})},
    }
    if stable is not None:
        status["modelVersion"] = stable
        status["stable"] = {"name": f"{meta.label}-v{stable}", "version": stable, "replicas": len(serving),
                            "readyReplicas": len(pods)}
    if canary is not None:
        placed = len(where_ready(obs.pool, model, canary))
        status["canary"] = {"name": f"{meta.label}-v{canary}", "version": canary, "replicas": placed,
                            "readyReplicas": placed}
        status["canarySummary"] = f"v{canary} placing {placed}/{floor}"
    events = []
    if became_true(previous.get("conditions", []), conditions, "Ready"):
        events.append(Event("Normal", "Serving", why.message))
    if stable is not None and recorded.get("version") not in (None, stable):
        events.append(Event("Normal", "Switched", f"the Service now routes to {model}:{stable}"))
    # Moving from pods of its own into a pool: they serve until the pool has a ready copy.
    handed_over = bool(pods) or min_copies(spec) == 0
    return Plan(apply=[service(meta), endpoint_slice(meta, pods)],
                delete=[Delete(api_version, kind, name) for api_version, kind, name in obs.owned] if handed_over else [],
                status=status, events=events, requeue_after=RESYNC_SECONDS)
