"""The TrainingJob controller: observe (the job, its pods and its Kueue queue from the caches), one pure
plan (resources/trainingjob/planner.plan_job), one writer."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from modelops.api.trainingjob import TrainingJobSpec
from modelops.controllers.common import claimants, end_orphans, refuse_invalid_spec, report_failure, write_plan
from modelops.engine.cache import Obj, by_controller_uid, trim_pod
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Failure, Key
from modelops.kube import controller_owner
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources.kueue import KUEUE_API, QUEUE_LABEL, ObservedWorkload, Queue, placement_of_flavor, workload_name
from modelops.resources.meta import Claim, by_claim, by_unowned, is_ours, orphan_of
from modelops.resources.plan import with_orphans
from modelops.resources.trainingjob import LABEL_JOB, JobMeta, ObservedPod, plan_job, untrusted_workers

KIND = "TrainingJob"

log = logging.getLogger(__name__)


class TrainingJobController:
    kind = KIND
    # Workers are watched by identity, not by label: a pod whose labels were edited stays in sight (see
    # resources/meta.is_ours); the Service by our label (one that loses it is found again when applied).
    child_kinds = [ChildKind("v1", "Pod", trim_pod, {"owner": by_controller_uid, "claims": by_claim,
                                                     "unowned": by_unowned}, labels=None, keep=is_ours),
                   ChildKind("v1", "Service", indexes={"owner": by_controller_uid, "claims": by_claim}),
                   # Kueue, where installed: the jobs' Workloads, and what admissions and priorities name
                   # (a Workload is never re-applied, so it is watched by identity too)
                   ChildKind(KUEUE_API, "Workload", indexes={"owner": by_controller_uid, "claims": by_claim},
                             optional=True, labels=None, keep=is_ours),
                   ChildKind(KUEUE_API, "ResourceFlavor", optional=True, labels=None, cluster_scoped=True),
                   ChildKind("scheduling.k8s.io/v1", "PriorityClass", optional=True, labels=None, cluster_scoped=True)]
    resource_indexes: dict[str, Any] = {}

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None:
        key = (KIND, namespace, name)
        job = ctx.caches.store(KIND).get(namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            end_orphans(ctx, self.child_kinds, KIND, namespace, name)
            ctx.forget(key)
            record_phase(KIND, namespace, name, None)
            return None
        with reconcile_timer(KIND):
            try:
                spec = TrainingJobSpec.model_validate(job.get("spec") or {})
            except ValidationError as error:
                refuse_invalid_spec(ctx, job, error)
                return None
            meta = JobMeta.of(job)
            orphans = claimants(ctx, self.child_kinds, KIND, namespace, name)
            # an orphaned worker claiming this job is adopted in this pass: it is one of the group, not a loss
            owned = ctx.caches.store("Pod").by_index("owner", meta.uid) + \
                [p for p in orphans if p["kind"] == "Pod" and orphan_of(p, meta.uid)]
            untrusted = untrusted_workers(meta, ctx.caches.store("Pod").by_index("unowned", namespace))
            plan = plan_job(meta, spec, observed_pods(owned, meta), job.get("status") or {},
                            datetime.now(timezone.utc), queue_of(ctx, job, spec.priority_class_name),
                            present=frozenset(p["metadata"]["name"] for p in [*owned, *untrusted]),
                            untrusted=tuple(observed_pods(untrusted, meta)))
            return write_plan(ctx, key, job, with_orphans(plan, meta, orphans))

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        """The job controlling the child, or claiming it, before and after the change (an edit that took the
        owner reference or the claim away wakes the job that had it)."""
        if kind not in ("Pod", "Service", "Workload"):
            return
        for obj in (o for o in (old, new) if o):
            namespace = obj["metadata"].get("namespace", "")
            owner, claim = controller_owner(obj, KIND), Claim.of(obj)
            if owner:
                yield KIND, namespace, owner.get("name", "")
            if claim and claim.kind == KIND and not controller_owner(obj):
                yield KIND, namespace, claim.name  # an orphan: adopted or ended
            labels = obj["metadata"].get("labels") or {}
            if kind == "Pod" and not controller_owner(obj) and not claim and labels.get(LABEL_JOB):
                yield KIND, namespace, labels[LABEL_JOB]  # nothing proves whose: the job it names decides

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


def observed_pods(pods: list[Obj], job: JobMeta) -> list[ObservedPod]:
    """The job's worker pods as the planner sees them (attempt and rank from their names); a pod of the job
    whose name is not a worker's and whose labels were edited into garbage is ignored with a warning (it
    belongs to no group) instead of breaking the pass."""
    observed = []
    for pod in pods:
        worker = ObservedPod.from_pod(pod, job)
        if worker.rank < 0 or worker.attempt < 0:
            log.warning("ignoring pod %s/%s: its rank/attempt labels are not numbers",
                        pod["metadata"].get("namespace"), worker.name)
            continue
        observed.append(worker)
    return observed

