"""The ModelPool controller: observe (the caches, plus each running server's Triton report), one pure plan
(resources/pool_plan.plan_pool), one writer. Nothing here decides or writes."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from modelops.api.modelpool import ModelPoolSpec
from modelops.api.modelservice import ModelServiceSpec
from modelops.controllers.common import claimants, end_orphans, refuse_invalid_spec, report_failure, write_plan
from modelops.controllers.modelservice import pooled_by, resolve_target
from modelops.engine.cache import IndexFn, Obj, by_controller_uid, trim_pod
from modelops.resources.meta import Claim, by_claim, is_ours
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Failure, Key
from modelops.kube import controller_owner
from modelops.metrics import reconcile_timer, record_phase
from modelops.quantities import quantity
from modelops.resources import modelpool as build
from modelops.resources.modelservice import ServiceMeta, service_name
from modelops.resources.plan import with_orphans
from modelops.resources.pool_plan import Demand, Ledger, PoolMemory, PoolObservation, Server, plan_pool

KIND = "ModelPool"
POD_MONITOR = ("monitoring.coreos.com/v1", "PodMonitor")
log = logging.getLogger(__name__)


class ModelPoolController:
    kind = KIND
    child_kinds = [ChildKind("v1", "Pod", trim_pod, {"owner": by_controller_uid, "claims": by_claim}, labels=None,
                             keep=is_ours),
                   ChildKind(*POD_MONITOR, indexes={"owner": by_controller_uid}, optional=True)]
    resource_indexes: dict[str, IndexFn] = {}

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None:
        key = (KIND, namespace, name)
        obj = ctx.caches.store(KIND).get(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            end_orphans(ctx, self.child_kinds, KIND, namespace, name)
            ctx.forget(key)
            record_phase(KIND, namespace, name, None)
            return None
        with reconcile_timer(KIND):
            try:
                spec = ModelPoolSpec.model_validate(obj.get("spec") or {})
            except ValidationError as error:
                refuse_invalid_spec(ctx, obj, error)
                return None
            orphans = claimants(ctx, self.child_kinds, KIND, namespace, name)
            plan = plan_pool(observe(ctx, obj, spec, key))
            return write_plan(ctx, key, obj, with_orphans(plan, build.PoolMeta.of(obj), orphans))

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        owner, claim = controller_owner(obj, KIND), Claim.of(obj)
        if owner:
            yield KIND, obj["metadata"].get("namespace", ""), owner.get("name", "")
        elif claim and claim.kind == KIND and not controller_owner(obj):
            yield KIND, obj["metadata"].get("namespace", ""), claim.name  # an orphan: adopted or ended

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]:
        """A pooled ModelService changed (its versions, copies, or it went): its pool looks again."""
        if kind == "ModelService":
            for value in pooled_by(obj):
                namespace, _, pool = value.partition("/")
                yield KIND, namespace, pool

    def failed(self, ctx: Context, failure: Failure) -> None:
        report_failure(ctx, KIND, failure)


# ---- observe ------------------------------------------------------------------------------------------


def observe(ctx: Context, obj: Obj, spec: ModelPoolSpec, key: Key) -> PoolObservation:
    meta = build.PoolMeta.of(obj)
    template = build.template_hash(spec)
    servers = [observe_server(ctx, pod, template) for pod in ctx.caches.store("Pod").by_index("owner", meta.uid)
               if build.server_index(pod) is not None]
    demands = [d for ms in ctx.caches.store("ModelService").by_index("pool", f"{meta.namespace}/{meta.name}")
               if (d := demand_of(ctx, ms)) is not None]
    return PoolObservation(meta=meta, spec=spec, previous=obj.get("status") or {}, now=datetime.now(timezone.utc),
                           servers=servers, demands=demands, memory=ctx.memory.get(key) or PoolMemory(),
                           pod_monitor=ctx.serves(*POD_MONITOR))


def observe_server(ctx: Context, pod: Obj, template: str) -> Server:
    """A server pod and, when it runs and answers, what its Triton holds."""
    meta, status = pod["metadata"], pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    running = status.get("phase") == "Running" and bool(status.get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    report = ctx.writer.pool_client(f"http://{status['podIP']}:{build.HTTP_PORT}").report() if running else None
    return Server(name=meta["name"], index=build.server_index(pod) or 0, ready=bool(report and report.reachable),
                  deleting=bool(meta.get("deletionTimestamp")), failed=status.get("phase") in ("Failed", "Succeeded"),
                  current=annotations.get(build.ANNOTATION_TEMPLATE) == template,
                  ledger=Ledger.parse(annotations.get(build.ANNOTATION_LEDGER)), report=report)


def demand_of(ctx: Context, ms: Obj) -> Demand | None:
    """What a pooled ModelService asks: the versions its status serves (stable, canary), else the one its spec
    resolves to; its copies (autoscaling's min/max, else replicas; the canary at least the copies its step
    asks, status.canary.replicas); its declared size (resources.memory)."""
    try:
        spec = ModelServiceSpec.model_validate(ms.get("spec") or {})
    except ValidationError:
        return None  # its own controller refuses it
    status: dict[str, Any] = ms.get("status") or {}
    versions = [int(r["version"]) for r in (status.get("stable"), status.get("canary"))
                if isinstance(r, dict) and isinstance(r.get("version"), int)]
    target, _ = resolve_target(ctx, ms["metadata"]["namespace"], spec)
    if target is not None and target.signature is None:
        return None  # a pinned version without a signature: its own controller refuses it
    if not versions:
        if target is None:
            return None  # nothing to load yet; its own controller says why
        versions = [target.version]
    slices = ctx.caches.stores.get("EndpointSlice")
    endpoints = slices.get(ms["metadata"]["namespace"], service_name(ServiceMeta.of(ms))) if slices else None
    routed = tuple(str((e.get("targetRef") or {}).get("name")) for e in (endpoints or {}).get("endpoints") or [])
    stable, canary = status.get("stable"), status.get("canary")
    scaling = spec.autoscaling
    low, high = (scaling.min_replicas, scaling.max_replicas) if scaling else (spec.replicas, spec.replicas)
    declared = quantity(spec.resources.memory) if spec.resources.memory else None
    return Demand(service=ms["metadata"]["name"], created=str(ms["metadata"].get("creationTimestamp", "")),
                  model=spec.model.name, versions=tuple(dict.fromkeys(versions)), min_copies=low, max_copies=high,
                  declared_bytes=int(declared) if declared else None, autoscaling=scaling,
                  # its followed TrainingJob gone or training again: the versions its status serves keep
                  # their copies, with no signature to load more of them until the job says it again
                  triton=spec.triton.wire(), signature=(target.signature if target else None) or {}, involved=ms,
                  routed=routed,
                  routed_version=stable.get("version") if isinstance(stable, dict) else None,
                  canary_version=canary.get("version") if isinstance(canary, dict) else None,
                  canary_copies=int(canary.get("replicas") or 0) if isinstance(canary, dict) else 0,
                  held=ctx.demand.snapshot(ms["metadata"]["namespace"], ms["metadata"]["name"]).held
                  if ctx.demand and scaling and scaling.min_replicas == 0 else 0)
