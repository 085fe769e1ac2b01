"""The TrainingJob controller: one pass reads the job and its pods from the caches, asks the planner,
writes only what differs, and says when it wants to look again."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from modelops import API_VERSION
from modelops.api.trainingjob import TrainingJobSpec
from modelops.controllers.common import (
    refusal_backoff, refusal_event, refuse_invalid_spec, report_failure, with_refusal, write_children, write_status)
from modelops.engine.cache import Obj, by_controller_uid, trim_pod
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Failure, Key
from modelops.kube import controller_owner
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources.kueue import KUEUE_API, QUEUE_LABEL, ObservedWorkload, Queue, placement_of_flavor, workload_name
from modelops.resources.trainingjob import TERMINAL, JobMeta, ObservedPod, plan

KIND = "TrainingJob"
# Unfinished jobs are looked at again at least this often, from memory (a safety net, not a poll).
RESYNC_SECONDS = 300.0

log = logging.getLogger(__name__)


class TrainingJobController:
    kind = KIND
    child_kinds = [ChildKind("v1", "Pod", trim_pod, {"owner": by_controller_uid}),
                   ChildKind("v1", "Service", indexes={"owner": by_controller_uid}),
                   # Kueue, where installed: the jobs' Workloads, and what admissions and priorities name
                   ChildKind(KUEUE_API, "Workload", indexes={"owner": by_controller_uid}, optional=True),
                   ChildKind(KUEUE_API, "ResourceFlavor", optional=True, labels=None, cluster_scoped=True),
                   ChildKind("scheduling.k8s.io/v1", "PriorityClass", optional=True, labels=None, cluster_scoped=True)]
    resource_indexes: dict[str, Any] = {}

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None:
        key = (KIND, namespace, name)
        job = ctx.caches.store(KIND).get(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            record_phase(KIND, namespace, name, None)
            refusal_backoff.forget(key)
            return None
        with reconcile_timer(KIND):
            return self._pass(ctx, job, key)

    def _pass(self, ctx: Context, job: Obj, key: Key) -> float | None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        uid = meta["uid"]
        try:
            spec = TrainingJobSpec.model_validate(job.get("spec") or {})
        except ValidationError as error:
            refuse_invalid_spec(ctx, job, error)
            return None
        owned = ctx.caches.store("Pod").by_index("owner", uid)
        pods = observed_pods(owned)
        previous: dict[str, Any] = job.get("status") or {}
        job_meta = JobMeta(name=name, namespace=namespace, uid=uid, generation=meta.get("generation"),
                           created=meta.get("creationTimestamp"))
        queue = queue_of(ctx, job, spec.priority_class_name)
        result = plan(job_meta, spec, pods, previous, datetime.now(timezone.utc), queue,
                      present=frozenset(p["metadata"]["name"] for p in owned))
        for warning in result.warnings:
            log.warning("TrainingJob %s/%s: %s", namespace, name, warning)

        status, requeue = result.status, result.requeue_after
        refusal = write_children(ctx, uid, result.apply, create_only_kinds=frozenset({"Pod", "Workload"}))
        if refusal:
            status = with_refusal(status, refusal, generation=meta.get("generation"),
                                  stored=previous.get("conditions", []))
            # the group was not (wholly) created, so it has not started: a worker missing is not a lost one
            status = {k: v for k, v in status.items() if k != "attempt"}
            if previous.get("attempt") is not None:
                status["attempt"] = previous["attempt"]
            requeue = refusal_backoff.next_delay(key)
        else:
            refusal_backoff.forget(key)
            for pod in result.delete_pods:
                ctx.children.delete(uid, "v1", "Pod", namespace, pod)
        if result.delete_workload:
            ctx.children.delete(uid, KUEUE_API, "Workload", namespace, result.delete_workload)
        if result.workload_status and queue and queue.workload:
            written = ctx.kube.patch_status(KUEUE_API, "Workload", namespace, queue.workload.name,
                                            result.workload_status, resource_version=queue.workload.resource_version)
            ctx.caches.remember(written)
        events = result.events + refusal_event(previous, refusal)
        write_status(ctx, job, status)
        for event in events:
            ctx.kube.post_event(job, event)
        if result.delete_job:
            log.info("TTL expired: deleting TrainingJob %s/%s", namespace, name)
            ctx.kube.delete(API_VERSION, KIND, namespace, name, uid=uid)
            record_phase(KIND, namespace, name, None)
            return None
        record_phase(KIND, namespace, name, status.get("phase"))
        if status.get("phase") not in TERMINAL:
            requeue = min(requeue if requeue is not None else RESYNC_SECONDS, RESYNC_SECONDS)
        return requeue

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        owner = controller_owner(new or old or {}, KIND)
        if owner and kind in ("Pod", "Service", "Workload"):
            yield KIND, (new or old or {})["metadata"].get("namespace", ""), owner.get("name", "")

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]:
        return ()

    def failed(self, ctx: Context, failure: Failure) -> None:
        report_failure(ctx, KIND, failure)


def queue_of(ctx: Context, job: Obj, priority_class: str | None) -> Queue | None:
    """The job's Kueue queue as the planner sees it (None when the job carries no queue-name label): its
    Workload, its PriorityClass's value and the ResourceFlavors, from the caches."""
    name = ((job["metadata"].get("labels") or {}).get(QUEUE_LABEL) or "").strip()
    if not name:
        return None
    if not ctx.serves(KUEUE_API, "Workload"):
        return Queue(name, served=False)
    meta = job["metadata"]
    expected = workload_name(meta["name"], meta["uid"])
    owned = [w for w in ctx.caches.store("Workload").by_index("owner", meta["uid"])]
    workload = next((w for w in owned if w["metadata"]["name"] == expected), owned[0] if owned else None)
    priority = None
    if priority_class and ctx.serves("scheduling.k8s.io/v1", "PriorityClass"):
        found = ctx.caches.store("PriorityClass").get("", priority_class)
        priority = found.get("value") if found and isinstance(found.get("value"), int) else None
    flavors = {f["metadata"]["name"]: placement_of_flavor(f) for f in ctx.caches.store("ResourceFlavor").items()} \
        if ctx.serves(KUEUE_API, "ResourceFlavor") else {}
    return Queue(name, ObservedWorkload.from_obj(workload) if workload else None, priority, flavors)


def observed_pods(pods: list[Obj]) -> list[ObservedPod]:
    """The job's worker pods as the planner sees them; a pod whose labels were edited into garbage is
    ignored with a warning (it belongs to no group) instead of breaking the pass."""
    observed = []
    for pod in pods:
        worker = ObservedPod.from_pod(pod)
        if worker.rank < 0 or worker.attempt < 0:
            log.warning("ignoring pod %s/%s: its rank/attempt labels are not numbers",
                        pod["metadata"].get("namespace"), worker.name)
            continue
        observed.append(worker)
    return observed

