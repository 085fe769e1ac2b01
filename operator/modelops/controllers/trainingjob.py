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
from modelops.resources.trainingjob import TERMINAL, JobMeta, ObservedPod, plan

KIND = "TrainingJob"
# Unfinished jobs are looked at again at least this often, from memory (a safety net, not a poll).
RESYNC_SECONDS = 300.0

log = logging.getLogger(__name__)


class TrainingJobController:
    kind = KIND
    child_kinds = [ChildKind("v1", "Pod", trim_pod, {"owner": by_controller_uid}),
                   ChildKind("v1", "Service", indexes={"owner": by_controller_uid})]
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
        pods = observed_pods(ctx.caches.store("Pod").by_index("owner", uid))
        previous: dict[str, Any] = job.get("status") or {}
        job_meta = JobMeta(name=name, namespace=namespace, uid=uid, generation=meta.get("generation"),
                           created=meta.get("creationTimestamp"))
        result = plan(job_meta, spec, pods, previous, datetime.now(timezone.utc))
        for warning in result.warnings:
            log.warning("TrainingJob %s/%s: %s", namespace, name, warning)

        status, requeue = result.status, result.requeue_after
        refusal = write_children(ctx, uid, result.apply, create_only_kinds=frozenset({"Pod"}))
        if refusal:
            status = with_refusal(status, refusal, generation=meta.get("generation"))
            requeue = refusal_backoff.next_delay(key)
        else:
            refusal_backoff.forget(key)
            for pod in result.delete_pods:
                ctx.children.delete(uid, "v1", "Pod", namespace, pod)
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
        if owner and kind in ("Pod", "Service"):
            yield KIND, (new or old or {})["metadata"].get("namespace", ""), owner.get("name", "")

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]:
        return ()

    def failed(self, ctx: Context, failure: Failure) -> None:
        report_failure(ctx, KIND, failure)


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

