"""Pure planning for TrainingJobs: from the spec and the observed worker pods to desired objects and status.

The worker group of one attempt is `workers` pods named <job>-a<attempt>-w<rank>. A DDP group cannot
continue short a rank, so any worker that ends or disappears without succeeding ends the attempt: the rest
are deleted and attempt+1 starts (resuming from the checkpoint). How an attempt ended is recorded:
- Failed: a worker failed on its own (its container exited non-zero). Counts against `backoffLimit`.
- Preempted: Kubernetes or a person took a worker away: preempted by the scheduler, evicted (Eviction API,
  node drain, node pressure), its node lost, or deleted (pod condition DisruptionTarget, or a deletion
  while it ran). Not a failure: `backoffLimit` is not consumed; status.preemptions counts them.
- Suspended: spec.suspend removed the group.
The record lives in status.endedAttempts and on every pod of the next attempt (annotation
modelops.dev/ended-attempts); failed pods are kept (they hold no resources) so failures are also rebuilt
from the world after an operator restart. No I/O here: the controller applies the Plan.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelops import API_VERSION
from modelops.api.base import MODEL_NAME
from modelops.api.trainingjob import Progress, PublishedModel, TrainingJobSpec
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.resources.kueue import (ANNOTATION_SPEC_HASH as ANNOTATION_WORKLOAD_SPEC, QUEUE_LABEL, Placement, Queue,
                                      desired_workload, finish, pods_ready, release)
from modelops.resources.pods import compute_resources, tolerations
from modelops.resources.naming import dns1035_label, dns_label
from modelops.clock import parse_rfc3339, rfc3339

LABEL_JOB = "modelops.dev/training-job"
LABEL_RANK = "modelops.dev/rank"
LABEL_ATTEMPT = "modelops.dev/attempt"
ANNOTATION_PROGRESS = "modelops.dev/progress"
ANNOTATION_POD_SPEC = "modelops.dev/pod-spec"
ANNOTATION_ENDED_ATTEMPTS = "modelops.dev/ended-attempts"
# How an attempt ended (status.endedAttempts values).
FAILED, PREEMPTED, SUSPENDED = "Failed", "Preempted", "Suspended"
RENDEZVOUS_PORT = 29500
TRAINER_CONTAINER = "trainer"
REPOSITORY_VOLUME = "model-repository"
DEFAULT_COMMAND = ["python", "-m", "modelops.trainer"]
# Spec fields that only steer the controller; every other field shapes the pods.
CONTROL_FIELDS = {"suspend", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"}
TERMINAL = ("Succeeded", "Failed")
LOCAL_MASTER = "127.0.0.1"
# Container waiting reasons that mean the worker cannot start without someone changing something
# (ContainerCreating and PodInitializing are normal waits, not listed).
STUCK_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                 "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "CrashLoopBackOff")
WAIT_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class JobMeta:
    name: str
    namespace: str
    uid: str
    generation: int | None = None
    created: str | None = None
    """The job's creationTimestamp: no start or completion it records can be earlier."""


