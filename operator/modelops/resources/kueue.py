"""Kueue as the TrainingJob planner sees it: the job's Workload (desired and observed), where an admission
places the worker pods, and the Workload status writes of the job's side of Kueue's protocol (quota handed
back after an eviction, the workload finished with the job). Pure: no I/O.

A job labelled kueue.x-k8s.io/queue-name gets one Workload (owned by the job, controller reference) with one
podSet for its workers (they all have one shape). Kueue reserves quota for the whole podSet at once (gang
admission) and writes status.admission; the job then starts its whole group with the admission's flavors
(node labels, tolerations). When Kueue evicts the Workload (preemption, a deactivation...) the job removes its
group, then hands the quota back (QuotaReserved=False, admission cleared, Requeued), as Kueue's own job
integrations do; Kueue queues it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from modelops.resources.conditions import set_conditions
from modelops.resources.meta import OwnerMeta
from modelops.resources.naming import dns_label

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_API = "kueue.x-k8s.io/v1beta2"
PODSET = "workers"
ANNOTATION_SPEC_HASH = "modelops.dev/workload-spec"
LABEL_JOB_UID = "kueue.x-k8s.io/job-uid"
# Evictions after which Kueue's integrations mark the workload Requeued=True (the others wait for a change).
REQUEUED_REASONS = ("Preempted", "NodeFailures")


@dataclass(frozen=True)
class Placement:
    """Where an admission puts the pods: its flavors' node labels and tolerations."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ObservedWorkload:
    name: str
    resource_version: str = ""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    admission: dict[str, Any] | None = None
    spec_hash: str = ""

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> ObservedWorkload:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        admission = status.get("admission") if isinstance(status.get("admission"), dict) else None
        return cls(name=str(meta.get("name", "")), resource_version=str(meta.get("resourceVersion", "")),
                   conditions=conditions, admission=admission,
                   spec_hash=str((meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH, "")))

    def condition(self, cond_type: str) -> dict[str, Any] | None:
        found = next((c for c in self.conditions if c.get("type") == cond_type and c.get("status") == "True"), None)
        return found

    @property
    def evicted(self) -> dict[str, Any] | None:
        """The Evicted condition while Kueue is taking the admission back (the job must stop first)."""
        return self.condition("Evicted") if self.admission is not None else None

    @property
    def admitted(self) -> bool:
        return self.admission is not None and self.condition("Admitted") is not None and self.evicted is None

    @property
    def finished(self) -> bool:
        return self.condition("Finished") is not None

    @property
    def cluster_queue(self) -> str | None:
        return str(self.admission["clusterQueue"]) if self.admission and self.admission.get("clusterQueue") else None

    def pending(self) -> tuple[str, str]:
        """Kueue's reason and message for a workload without quota (QuotaReserved=False), else ('', '')."""
        cond = next((c for c in self.conditions if c.get("type") == "QuotaReserved" and c.get("status") == "False"),
                    None)
        return (str(cond.get("reason") or ""), str(cond.get("message") or "")) if cond else ("", "")


@dataclass(frozen=True)
class Queue:
    """What the planner needs of Kueue for one job: its LocalQueue, its Workload (None: not created yet),
    the job's priority (its PriorityClass's value) and the ResourceFlavors' placements by name."""

    name: str
    workload: ObservedWorkload | None = None
    priority: int | None = None
    flavors: dict[str, Placement] = field(default_factory=dict)
    served: bool = True
    """False: this cluster serves no Workload (Kueue is not installed)."""

    def placement(self) -> Placement:
        """The pods' placement under the admission: every flavor assigned to the workers' podSet."""
        admission = self.workload.admission if self.workload else None
        selector: dict[str, str] = {}
        tolerations: list[dict[str, Any]] = []
        for assignment in (admission or {}).get("podSetAssignments") or []:
            if assignment.get("name") != PODSET:
                continue
            for flavor in sorted(set((assignment.get("flavors") or {}).values())):
                placement = self.flavors.get(flavor, Placement())
                selector |= placement.node_selector
                tolerations += [t for t in placement.tolerations if t not in tolerations]
        return Placement(selector, tolerations)


