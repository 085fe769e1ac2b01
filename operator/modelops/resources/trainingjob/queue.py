"""The TrainingJob's side of Kueue: why a queued job waits, its Workload's writes, the queue's status.

resources/kueue.py is Kueue's object model; this module is the job's use of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.api.trainingjob import TrainingJobSpec
from modelops.resources.conditions import Cond
from modelops.resources.kueue import (ANNOTATION_SPEC_HASH, QUEUE_LABEL, Queue, desired_workload, finish,
                                      pods_ready, release)
from modelops.resources.trainingjob.builders import worker_pod
from modelops.resources.trainingjob.names import TERMINAL, JobMeta
from modelops.resources.trainingjob.observe import ObservedPod


@dataclass(frozen=True)
class QueueWrites:
    """This pass's writes to the job's Kueue Workload."""

    create: dict[str, Any] | None = None
    """The Workload to create (none exists yet)."""
    status: dict[str, Any] | None = None
    """A status patch (quota handed back, pods ready, finished), written with the Workload's resourceVersion."""
    delete: str | None = None
    """The Workload to delete (it no longer matches the job, or the job is suspended)."""


def queued_reason(queue: Queue) -> tuple[str, str]:
    """(reason, message) of a job waiting for Kueue: what Kueue says of its workload."""
    if not queue.served:
        return "QueueUnavailable", (f"the job asks for Kueue's LocalQueue {queue.name} (label {QUEUE_LABEL}), but this "
                                    "cluster serves no kueue.x-k8s.io Workload: is Kueue installed?")
    if queue.workload is None:
        return "WorkloadCreated", f"queued in LocalQueue {queue.name}: waiting for Kueue to look at the workload"
    if queue.workload.evicted is not None:
        return "Evicted", "Kueue evicted the workload: removing the workers before the quota is handed back"
    kueue_reason, kueue_message = queue.workload.pending()
    if kueue_reason:
        return "Queued", f"queued in LocalQueue {queue.name}: Kueue says {kueue_reason}: {kueue_message}"[:1024]
    return "Queued", f"queued in LocalQueue {queue.name}: waiting for Kueue to admit the workload"


def queue_writes(job: JobMeta, spec: TrainingJobSpec, queue: Queue | None, phase: str, message: str,
                 pods: list[ObservedPod], stamp: str) -> QueueWrites:
    """The Workload's side of the plan: create it (or replace one that no longer matches the job while not
    admitted), delete it while suspended, hand the quota back once an evicted group is gone, mark it finished
    with the job."""
    if queue is None or not queue.served:
        return QueueWrites()
    workload = queue.workload
    if phase in TERMINAL:
        if workload is not None and not workload.finished:
            return QueueWrites(status=finish(workload, phase == "Succeeded", message, stamp))
        return QueueWrites()
    if phase == "Suspended":
        return QueueWrites(delete=workload.name if workload is not None else None)
    desired = desired_workload(job, queue, spec.workers, worker_pod(job, spec, 0, 0)["spec"])
    if workload is None:
        return QueueWrites(create=desired)
    if workload.admission is None and workload.spec_hash != desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH]:
        return QueueWrites(delete=workload.name)  # Kueue's podSets are set at creation: a new one follows
    if workload.evicted is not None and not any(p.active for p in pods):
        return QueueWrites(status=release(workload, stamp))
    if workload.admitted:
        return QueueWrites(status=pods_ready(workload, phase == "Running", stamp))
    return QueueWrites()


def queue_conditions(queue: Queue, phase: str | None, reason: str, message: str) -> list[Cond]:
    admitted = queue.workload is not None and queue.workload.admitted
    return [Cond("Queued", phase == "Queued", reason if phase == "Queued" else "NotQueued",
                 message if phase == "Queued" else f"not waiting in LocalQueue {queue.name}"),
            Cond("Admitted", admitted, "Admitted" if admitted else "NotAdmitted",
                 f"Kueue admitted the workload in ClusterQueue {queue.workload.cluster_queue}"
                 if admitted and queue.workload else f"the workload holds no quota of LocalQueue {queue.name}")]


def queue_status(queue: Queue, phase: str | None, reason: str, message: str) -> dict[str, Any]:
    workload = queue.workload
    state = "Evicted" if workload and workload.evicted is not None else \
        "Admitted" if workload and workload.admitted else "Queued"
    kueue_reason, kueue_message = workload.pending() if workload else ("", "")
    if workload and workload.evicted is not None:
        kueue_reason = str(workload.evicted.get("reason") or "")
        kueue_message = str(workload.evicted.get("message") or "")
    # every key, empty when unknown: status is written as a merge patch, which would keep a stale nested key
    return {"name": queue.name, "workload": workload.name if workload else "",
            "clusterQueue": (workload.cluster_queue if workload else None) or "", "state": state,
            "reason": kueue_reason, "message": kueue_message[:1024]}
