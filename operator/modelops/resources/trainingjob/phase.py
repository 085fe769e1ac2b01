"""The phase decision: where the job stands after this pass and why, what that does to its workers, its clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from modelops.api.trainingjob import TrainingJobSpec
from modelops.clock import parse_rfc3339
from modelops.resources.kueue import Queue
from modelops.resources.pods import Wait, limited
from modelops.resources.trainingjob.builders import group_objects, pod_shaping_spec
from modelops.resources.trainingjob.ledger import Ledger, ended_message
from modelops.resources.trainingjob.names import FAILED, TERMINAL, JobMeta
from modelops.resources.trainingjob.observe import ObservedPod
from modelops.resources.trainingjob.queue import queued_reason
from modelops.resources.trainingjob.reports import published_model


@dataclass(frozen=True)
class Verdict:
    """Where the job stands after this pass, and why."""

    phase: str
    reason: str
    message: str
    refused: str = ""
    """The spec fields edited while the group runs, not applied to it (UpdateRefused)."""
    waiting_for: Wait | None = None
    """Why the first stuck worker waits, as its scheduler or kubelet says (an Event when it changes)."""
    published: dict[str, Any] | None = None
    """The model version the trainer published, when the job succeeds in this pass."""
    warning: str = ""
    """What the trainer reported that made no sense (ignored)."""


def kept_phase(previous: dict[str, Any], pods: list[ObservedPod], current: int) -> tuple[str | None, str]:
    """(the terminal phase the last status recorded, a warning or ''): finished jobs stay finished, unless
    workers of the current attempt still run (the status is then not believed)."""
    phase = previous.get("phase") if previous.get("phase") in TERMINAL else None
    live = [p for p in pods if p.attempt == current and p.active and not p.deleting]
    if phase and live:
        return None, f"status.phase {phase} ignored: {len(live)} worker(s) of attempt {current} are still running"
    return phase, ""


def decide(spec: TrainingJobSpec, pods: list[ObservedPod], previous: dict[str, Any], ledger: Ledger,
           kept: str | None, queue: Queue | None, started_at: str | None, now: datetime,
           report: dict[str, Any] | None) -> Verdict:
    """The job's phase: the one it finished in, Suspended, finished now (backoff limit, deadline, every
    worker succeeded: `report` is rank 0's, naming the published model), else how far its group is."""
    if kept:
        return Verdict(kept, *_terminal_reason(previous))
    if spec.suspend:
        return Verdict("Suspended", "Suspended", "spec.suspend is true: workers removed")
    group = ledger.group(pods)
    finished = _finished(spec, pods, previous, ledger, group, started_at, now, report)
    if finished:
        return finished
    return replace(_progressing(spec, pods, ledger, group, queue), refused=_refused_change(spec, list(group.values())))


def _finished(spec: TrainingJobSpec, pods: list[ObservedPod], previous: dict[str, Any], ledger: Ledger,
              group: dict[int, ObservedPod], started_at: str | None, now: datetime,
              report: dict[str, Any] | None) -> Verdict | None:
    failures = len(ledger.failures)
    if ledger.restarting_after(group) == FAILED and failures > spec.backoff_limit:
        return Verdict("Failed", "BackoffLimitExceeded", f"{ended_message(ledger, pods)}; {failures} failed "
                                                         f"attempt(s), backoffLimit is {spec.backoff_limit}")
    deadline = spec.active_deadline_seconds
    elapsed = _elapsed(started_at, now)
    if deadline and started_at and elapsed >= deadline:
        return Verdict("Failed", "DeadlineExceeded",
                       f"the job ran {elapsed:.0f}s, longer than activeDeadlineSeconds={deadline}")
    if group and len(group) == spec.workers and all(p.phase == "Succeeded" for p in group.values()):
        published, warning = published_model(report)
        model = published or previous.get("model")
        message = f"published {model['name']} version {model['version']} at {model['uri']}" if model else \
            "all workers succeeded; the trainer reported no published model"
        return Verdict("Succeeded", "ModelPublished", message, published=published, warning=warning)
    return None


