"""kopf handlers for TrainingJobs: read the job and its pods, call the planner, apply, write status."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.trainingjob import TrainingJobSpec
from modelops.controllers.common import KeyedLocks, Requeuer, refuse_invalid_spec
from modelops.kube import Kube, controller_owner, status_patch
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources.trainingjob import LABEL_JOB, TERMINAL, JobMeta, ObservedPod, job_label, plan

KIND = "TrainingJob"
PLURAL = "trainingjobs"
# Active jobs are re-read at least this often, even without events (a safety net against missed watches).
RESYNC_SECONDS = 30.0

log = logging.getLogger(__name__)
_locks = KeyedLocks()
_requeue = Requeuer()


def reconcile(kube: Kube, namespace: str, name: str) -> None:
    """One pass over one job. Serialised per job: pod events and job events can arrive together."""
    with _locks.hold((namespace, name)), reconcile_timer(KIND):
        job = kube.get(API_VERSION, KIND, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            record_phase(KIND, namespace, name, None)
            return
        meta = JobMeta(name=name, namespace=namespace, uid=job["metadata"]["uid"],
                       generation=job["metadata"].get("generation"))
        previous: dict[str, Any] = job.get("status") or {}
        try:
            spec = TrainingJobSpec.model_validate(job.get("spec") or {})
        except ValidationError as error:
            refuse_invalid_spec(kube, job, error)
            return
        pods = [ObservedPod.from_pod(p) for p in kube.list("v1", "Pod", namespace, labels=f"{LABEL_JOB}={job_label(name)}")
                if (controller_owner(p, KIND) or {}).get("uid") == meta.uid]
        result = plan(meta, spec, pods, previous, datetime.now(timezone.utc))

        for obj in result.apply:
            kube.apply(obj)
        for pod in result.delete_pods:
            kube.delete("v1", "Pod", namespace, pod)
        patch = status_patch(previous, result.status)
        if patch:
            kube.patch_status(API_VERSION, KIND, namespace, name, patch)
        for event in result.events:
            kube.post_event(job, event)
        if result.delete_job:
            log.info("TTL expired: deleting TrainingJob %s/%s", namespace, name)
            kube.delete(API_VERSION, KIND, namespace, name, uid=meta.uid)
            record_phase(KIND, namespace, name, None)
            return
        record_phase(KIND, namespace, name, result.status.get("phase"))

        delay = result.requeue_after
        if result.status.get("phase") not in TERMINAL:
            delay = min(delay if delay is not None else RESYNC_SECONDS, RESYNC_SECONDS)
        if delay is not None:
            _requeue.after((namespace, name), delay, lambda: reconcile(kube, namespace, name))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_job(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    reconcile(memo.kube, namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: no finalizer, children go by owner refs
def on_job_deleted(name: str, namespace: str, **_: Any) -> None:
    _requeue.cancel((namespace, name))
    record_phase(KIND, namespace, name, None)


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
def on_worker_pod(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    owner = controller_owner(dict(body), KIND)
    if owner:
        reconcile(memo.kube, namespace, owner["name"])