def placement_of_flavor(flavor: dict[str, Any]) -> Placement:
    spec = flavor.get("spec") or {}
    labels = spec.get("nodeLabels")
    labels = labels if isinstance(labels, dict) else {}
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    return Placement({str(k): str(v) for k, v in labels.items()}, tolerations)


def workload_name(job_name: str, uid: str) -> str:
    """trainingjob-<job>-<uid's head>: a re-created job of the same name never meets the old Workload."""
    return dns_label(f"trainingjob-{job_name}", f"-{uid[:5]}")


def desired_workload(job: OwnerMeta, queue: Queue, workers: int,
                     template: dict[str, Any]) -> dict[str, Any]:
    """The job's Workload: one podSet of `workers` pods shaped like `template` (a worker pod's spec)."""
    pod_spec = {k: template[k] for k in ("containers", "nodeSelector", "tolerations", "affinity",
                                         "priorityClassName", "restartPolicy") if k in template}
    pod_spec["containers"] = [{k: c[k] for k in ("name", "image", "resources") if k in c}
                              for c in pod_spec.get("containers", [])]
    spec: dict[str, Any] = {"queueName": queue.name,
                            "podSets": [{"name": PODSET, "count": workers, "template": {"spec": pod_spec}}]}
    if template.get("priorityClassName") and queue.priority is not None:
        spec["priorityClassRef"] = {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                                    "name": template["priorityClassName"]}
        spec["priority"] = queue.priority
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": KUEUE_API, "kind": "Workload",
        "metadata": job.child_metadata(workload_name(job.name, job.uid), {
            "modelops.dev/training-job": dns_label(job.name), LABEL_JOB_UID: job.uid},
            {ANNOTATION_SPEC_HASH: digest}),
        "spec": spec,
    }


def _set(conditions: list[dict[str, Any]], cond: dict[str, Any]) -> list[dict[str, Any]]:
    return set_conditions(conditions, [cond])


def release(workload: ObservedWorkload, stamp: str) -> dict[str, Any]:
    """The status patch handing an evicted workload's quota back once its pods are gone (what Kueue's job
    integrations do): QuotaReserved=False, no admission, Admitted=False, Requeued."""
    evicted = workload.evicted or {}
    reason, message = str(evicted.get("reason") or "Evicted"), str(evicted.get("message") or "evicted")
    conditions = list(workload.conditions)
    for cond in ({"type": "Requeued", "status": "True" if reason in REQUEUED_REASONS else "False", "reason": reason,
                  "message": message[:32768]},
                 {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message[:32768]},
                 {"type": "Admitted", "status": "False", "reason": "NoReservation",
                  "message": "The workload has no reservation"}):
        conditions = _set(conditions, {**cond, "lastTransitionTime": stamp})
    return {"conditions": conditions, "admission": None}


def pods_ready(workload: ObservedWorkload, ready: bool, stamp: str) -> dict[str, Any] | None:
    """The status patch saying whether the admitted group runs (PodsReady: what Kueue's waitForPodsReady
    waits for), or None when the workload already says so."""
    old = next((c for c in workload.conditions if c.get("type") == "PodsReady"), None)
    status = "True" if ready else "False"
    if old is not None and old.get("status") == status:
        return None
    cond = {"type": "PodsReady", "status": status, "reason": "Started" if ready else "WaitForStart",
            "message": "All pods reached readiness and the workload is running" if ready else
            "Not all pods are ready or succeeded", "lastTransitionTime": stamp}
    return {"conditions": _set(list(workload.conditions), cond)}


def finish(workload: ObservedWorkload, succeeded: bool, message: str, stamp: str) -> dict[str, Any]:
    """The status patch marking the workload Finished with its job (Kueue releases its quota)."""
    cond = {"type": "Finished", "status": "True", "reason": "Succeeded" if succeeded else "Failed",
            "message": message[:32768] or ("the job succeeded" if succeeded else "the job failed"),
            "lastTransitionTime": stamp}
    return {"conditions": _set(list(workload.conditions), cond)}
