"""The TrainingJob's status, rebuilt from the world each pass, and the Events its transitions deserve."""

from __future__ import annotations

from typing import Any

from modelops.api.trainingjob import TrainingJobSpec
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.resources.kueue import Queue
from modelops.resources.pods import Wait, wait_event
from modelops.resources.trainingjob.ledger import Ending, Ledger
from modelops.resources.trainingjob.names import FAILED, PREEMPTED, TERMINAL, JobMeta
from modelops.resources.trainingjob.observe import ObservedPod
from modelops.resources.trainingjob.phase import Verdict
from modelops.resources.trainingjob.queue import queue_conditions, queue_status


def job_status(job: JobMeta, spec: TrainingJobSpec, previous: dict[str, Any], pods: list[ObservedPod],
               ledger: Ledger, verdict: Verdict, queue: Queue | None, *, starting: bool, start_time: str | None,
               completion_time: str | None, progress: Any, stamp: str) -> dict[str, Any]:
    """The status to write (absent fields left out); `starting`: the group's pods are created in this pass."""
    group = ledger.group(pods)
    counts = {
        "desired": spec.workers,
        "running": sum(p.phase == "Running" for p in group.values()),
        "succeeded": sum(p.phase == "Succeeded" for p in group.values()),
        "failed": sum(p.phase == "Failed" for p in group.values()),
    }
    phase, failures = verdict.phase, ledger.failures
    status: dict[str, Any] = {
        "observedGeneration": job.generation, "phase": phase,
        "conditions": _conditions(job, spec, previous, ledger, verdict, counts["running"], queue, stamp),
        "workers": counts, "workersReady": f"{counts['running']}/{spec.workers}",
        "restarts": len([a for a in failures if not (phase == "Failed" and a == max(failures))]),
        "preemptions": ledger.preemptions,
        "attempt": ledger.current if group or starting else ledger.started,
        "endedAttempts": {str(a): outcome for a, outcome in sorted(ledger.ended.items())} or None,
        "queue": queue_status(queue, phase, verdict.reason, verdict.message) if queue else None,
        "startTime": start_time, "completionTime": completion_time if phase in TERMINAL else None,
        "progress": progress, "progressSummary": _summary(progress),
        "model": verdict.published or previous.get("model"),
    }
    return {k: v for k, v in status.items() if v is not None}


def _conditions(job: JobMeta, spec: TrainingJobSpec, previous: dict[str, Any], ledger: Ledger, verdict: Verdict,
                running: int, queue: Queue | None, stamp: str) -> list[dict[str, Any]]:
    phase, reason, message, refused = verdict.phase, verdict.reason, verdict.message, verdict.refused
    # While workers wait, Ready and Reconciling quote why; the other conditions just say Pending (so
    # `kubectl describe` shows the scheduler's words twice, not seven times).
    other = ("WorkersPending", f"{running}/{spec.workers} workers running") if verdict.waiting_for \
        else (reason, message)
    return merge_conditions(previous.get("conditions", []), [
        Cond("Ready", phase == "Succeeded", reason, message),
        Cond("Running", phase == "Running", *other),
        Cond("Succeeded", phase == "Succeeded", *other),
        Cond("Failed", phase == "Failed", *other),
        Cond("Suspended", phase == "Suspended", *other),
        Cond("Reconciling", phase in ("Queued", "Pending", "Running"), reason, message),
        Cond("Stalled", phase == "Failed", *other),
        Cond("UpdateRefused", bool(refused), "ImmutableWhileRunning" if refused else "", refused),
        _preempted_condition(previous, phase, ledger.ending),
        *(queue_conditions(queue, phase, reason, message) if queue else []),
    ], now=stamp, generation=job.generation)


def _preempted_condition(previous: dict[str, Any], phase: str | None, ending: Ending | None) -> Cond:
    """Preempted: from the moment a group is taken away until a new group runs (or the job ends)."""
    if ending and ending.outcome == PREEMPTED:
        return Cond("Preempted", True, "EvictedByKueue" if ending.by_queue else "WorkerPreempted", ending.message)
    old: dict[str, Any] = next((c for c in previous.get("conditions", []) if c.get("type") == "Preempted"), {})
    if old.get("status") == "True" and phase in ("Pending", "Queued"):
        return Cond("Preempted", True, old.get("reason", "WorkerPreempted"), old.get("message", ""))
    return Cond("Preempted", False, "NotPreempted", "the group runs" if phase == "Running" else
                "no worker group was taken away since the last one started")


def job_events(spec: TrainingJobSpec, previous: dict[str, Any], status: dict[str, Any], ledger: Ledger,
               verdict: Verdict) -> list[Event]:
    """The Events of this pass: why the current attempt ended (when the job restarts or queues again after
    it), then the transitions between the previous status and `status`."""
    return _ending_events(spec, ledger, verdict.phase) + _transition_events(previous, status, verdict.waiting_for)


def _ending_events(spec: TrainingJobSpec, ledger: Ledger, phase: str) -> list[Event]:
    ending = ledger.ending
    if not ending or phase not in ("Pending", "Queued"):
        return []
    if ending.outcome == FAILED:
        return [Event("Warning", "WorkerFailed", f"{ending.message}; restarting the group "
                                                 f"(restart {len(ledger.failures)} of {spec.backoff_limit})")]
    return [Event("Warning", "Preempted" if ending.by_queue else "WorkerPreempted",
                  f"{ending.message}; " + ("the group is removed and the job queued again, to resume from its "
                                           "checkpoint" if ending.by_queue else
                                           "restarting the group from its checkpoint") +
                  f" (preemption {ledger.preemptions}, not counted against backoffLimit)")]


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


def _transition_events(previous: dict[str, Any], status: dict[str, Any],
                       waiting_for: Wait | None = None) -> list[Event]:
    events = []
    old, new = previous.get("conditions", []), status["conditions"]
    for cond_type, kind in (("Running", "Normal"), ("Succeeded", "Normal"), ("Failed", "Warning"),
                            ("Suspended", "Normal"), ("UpdateRefused", "Warning"), ("Queued", "Normal"),
                            ("Admitted", "Normal")):
        cond = became_true(old, new, cond_type)
        if cond:
            events.append(Event(kind, cond["reason"], cond["message"]))  # type: ignore[arg-type]
    ready_old: dict[str, Any] = next((c for c in old if c.get("type") == "Ready"), {})
    ready = next(c for c in new if c["type"] == "Ready")
    events += wait_event(ready_old, ready, waiting_for)  # once per change of what is said, not per worker count
    if previous.get("phase") == "Suspended" and status["phase"] != "Suspended":
        events.append(Event("Normal", "Resumed", "spec.suspend is false: starting the workers"))
    return events
