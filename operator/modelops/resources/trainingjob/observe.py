"""What the world says about a TrainingJob (its worker pods, its last status), read defensively.

A hand-edited label, annotation or status never breaks a pass: what makes no sense reads as absent."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.clock import parse_rfc3339, rfc3339
from modelops.resources.meta import ANNOTATION_OWNER, MANAGED_BY, MANAGED_BY_LABEL, Claim, controller_of
from modelops.resources.pods import pod_wait
from modelops.resources.trainingjob.names import (ANNOTATION_ENDED_ATTEMPTS, ANNOTATION_POD_SPEC, ANNOTATION_PROGRESS,
                                                  FAILED, LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, PREEMPTED, SUSPENDED,
                                                  TERMINAL, TRAINER_CONTAINER, JobMeta, job_label, pod_name)

WORKER_SUFFIX = re.compile(r"-a(\d+)-w(\d+)$")


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
    marks: dict[str, Any] | None = None
    """The metadata patch that puts back the labels and claim a hand edit changed on this worker of ours
    (None: they are as we set them, or it is not ours to patch)."""

    @property
    def active(self) -> bool:
        """Still holds (or may hold) resources: not finished."""
        return self.phase not in TERMINAL

    @classmethod
    def from_pod(cls, pod: dict[str, Any], job: JobMeta | None = None) -> ObservedPod:
        """The worker as `job` sees it: its attempt and rank are what its name says (a name cannot be edited;
        the labels can), else (no job given, or a name not of its workers) what its labels say."""
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        labels, annotations = meta.get("labels", {}) or {}, meta.get("annotations", {}) or {}
        named = worker_of(job, meta.get("name", "")) if job else None
        attempt, rank = named or (int_label(labels, LABEL_ATTEMPT), int_label(labels, LABEL_RANK))
        terminated = next((cs.get("state", {}).get("terminated") for cs in status.get("containerStatuses") or []
                           if cs.get("name") == TRAINER_CONTAINER), None) or {}
        progress = json_object(annotations.get(ANNOTATION_PROGRESS))
        final = json_object(terminated.get("message"))
        if final and "model" in final and not (progress or {}).get("model"):
            # The trainer also writes its final report to the termination log: it still counts when
            # the pod could not patch its own annotation (e.g. a ServiceAccount without the Role).
            progress = final
        phase = status.get("phase") or "Pending"
        wait = pod_wait(status) if phase == "Pending" else None
        disruption = next((c for c in status.get("conditions") or [] if isinstance(c, dict)
                           and c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)
        return cls(
            name=meta["name"], rank=rank, attempt=attempt,
            phase=phase, deleting=bool(meta.get("deletionTimestamp")),
            exit_code=terminated.get("exitCode"),
            reason=terminated.get("reason") or status.get("reason") or "",
            pod_spec=annotations.get(ANNOTATION_POD_SPEC),
            progress=progress,
            finished=terminated.get("finishedAt") if isinstance(terminated.get("finishedAt"), str) else None,
            waiting_reason=wait.reason if wait else "", waiting_message=wait.message if wait else "",
            disruption=str(disruption.get("reason") or "DisruptionTarget") if disruption else "",
            disruption_message=str(disruption.get("message") or "") if disruption else "",
            ended_attempts=tuple(sorted(ended_attempts_of(json_object(annotations.get(ANNOTATION_ENDED_ATTEMPTS))).items())),
            marks=lost_marks(job, pod, attempt, rank) if job and named else None,
        )


def worker_of(job: JobMeta, name: str) -> tuple[int, int] | None:
    """(attempt, rank) when `name` is the name of one of the job's workers, else None."""
    found = WORKER_SUFFIX.search(name)
    if not found:
        return None
    attempt, rank = int(found.group(1)), int(found.group(2))
    return (attempt, rank) if pod_name(job.name, attempt, rank) == name else None


def untrusted_workers(job: JobMeta, unowned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of the namespace's unowned pods of ours, those named like the job's workers that claim no owner at
    all: perhaps its own, but nothing proves it (an orphan claiming a UID is adopted or ended by that)."""
    return [p for p in unowned if Claim.of(p) is None and worker_of(job, (p.get("metadata") or {}).get("name", ""))]


def lost_marks(job: JobMeta, pod: dict[str, Any], attempt: int, rank: int) -> dict[str, Any] | None:
    """The merge patch putting back what a hand edit changed of our marks on a worker the job controls: its
    managed-by, job, attempt and rank labels and its claim; None when nothing was changed (or the pod is not
    controlled by the job: an orphan is adopted first)."""
    meta = pod.get("metadata") or {}
    if (controller_of(pod) or {}).get("uid") != job.uid:
        return None
    want = {MANAGED_BY_LABEL: MANAGED_BY, LABEL_JOB: job_label(job.name), LABEL_ATTEMPT: str(attempt),
            LABEL_RANK: str(rank)}
    labels = {k: v for k, v in want.items() if (meta.get("labels") or {}).get(k) != v}
    claim = job.claim()
    annotations = {ANNOTATION_OWNER: claim} if (meta.get("annotations") or {}).get(ANNOTATION_OWNER) != claim else {}
    if not labels and not annotations:
        return None
    return {"metadata": {k: v for k, v in (("labels", labels), ("annotations", annotations)) if v}}


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


def int_label(labels: dict[str, Any], key: str) -> int:
    """A label we wrote as an integer; a hand-edited garbage value reads as -1 (a pod of no group)."""
    try:
        value = int(str(labels.get(key, "0")))
    except ValueError:
        return -1
    return value if value >= 0 else -1


def json_object(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def recorded_times(job: JobMeta, previous: dict[str, Any], pods: list[ObservedPod],
                   now: datetime) -> tuple[str | None, str | None]:
    """(startTime, completionTime) as the last status recorded them, moved into what the world allows: not
    before the job was created (nor, for the completion, before its last worker finished), not after now."""
    finished = [p.finished for p in pods if p.finished]
    return (bounded_time(previous.get("startTime"), job.created, now),
            bounded_time(previous.get("completionTime"), max(finished, default=job.created), now))


def bounded_time(stamp: Any, earliest: str | None, now: datetime) -> str | None:
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