@dataclass(frozen=True)
class ObservedPod:
    """What the planner needs to know about one worker pod."""

    name: str
    rank: int
    attempt: int
    phase: str
    deleting: bool = False
    exit_code: int | None = None
    reason: str = ""
    pod_spec: str | None = None
    progress: dict[str, Any] | None = None
    finished: str | None = None
    """When its trainer container ended (terminated.finishedAt)."""
    waiting_reason: str = ""
    """Why a pending worker cannot start: the scheduler's (Unschedulable) or the kubelet's (ImagePullBackOff...)."""
    waiting_message: str = ""
    disruption: str = ""
    """Why Kubernetes is taking the pod away: the reason of its DisruptionTarget condition
    (PreemptionByScheduler, EvictionByEvictionAPI, TerminationByKubelet, DeletionByTaintManager...)."""
    disruption_message: str = ""
    ended_attempts: tuple[tuple[int, str], ...] = ()
    """How the attempts before this pod's ended, as recorded when its attempt started."""

    @property
    def active(self) -> bool:
        """Still holds (or may hold) resources: not finished."""
        return self.phase not in TERMINAL

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> ObservedPod:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        labels, annotations = meta.get("labels", {}) or {}, meta.get("annotations", {}) or {}
        terminated = next((cs.get("state", {}).get("terminated") for cs in status.get("containerStatuses") or []
                           if cs.get("name") == TRAINER_CONTAINER), None) or {}
        progress = _json_object(annotations.get(ANNOTATION_PROGRESS))
        final = _json_object(terminated.get("message"))
        if final and "model" in final and not (progress or {}).get("model"):
            # The trainer also writes its final report to the termination log: it still counts when
            # the pod could not patch its own annotation (e.g. a ServiceAccount without the Role).
            progress = final
        phase = status.get("phase") or "Pending"
        waiting_reason, waiting_message = _waiting(status) if phase == "Pending" else ("", "")
        disruption = next((c for c in status.get("conditions") or [] if isinstance(c, dict)
                           and c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        return cls(
            name=meta["name"], rank=_int_label(labels, LABEL_RANK), attempt=_int_label(labels, LABEL_ATTEMPT),
            phase=phase, deleting=bool(meta.get("deletionTimestamp")),
            exit_code=terminated.get("exitCode"),
            reason=terminated.get("reason") or status.get("reason") or "",
            pod_spec=annotations.get(ANNOTATION_POD_SPEC),
            progress=progress,
            finished=terminated.get("finishedAt") if isinstance(terminated.get("finishedAt"), str) else None,
            waiting_reason=waiting_reason, waiting_message=waiting_message,
            disruption=str(disruption.get("reason") or "DisruptionTarget") if disruption else "",
            disruption_message=str(disruption.get("message") or "") if disruption else "",
            ended_attempts=tuple(sorted(ended_attempts_of(_json_object(annotations.get(ANNOTATION_ENDED_ATTEMPTS))).items())),
        )


def _waiting(status: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of a pending pod that cannot go on: not scheduled (PodScheduled=False, as the
    scheduler wrote it), or a container stuck waiting (image pull, config). ('', '') for a normal wait."""
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or "")
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = ((cs or {}).get("state") or {}).get("waiting") or {}
        if isinstance(waiting, dict) and waiting.get("reason") in STUCK_REASONS:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    return "", ""


def ended_attempts_of(record: Any) -> dict[int, str]:
    """A recorded {attempt: how it ended} map (status.endedAttempts or the pod annotation), whatever was
    written there: entries that are not (number, known outcome) are ignored."""
    ended: dict[int, str] = {}
    for key, value in (record.items() if isinstance(record, dict) else ()):
        try:
            attempt = int(key)
        except (TypeError, ValueError):
            continue
        if attempt >= 0 and value in (FAILED, PREEMPTED, SUSPENDED):
            ended[attempt] = value
    return ended


def _int_label(labels: dict[str, Any], key: str) -> int:
    """A label we wrote as an integer; a hand-edited garbage value reads as -1 (a pod of no group)."""
    try:
        value = int(str(labels.get(key, "0")))
    except ValueError:
        return -1
    return value if value >= 0 else -1


def _json_object(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Plan:
    """What the controller should do, in order: apply, delete pods, write status, post events."""

    apply: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    workload_status: dict[str, Any] | None = None
    """A status patch for the job's Kueue Workload (quota handed back, finished), written with its
    resourceVersion."""
    delete_workload: str | None = None
    """The job's Workload to delete (it no longer matches the job, or the job is suspended)."""
    requeue_after: float | None = None
    warnings: list[str] = field(default_factory=list)
    """What the world said that made no sense (ignored); the controller logs it."""


# ---- names -------------------------------------------------------------------


def job_label(job: str) -> str:
    return dns_label(job)


def pod_name(job: str, attempt: int, rank: int) -> str:
    return dns_label(job, f"-a{attempt}-w{rank}")


def service_name(job: str) -> str:
    return dns1035_label(job, "-workers")


def worker_hostname(job: str, rank: int) -> str:
    return dns_label(job, f"-w{rank}")


# ---- desired objects -----------------------------------------------------------


def pod_shaping_spec(spec: TrainingJobSpec) -> dict[str, Any]:
    """The part of the spec that shapes the pods; pods record it to detect edits of a running group."""
    return {k: v for k, v in spec.wire().items() if k not in CONTROL_FIELDS}


def trainer_args(spec: TrainingJobSpec) -> list[str]:
    t = spec.trainer
    args = ["--data-path", t.data_path, "--label-column", t.label_column] if t.data_path else \
        ["--dataset", t.dataset or "digits"]
    args += [
        "--missing", t.missing, *(["--model", t.model] if t.model else []), "--hidden-sizes", ",".join(map(str, t.hidden_sizes)),
        "--epochs", str(t.epochs), "--batch-size", str(t.batch_size), "--lr", repr(t.learning_rate),
        "--seed", str(t.seed), "--augment" if t.augment else "--no-augment",
        "--val-fraction", repr(t.val_fraction), "--test-fraction", repr(t.test_fraction),
        "--max-batch-size", str(t.max_batch_size),
        "--repository", spec.output.repository.mount_path, "--model-name", spec.output.model_name,
    ]
    return args


def rendezvous_env(job: JobMeta, spec: TrainingJobSpec, rank: int) -> list[dict[str, Any]]:
    """The pod's rendezvous env, torchrun semantics: pod `rank` (GROUP_RANK, torchrun's node rank) runs
    LOCAL_WORLD_SIZE = nprocPerNode ranks of a WORLD_SIZE = workers x nprocPerNode group. RANK/LOCAL_RANK
    name the pod's first process; the built-in trainer (or torchrun, from the PET_* variables) starts
    the pod's processes and gives each its own RANK = GROUP_RANK x LOCAL_WORLD_SIZE + LOCAL_RANK."""
    nproc = spec.ranks_per_pod()
    world = spec.workers * nproc
    env: dict[str, Any] = {"WORLD_SIZE": world, "RANK": rank * nproc, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": nproc,
                           "GROUP_RANK": rank, "NODE_RANK": rank}
    if world > 1:
        master = f"{worker_hostname(job.name, 0)}.{service_name(job.name)}" if spec.workers > 1 else LOCAL_MASTER
        env |= {"MASTER_ADDR": master, "MASTER_PORT": RENDEZVOUS_PORT,
                "PET_NNODES": spec.workers, "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": rank,
                "PET_MASTER_ADDR": master, "PET_MASTER_PORT": RENDEZVOUS_PORT}
    return [{"name": k, "value": str(v)} for k, v in env.items()]


def worker_pod(job: JobMeta, spec: TrainingJobSpec, attempt: int, rank: int,
               ended: dict[int, str] | None = None, placement: Placement | None = None) -> dict[str, Any]:
    """Worker `rank` of `attempt`; `placement`: where a Kueue admission puts it (its flavors' node labels and
    tolerations, added to the spec's)."""
    repository = spec.output.repository
    env = [e.wire() for e in spec.env] + rendezvous_env(job, spec, rank) + [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MODELOPS_JOB_NAME", "value": job.name},
        {"name": "MODELOPS_JOB_UID", "value": job.uid},
        {"name": "MODELOPS_TRAINER_IMAGE", "value": spec.image},  # lineage, recorded with the published version
        {"name": "MODELOPS_ATTEMPT", "value": str(attempt)},
        {"name": "MODELOPS_REPOSITORY", "value": repository.mount_path},
        {"name": "MODELOPS_MODEL_NAME", "value": spec.output.model_name},
    ]
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER, "image": spec.image, "imagePullPolicy": spec.image_pull_policy,
        "command": spec.command or DEFAULT_COMMAND,
        "args": spec.args if spec.args is not None else ([] if spec.command else trainer_args(spec)),
        "env": env,
        "resources": compute_resources(spec.resources),
        "volumeMounts": [{"name": REPOSITORY_VOLUME, "mountPath": repository.mount_path}],
    }
    if spec.workers > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_tolerations = tolerations(spec.tolerations, spec.resources)
    if repository.persistent_volume_claim:
        volume = {"name": REPOSITORY_VOLUME, "persistentVolumeClaim": repository.persistent_volume_claim.wire()}
    else:
        assert repository.host_path is not None  # the schema requires exactly one source
        volume = {"name": REPOSITORY_VOLUME, "hostPath": {"path": repository.host_path.path,
                                                         "type": "DirectoryOrCreate"}}
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": [volume]}
    if placement:
        pod_tolerations += [t for t in placement.tolerations if t not in pod_tolerations]
    if pod_tolerations:
        pod_spec["tolerations"] = pod_tolerations
    node_selector = {**spec.node_selector, **(placement.node_selector if placement else {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.scheduler_name:
        pod_spec["schedulerName"] = spec.scheduler_name
    if spec.affinity and spec.affinity.node_affinity:
        pod_spec["affinity"] = spec.affinity.wire()
    if spec.workers > 1:
        pod_spec["hostname"] = worker_hostname(job.name, rank)
        pod_spec["subdomain"] = service_name(job.name)
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(job.name, attempt, rank), "namespace": job.namespace,
            "labels": {**spec.pod_labels,
                       "app.kubernetes.io/name": "modelops-trainer", "app.kubernetes.io/managed-by": "modelops",
                       LABEL_JOB: job_label(job.name), LABEL_RANK: str(rank), LABEL_ATTEMPT: str(attempt)},
            "annotations": {**spec.pod_annotations,
                            ANNOTATION_POD_SPEC: json.dumps(pod_shaping_spec(spec), sort_keys=True),
                            **({ANNOTATION_ENDED_ATTEMPTS: json.dumps({str(a): o for a, o in sorted(ended.items())})}
                               if ended else {})},
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def rendezvous_service(job: JobMeta) -> dict[str, Any]:
    """Headless Service giving each DDP worker a stable DNS name (<hostname>.<service>)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(job.name), "namespace": job.namespace,
                     "labels": {"app.kubernetes.io/managed-by": "modelops", LABEL_JOB: job_label(job.name)},
                     "ownerReferences": [owner_reference(job)]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {LABEL_JOB: job_label(job.name)},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}]},
    }


def owner_reference(job: JobMeta) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "name": job.name, "uid": job.uid,
            "controller": True, "blockOwnerDeletion": True}


# ---- the plan ------------------------------------------------------------------


def plan(job: JobMeta, spec: TrainingJobSpec, pods: list[ObservedPod], previous: dict[str, Any],
         now: datetime, queue: Queue | None = None, *, present: frozenset[str] | None = None) -> Plan:
    """Decide everything for one reconcile pass. `previous` is the last written status: only its recorded
    facts (start/completion time, a terminal phase, the last progress, the attempts started and how they
    ended) are read from it. `queue`: the job's Kueue queue (label kueue.x-k8s.io/queue-name), None for a job
    that is not queued: then no group starts before its Workload is admitted, and an evicted one is removed.
    `present`: the names of all the job's pods, also those whose labels were edited into garbage (not in
    `pods`): a worker whose pod is there is not missing."""
    result = Plan()
    stamp = rfc3339(now)
    ended = _ended_attempts(previous, pods)
    started = _started_attempt(previous, pods, ended)
    current = max([*(p.attempt for p in pods), *([started] if started is not None else []),
                   *(a + 1 for a in ended)], default=0)
    # The last status is an observation, used only where the world does not contradict it.
    start_time = _bounded_time(previous.get("startTime"), job.created, now)
    finished = [p.finished for p in pods if p.finished]
    completion_time = _bounded_time(previous.get("completionTime"), max(finished, default=job.created), now)
    phase = previous.get("phase") if previous.get("phase") in TERMINAL else None
    live = [p for p in pods if p.attempt == current and p.active and not p.deleting]
    if phase and live:
        result.warnings.append(f"status.phase {phase} ignored: {len(live)} worker(s) of attempt {current} "
                               "are still running")
        phase, completion_time = None, None
    reason, message = "", ""
    waiting_for = ""  # what the first stuck worker's scheduler or kubelet says (an Event when it changes)
    model = previous.get("model")
    refused = ""
    ending: Ending | None = None  # the current attempt ends in this pass

    progress = previous.get("progress")
    rank0 = next((p for p in pods if p.attempt == current and p.rank == 0), None)
    if rank0 and rank0.progress:
        progress = _progress(rank0.progress, result.warnings) or progress

    workload = queue.workload if queue else None
    if phase is None and not spec.suspend:
        ending = _ending(job, spec, [p for p in pods if p.attempt == current], started == current,
                         evicted=workload.evicted if workload else None,
                         present=present if present is not None else frozenset(p.name for p in pods))
        if ending and current not in ended:
            ended[current] = ending.outcome
            current += 1
        else:
            ending = None
    group = {p.rank: p for p in pods if p.attempt == current}
    active_stale = [p for p in pods if p.active and p.attempt != current]
    failures = sorted(a for a, outcome in ended.items() if outcome == FAILED)
    last = max(ended, default=None)
    restarting = last is not None and last == current - 1 and ended[last] != SUSPENDED and not group

    if phase is None and spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend is true: workers removed"
        result.delete_pods = [p.name for p in pods if p.active and not p.deleting]
        start_time = None
        if group:
            ended[current] = SUSPENDED
    elif phase is None:
        deadline = spec.active_deadline_seconds
        elapsed = (now - parse_rfc3339(start_time)).total_seconds() if start_time else 0.0
        if restarting and ended[current - 1] == FAILED and len(failures) > spec.backoff_limit:
            phase, reason = "Failed", "BackoffLimitExceeded"
            message = f"{_ended_message(ending, pods, current - 1)}; {len(failures)} failed attempt(s), " \
                      f"backoffLimit is {spec.backoff_limit}"
        elif deadline and start_time and elapsed >= deadline:
            phase, reason = "Failed", "DeadlineExceeded"
            message = f"the job ran {elapsed:.0f}s, longer than activeDeadlineSeconds={deadline}"
        elif group and len(group) == spec.workers and all(p.phase == "Succeeded" for p in group.values()):
            phase, reason = "Succeeded", "ModelPublished"
            model = _published_model(rank0.progress if rank0 else None, result.warnings) or model
            message = f"published {model['name']} version {model['version']} at {model['uri']}" if model else \
                "all workers succeeded; the trainer reported no published model"
        else:
            refused = _refused_change(spec, list(group.values()))
            if active_stale:
                # A new attempt starts only once no worker of an earlier one is left.
                result.delete_pods = [p.name for p in active_stale if not p.deleting]
            elif not refused and (queue is None or (workload is not None and workload.admitted)):
                result.apply = _group_objects(job, spec, current, existing=set(group), ended=ended,
                                              placement=queue.placement() if queue else None)
                if any(obj["kind"] == "Pod" for obj in result.apply):
                    start_time = start_time or stamp
            running = sum(p.phase == "Running" for p in group.values())
            stuck = sorted((p for p in group.values() if p.waiting_reason and not p.deleting), key=lambda p: p.rank)
            queued = queue is not None and not group and not (workload is not None and workload.admitted)
            if queued and queue is not None:
                phase, reason, message = "Queued", *_queued(queue)
                start_time = None if not started and not ended else start_time
            elif restarting and ended[current - 1] == FAILED:
                phase, reason = "Pending", "Restarting"
                message = f"restarting after: {_ended_message(ending, pods, current - 1)}"
            elif restarting:
                phase, reason = "Pending", "Preempted"
                message = f"restarting from the checkpoint after: {_ended_message(ending, pods, current - 1)}"
            elif running == spec.workers:
                phase, reason, message = "Running", "WorkersRunning", f"{running}/{spec.workers} workers running"
            elif stuck:
                phase, reason, message = "Pending", stuck[0].waiting_reason, _describe_wait(stuck, spec.workers)
                # the head of the quote always fits the (truncated) message, so it is found there next pass
                waiting_for = (stuck[0].waiting_message or stuck[0].waiting_reason)[:WAIT_MESSAGE_LIMIT // 2]
            else:
                phase, reason = "Pending", "WorkersStarting"
                message = f"{running}/{spec.workers} workers running"
            if ending and phase in ("Pending", "Queued"):
                preemptions = sum(outcome == PREEMPTED for outcome in ended.values())
                result.events.append(
                    Event("Warning", "WorkerFailed", f"{ending.message}; restarting the group "
                                                     f"(restart {len(failures)} of {spec.backoff_limit})")
                    if ending.outcome == FAILED else
                    Event("Warning", "Preempted" if ending.by_queue else "WorkerPreempted",
                          f"{ending.message}; " + ("the group is removed and the job queued again, to resume from "
                                                   "its checkpoint" if ending.by_queue else
                                                   "restarting the group from its checkpoint") +
                          f" (preemption {preemptions}, not counted against backoffLimit)"))
        if deadline and start_time and phase not in TERMINAL:
            result.requeue_after = max(0.0, deadline - elapsed)
        if phase in TERMINAL:
            completion_time = stamp
            result.delete_pods = [p.name for p in pods if p.active and not p.deleting]
            result.apply = []
    else:
        # Finished jobs stay finished; make sure no worker lingers (e.g. a delete lost to a restart).
        result.delete_pods = [p.name for p in pods if p.active and not p.deleting]
        reason, message = _terminal_reason(previous)

    if queue is not None and queue.served:
        _queue_writes(result, job, spec, queue, phase, message, pods, stamp)

    if phase in TERMINAL and spec.ttl_seconds_after_finished is not None and completion_time:
        remaining = spec.ttl_seconds_after_finished - (now - parse_rfc3339(completion_time)).total_seconds()
        if remaining <= 0:
            result.delete_job = True
        else:
            result.requeue_after = remaining

    counts = {
        "desired": spec.workers,
        "running": sum(p.phase == "Running" for p in group.values()),
        "succeeded": sum(p.phase == "Succeeded" for p in group.values()),
        "failed": sum(p.phase == "Failed" for p in group.values()),
    }
    preempted = _preempted_condition(previous, phase, ending)
    # While workers wait, Ready and Reconciling quote why; the other conditions just say Pending (so
    # `kubectl describe` shows the scheduler's words twice, not seven times).
    other = ("WorkersPending", f"{counts_running(group)}/{spec.workers} workers running") if waiting_for \
        else (reason, message)
    conditions = merge_conditions(previous.get("conditions", []), [
        Cond("Ready", phase == "Succeeded", reason, message),
        Cond("Running", phase == "Running", *other),
        Cond("Succeeded", phase == "Succeeded", *other),
        Cond("Failed", phase == "Failed", *other),
        Cond("Suspended", phase == "Suspended", *other),
        Cond("Reconciling", phase in ("Queued", "Pending", "Running"), reason, message),
        Cond("Stalled", phase == "Failed", *other),
        Cond("UpdateRefused", bool(refused), "ImmutableWhileRunning" if refused else "", refused),
        preempted,
        *(_queue_conditions(queue, phase, reason, message) if queue else []),
    ], now=stamp, generation=job.generation)
    pods_started = bool(group) or any(obj["kind"] == "Pod" for obj in result.apply)
    status: dict[str, Any] = {
        "observedGeneration": job.generation, "phase": phase, "conditions": conditions,
        "workers": counts, "workersReady": f"{counts['running']}/{spec.workers}",
        "restarts": len([a for a in failures if not (phase == "Failed" and a == max(failures))]),
        "preemptions": sum(outcome == PREEMPTED for outcome in ended.values()),
        "attempt": current if pods_started else started,
        "endedAttempts": {str(a): outcome for a, outcome in sorted(ended.items())} or None,
        "queue": _queue_status(queue, phase, reason, message) if queue else None,
        "startTime": start_time, "completionTime": completion_time if phase in TERMINAL else None,
        "progress": progress, "progressSummary": _summary(progress), "model": model,
    }
    result.status = {k: v for k, v in status.items() if v is not None}
    result.events += _transition_events(previous, result.status, waiting_for)
    return result


@dataclass(frozen=True)
class Ending:
    """Why the current attempt is over: a worker ended or disappeared without succeeding."""

    outcome: str  # FAILED or PREEMPTED
    message: str
    by_queue: bool = False
    """Kueue evicted the job's workload (preempted it in its ClusterQueue, deactivated it...)."""


def _ending(job: JobMeta, spec: TrainingJobSpec, attempt: list[ObservedPod], started: bool,
            evicted: dict[str, Any] | None = None, present: frozenset[str] = frozenset()) -> Ending | None:
    """Whether the attempt's group is over (a DDP group cannot go on short a rank), and why. A worker that
    failed on its own ends it as a failure; one taken away (DisruptionTarget, a deletion, gone after it
    started) as a preemption, and so does Kueue evicting the job's workload."""
    if evicted is not None and (started or attempt) and any(p.phase != "Succeeded" for p in attempt):
        why = f"{evicted.get('reason') or 'Evicted'}: {evicted.get('message') or ''}".rstrip(": ")
        return Ending(PREEMPTED, f"Kueue evicted the job's workload ({why})", by_queue=True)
    failed = sorted((p for p in attempt if p.phase == "Failed" and not p.disruption and not p.deleting),
                    key=lambda p: p.rank)
    if failed:
        return Ending(FAILED, _describe_failure(failed[0]))
    taken = sorted((p for p in attempt if p.phase != "Succeeded" and (p.disruption or p.deleting
                                                                      or p.phase == "Failed")),
                   key=lambda p: p.rank)
    if taken:
        p = taken[0]
        if p.disruption:
            why = f"{p.disruption}: {p.disruption_message}" if p.disruption_message else p.disruption
            return Ending(PREEMPTED, f"worker {p.rank} (pod {p.name}) was preempted ({why})")
        return Ending(PREEMPTED, f"worker {p.rank} (pod {p.name}) was deleted while it ran")
    ranks = {p.rank for p in attempt}
    number = attempt[0].attempt if attempt else None
    missing = [rank for rank in range(_group_size(spec, attempt)) if rank not in ranks
               and (number is None or pod_name(job.name, number, rank) not in present)]
    if started and missing:
        return Ending(PREEMPTED, f"worker {missing[0]} disappeared (its pod was deleted)")
    return None


def _group_size(spec: TrainingJobSpec, attempt: list[ObservedPod]) -> int:
    """How many workers the attempt's group was started with (its pods record the spec they were made
    from; an edit of spec.workers since then is refused, not a missing worker)."""
    for p in attempt:
        recorded = _json_object(p.pod_spec)
        if recorded and _count(recorded.get("workers")):
            return int(recorded["workers"])
    return spec.workers


def _ended_attempts(previous: dict[str, Any], pods: list[ObservedPod]) -> dict[int, str]:
    """How the earlier attempts ended: as recorded (the status, the pods' annotation), and failed workers
    still there (a record lost with the status is rebuilt from them)."""
    ended: dict[int, str] = {}
    for p in sorted(pods, key=lambda p: p.attempt):
        ended |= dict(p.ended_attempts)
    ended |= ended_attempts_of(previous.get("endedAttempts"))
    # while workers of an attempt still run, neither it nor a later one has ended, whatever a record says
    # (a group starts only once no earlier worker is left; this pass decides again from the world)
    running = min((p.attempt for p in pods if p.active and not p.deleting), default=None)
    if running is not None:
        ended = {a: outcome for a, outcome in ended.items() if a < running}
    newest = max((p.attempt for p in pods), default=-1)
    for p in pods:
        if p.attempt < newest and p.attempt not in ended and p.phase == "Failed" and not p.disruption \
                and not p.deleting:
            ended[p.attempt] = FAILED
    return ended


def _started_attempt(previous: dict[str, Any], pods: list[ObservedPod], ended: dict[int, str]) -> int | None:
    """The attempt the last status says was started, unless the world contradicts it: a worker of an earlier
    attempt still running, or an attempt beyond any the pods and the record know."""
    recorded = previous.get("attempt")
    if not _count(recorded):
        return None
    known = max([*(p.attempt for p in pods), *(a + 1 for a in ended), 0])
    if recorded > known or any(p.attempt < recorded and p.active and not p.deleting for p in pods):
        return None
    return int(recorded)


def _ended_message(ending: Ending | None, pods: list[ObservedPod], attempt: int) -> str:
    """What ended `attempt`: the decision of this pass, else its failed worker if still there."""
    if ending:
        return ending.message
    failed = sorted((p for p in pods if p.attempt == attempt and p.phase == "Failed"), key=lambda p: p.rank)
    return _describe_failure(failed[0]) if failed else f"attempt {attempt} ended"


def _preempted_condition(previous: dict[str, Any], phase: str | None, ending: Ending | None) -> Cond:
    """Preempted: from the moment a group is taken away until a new group runs (or the job ends)."""
    if ending and ending.outcome == PREEMPTED:
        return Cond("Preempted", True, "EvictedByKueue" if ending.by_queue else "WorkerPreempted", ending.message)
    old = next((c for c in previous.get("conditions", []) if c.get("type") == "Preempted"), {})
    if old.get("status") == "True" and phase in ("Pending", "Queued"):
        return Cond("Preempted", True, old.get("reason", "WorkerPreempted"), old.get("message", ""))
    return Cond("Preempted", False, "NotPreempted", "the group runs" if phase == "Running" else
                "no worker group was taken away since the last one started")


def _queued(queue: Queue) -> tuple[str, str]:
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


def _queue_writes(result: Plan, job: JobMeta, spec: TrainingJobSpec, queue: Queue, phase: str | None,
                  message: str, pods: list[ObservedPod], stamp: str) -> None:
    """The Workload's side of the plan: create it (or replace one that no longer matches the job while not
    admitted), delete it while suspended, hand the quota back once an evicted group is gone, mark it finished
    with the job."""
    workload = queue.workload
    template = worker_pod(job, spec, 0, 0)["spec"]
    desired = desired_workload(job.name, job.namespace, job.uid, queue, spec.workers, template)
    if phase in TERMINAL:
        if workload is not None and not workload.finished:
            result.workload_status = finish(workload, phase == "Succeeded", message, stamp)
        return
    if phase == "Suspended":
        if workload is not None:
            result.delete_workload = workload.name
        return
    if workload is None:
        result.apply.insert(0, desired)
    elif workload.admission is None and workload.spec_hash != desired["metadata"]["annotations"][ANNOTATION_WORKLOAD_SPEC]:
        result.delete_workload = workload.name  # Kueue's podSets are set at creation: a new one follows
    elif workload.evicted is not None and not any(p.active for p in pods):
        result.workload_status = release(workload, stamp)
    elif workload.admitted:
        result.workload_status = pods_ready(workload, phase == "Running", stamp)


def _queue_conditions(queue: Queue, phase: str | None, reason: str, message: str) -> list[Cond]:
    admitted = queue.workload is not None and queue.workload.admitted
    return [Cond("Queued", phase == "Queued", reason if phase == "Queued" else "NotQueued",
                 message if phase == "Queued" else f"not waiting in LocalQueue {queue.name}"),
            Cond("Admitted", admitted, "Admitted" if admitted else "NotAdmitted",
                 f"Kueue admitted the workload in ClusterQueue {queue.workload.cluster_queue}"
                 if admitted and queue.workload else f"the workload holds no quota of LocalQueue {queue.name}")]


def _queue_status(queue: Queue, phase: str | None, reason: str, message: str) -> dict[str, Any]:
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


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def counts_running(group: dict[int, ObservedPod]) -> int:
    return sum(p.phase == "Running" for p in group.values())


def _group_objects(job: JobMeta, spec: TrainingJobSpec, attempt: int, existing: set[int],
                   ended: dict[int, str], placement: Placement | None = None) -> list[dict[str, Any]]:
    """The group's desired objects: its rendezvous Service (always, so a deleted one comes back) and the
    pods of missing ranks (only while none was created: a group is started whole, once). The controller
    writes only what differs from what exists."""
    objects = [rendezvous_service(job)] if spec.workers > 1 else []
    return objects + [worker_pod(job, spec, attempt, rank, ended, placement) for rank in range(spec.workers)
                      if rank not in existing]


def _refused_change(spec: TrainingJobSpec, group: list[ObservedPod]) -> str:
    """A message naming the fields edited since the running group started ('' when none)."""
    running = next((p.pod_spec for p in group if p.active and p.pod_spec), None)
    if running is None:
        return ""
    try:
        before = json.loads(running)
    except ValueError:
        return ""
    if not isinstance(before, dict):  # edited by hand: what the group started with is unknown
        return ""
    try:  # fields added to the API since the group started read as their defaults
        before = pod_shaping_spec(TrainingJobSpec.model_validate(before))
    except ValidationError:
        pass
    now = pod_shaping_spec(spec)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not changed:
        return ""
    details = ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" if k == "workers" else k for k in changed)
    return (f"not applied to the running workers: {details}. The change takes effect when the group is "
            "next started (suspend and resume the job, or after a restart)")


def _describe_wait(stuck: list[ObservedPod], workers: int) -> str:
    """'1/2 workers cannot start: worker 1 (pod x) Unschedulable: 0/4 nodes are available: ...' quoting
    the scheduler or kubelet, for the first stuck worker."""
    first = stuck[0]
    what = f"{first.waiting_reason}: {first.waiting_message}" if first.waiting_message else first.waiting_reason
    text = f"{len(stuck)}/{workers} workers cannot start: worker {first.rank} (pod {first.name}) {what}"
    return text if len(text) <= WAIT_MESSAGE_LIMIT else text[:WAIT_MESSAGE_LIMIT - 3] + "..."


def _describe_failure(pod: ObservedPod) -> str:
    code = f"exit code {pod.exit_code}" if pod.exit_code is not None else "no exit code"
    return f"worker {pod.rank} (pod {pod.name}) failed: {code}" + (f" ({pod.reason})" if pod.reason else "")


def _terminal_reason(previous: dict[str, Any]) -> tuple[str, str]:
    for cond in previous.get("conditions", []):
        if cond.get("type") == previous.get("phase"):
            return cond.get("reason", ""), cond.get("message", "")
    return "", ""


def _progress(report: dict[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    """The trainer's report as status shows it; a report with wrong types is ignored with a warning."""
    try:
        progress = Progress.model_validate(report).wire()
    except ValidationError as error:
        warnings.append(f"ignored a progress report with wrong types: {_first_error(error)}")
        return None
    if not all(math.isfinite(v) for v in progress.values() if isinstance(v, float)):
        warnings.append("ignored a progress report with a non-finite number")
        return None
    return progress or None


def _published_model(report: dict[str, Any] | None, warnings: list[str]) -> dict[str, Any] | None:
    """The model version the trainer says it published; anything impossible (a version below 1, a name
    Triton cannot serve, a malformed signature) is never turned into a published version."""
    model = (report or {}).get("model")
    if not isinstance(model, dict):
        return None
    accuracy = (report or {}).get("testAccuracy")
    try:
        published = PublishedModel.model_validate({**model, "testAccuracy": accuracy})
    except ValidationError as error:
        warnings.append(f"ignored a published model report: {_first_error(error)}")
        return None
    if published.version < 1 or not re.fullmatch(MODEL_NAME, published.name) or \
            (published.test_accuracy is not None and not 0 <= published.test_accuracy <= 1):
        warnings.append(f"ignored an impossible published model report: {published.name} version {published.version}")
        return None
    return published.wire()


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    return f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"


def _bounded_time(stamp: Any, earliest: str | None, now: datetime) -> str | None:
    """A recorded time, moved into what the world allows: not before `earliest`, not after now."""
    try:
        moment = parse_rfc3339(stamp) if isinstance(stamp, str) else None
    except ValueError:
        moment = None
    if moment is None:
        return None
    if earliest:
        try:
            moment = max(moment, parse_rfc3339(earliest))
        except ValueError:
            pass
    return rfc3339(min(moment, now))


def _summary(progress: dict[str, Any] | None) -> str | None:
    if not progress or progress.get("epoch") is None:
        return None
    text = f"epoch {progress['epoch']}/{progress.get('epochs', '?')}"
    if progress.get("checkpointedEpoch") is not None:  # where a preemption now would resume
        text += f" checkpoint {progress['checkpointedEpoch']}"
    if progress.get("checkpointError"):
        text += " (last save failed)"
    if progress.get("loss") is not None:
        text += f" loss {progress['loss']:.3f}"
    if progress.get("valAccuracy") is not None:
        text += f" acc {progress['valAccuracy']:.3f}"
    return text


def _transition_events(previous: dict[str, Any], status: dict[str, Any], waiting_for: str = "") -> list[Event]:
    events = []
    old, new = previous.get("conditions", []), status["conditions"]
    for cond_type, kind in (("Running", "Normal"), ("Succeeded", "Normal"), ("Failed", "Warning"),
                            ("Suspended", "Normal"), ("UpdateRefused", "Warning"), ("Queued", "Normal"),
                            ("Admitted", "Normal")):
        cond = became_true(old, new, cond_type)
        if cond:
            events.append(Event(kind, cond["reason"], cond["message"]))  # type: ignore[arg-type]
    ready_old = next((c for c in old if c.get("type") == "Ready"), {})
    ready = next(c for c in new if c["type"] == "Ready")
    if waiting_for and (ready_old.get("reason") != ready["reason"] or waiting_for not in ready_old.get("message", "")):
        # why it waits, once per change of what the scheduler or kubelet says (not per worker count)
        events.append(Event("Warning", ready["reason"], ready["message"]))
    if previous.get("phase") == "Suspended" and status["phase"] != "Suspended":
        events.append(Event("Normal", "Resumed", "spec.suspend is false: starting the workers"))
    return events