def _progressing(spec: TrainingJobSpec, pods: list[ObservedPod], ledger: Ledger, group: dict[int, ObservedPod],
                 queue: Queue | None) -> Verdict:
    workload = queue.workload if queue else None
    restart = ledger.restarting_after(group)
    running = sum(p.phase == "Running" for p in group.values())
    stuck = sorted((p for p in group.values() if p.waiting_reason and not p.deleting), key=lambda p: p.rank)
    if queue is not None and not group and not (workload is not None and workload.admitted):
        return Verdict("Queued", *queued_reason(queue))
    if restart == FAILED:
        return Verdict("Pending", "Restarting", f"restarting after: {ended_message(ledger, pods)}")
    if restart:
        return Verdict("Pending", "Preempted", f"restarting from the checkpoint after: {ended_message(ledger, pods)}")
    if running == spec.workers:
        return Verdict("Running", "WorkersRunning", f"{running}/{spec.workers} workers running")
    if stuck:
        return Verdict("Pending", stuck[0].waiting_reason, _describe_wait(stuck, spec.workers),
                       waiting_for=Wait(stuck[0].waiting_reason, stuck[0].waiting_message))
    return Verdict("Pending", "WorkersStarting", f"{running}/{spec.workers} workers running")


def worker_changes(job: JobMeta, spec: TrainingJobSpec, pods: list[ObservedPod], ledger: Ledger,
                   verdict: Verdict, queue: Queue | None) -> tuple[list[str], list[dict[str, Any]]]:
    """(the pods to delete, the group's objects to apply). A finished or suspended job keeps no worker; an
    unfinished one starts its group once no worker of an earlier attempt is left, the spec's edits are
    accepted and (when queued) Kueue admitted it."""
    if verdict.phase in (*TERMINAL, "Suspended"):
        return [p.name for p in pods if p.active and not p.deleting], []
    stale = [p for p in pods if p.active and p.attempt != ledger.current]
    if stale:
        return [p.name for p in stale if not p.deleting], []
    workload = queue.workload if queue else None
    if verdict.refused or not (queue is None or (workload is not None and workload.admitted)):
        return [], []
    return [], group_objects(job, spec, ledger.current, existing=set(ledger.group(pods)), ended=ledger.ended,
                             placement=queue.placement() if queue else None)


def start_time(recorded: str | None, verdict: Verdict, ledger: Ledger, starting: bool, stamp: str) -> str | None:
    """status.startTime: when the job's first group started (none while suspended, nor while queued before
    any group ran); `starting`: a group's pods are created in this pass."""
    if verdict.phase == "Suspended" or (verdict.phase == "Queued" and not ledger.started and not ledger.ended):
        return None
    return (recorded or stamp) if starting else recorded


def completion_time(recorded: str | None, kept: str | None, verdict: Verdict, stamp: str) -> str | None:
    """status.completionTime: when the job finished (as recorded, or now when it finishes in this pass)."""
    if verdict.phase not in TERMINAL:
        return None
    return recorded if kept else stamp


def deadline_left(spec: TrainingJobSpec, verdict: Verdict, recorded_start: str | None, start: str | None,
                  now: datetime) -> float | None:
    """Seconds until an unfinished job reaches activeDeadlineSeconds (None: no deadline runs)."""
    deadline = spec.active_deadline_seconds
    if not deadline or not start or verdict.phase in TERMINAL:
        return None
    return max(0.0, deadline - _elapsed(recorded_start, now))


def ttl_left(spec: TrainingJobSpec, verdict: Verdict, completion: str | None, now: datetime) -> float | None:
    """Seconds a finished job has left to live (ttlSecondsAfterFinished; <= 0: delete it now)."""
    if verdict.phase not in TERMINAL or spec.ttl_seconds_after_finished is None or not completion:
        return None
    return spec.ttl_seconds_after_finished - (now - parse_rfc3339(completion)).total_seconds()


def _elapsed(started_at: str | None, now: datetime) -> float:
    return (now - parse_rfc3339(started_at)).total_seconds() if started_at else 0.0


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
    what = Wait(first.waiting_reason, first.waiting_message).said()
    return limited(f"{len(stuck)}/{workers} workers cannot start: worker {first.rank} (pod {first.name}) {what}")


def _terminal_reason(previous: dict[str, Any]) -> tuple[str, str]:
    for cond in previous.get("conditions", []):
        if cond.get("type") == previous.get("phase"):
            return cond.get("reason", ""), cond.get("message", "")
    return "", ""
