"""One TrainingJob pass planned: the steps of the concern modules composed (`plan`) into the writer's plan."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from modelops.api.trainingjob import TrainingJobSpec
from modelops.clock import rfc3339
from modelops.resources.conditions import Event
from modelops.resources.kueue import KUEUE_API, Queue
from modelops.resources.plan import Delete, Patch, Plan as PassPlan
from modelops.resources.trainingjob.ledger import close_attempt, read_ledger, record_suspension
from modelops.resources.trainingjob.names import TERMINAL, JobMeta
from modelops.resources.trainingjob.observe import ObservedPod, recorded_times
from modelops.resources.trainingjob.phase import (completion_time, deadline_left, decide, kept_phase, start_time,
                                                  ttl_left, worker_changes)
from modelops.resources.trainingjob.queue import queue_writes
from modelops.resources.trainingjob.reports import trainer_progress
from modelops.resources.trainingjob.status import job_events, job_status

# Unfinished jobs are looked at again at least this often, from memory (a safety net, not a poll).
RESYNC_SECONDS = 300.0


@dataclass
class Plan:
    """The job's decisions in its own terms (pods to delete, the Workload's writes); `plan_job` turns them
    into the pass's plan."""

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


def plan(job: JobMeta, spec: TrainingJobSpec, pods: list[ObservedPod], previous: dict[str, Any],
         now: datetime, queue: Queue | None = None, *, present: frozenset[str] | None = None) -> Plan:
    """Decide everything for one reconcile pass. `previous` is the last written status: only its recorded
    facts (start/completion time, a terminal phase, the last progress, the attempts started and how they
    ended) are read from it. `queue`: the job's Kueue queue (label kueue.x-k8s.io/queue-name), None for a job
    that is not queued: then no group starts before its Workload is admitted, and an evicted one is removed.
    `present`: the names of all the job's pods, also those whose labels were edited into garbage (not in
    `pods`): a worker whose pod is there is not missing."""
    stamp = rfc3339(now)
    ledger = read_ledger(previous, pods)
    kept, kept_warning = kept_phase(previous, pods, ledger.current)
    recorded_start, recorded_completion = recorded_times(job, previous, pods, now)
    # rank 0's report, of the attempt as the pass found it (before the pass may end it)
    report = next((p.progress for p in pods if p.attempt == ledger.current and p.rank == 0), None)
    progress, progress_warning = trainer_progress(previous.get("progress"), report)
    if kept is None and not spec.suspend:  # only a running job's attempt can end
        ledger = close_attempt(ledger, job, spec, pods, queue, present)
    verdict = decide(spec, pods, previous, ledger, kept, queue, recorded_start, now, report)
    to_delete, to_apply = worker_changes(job, spec, pods, ledger, verdict, queue)
    ledger = record_suspension(ledger, verdict.phase, pods)
    starting = any(obj["kind"] == "Pod" for obj in to_apply)
    start = start_time(recorded_start, verdict, ledger, starting, stamp)
    completion = completion_time(recorded_completion, kept, verdict, stamp)
    ttl = ttl_left(spec, verdict, completion, now)  # <= 0: the job is deleted now
    deadline = deadline_left(spec, verdict, recorded_start, start, now)
    workload = queue_writes(job, spec, queue, verdict.phase, verdict.message, pods, stamp)
    status = job_status(job, spec, previous, pods, ledger, verdict, queue, starting=starting, start_time=start,
                        completion_time=completion, progress=progress, stamp=stamp)
    return Plan(
        apply=[workload.create, *to_apply] if workload.create else to_apply, delete_pods=to_delete,
        status=status, events=job_events(spec, previous, status, ledger, verdict),
        delete_job=ttl is not None and ttl <= 0, workload_status=workload.status, delete_workload=workload.delete,
        requeue_after=ttl if ttl is not None and ttl > 0 else deadline,
        warnings=[w for w in (kept_warning, progress_warning, verdict.warning) if w])


def plan_job(job: JobMeta, spec: TrainingJobSpec, pods: list[ObservedPod], previous: dict[str, Any],
             now: datetime, queue: Queue | None = None, *, present: frozenset[str] | None = None,
             untrusted: tuple[ObservedPod, ...] = ()) -> PassPlan:
    """One pass's plan (see `plan`). A refused child (a squatted pod or Service name) means the group was not
    (wholly) created, so it has not started: the recorded attempt stays as it was, and a worker missing
    then is not a lost one. The Workload's writes are queue bookkeeping and go ahead regardless.
    `untrusted`: unowned pods named like the job's workers that do not claim it (owner reference and claim
    both edited away): they cannot be adopted, so they are ended, and count as workers being taken away
    (a new group starts only once they are gone: never two attempts at once)."""
    ending = [replace(p, deleting=True) for p in untrusted]
    decided = plan(job, spec, [*pods, *ending], previous, now, queue, present=present)
    requeue = decided.requeue_after
    if decided.status.get("phase") not in TERMINAL:
        requeue = min(requeue if requeue is not None else RESYNC_SECONDS, RESYNC_SECONDS)
    workload = queue.workload if queue else None
    # our labels and claim, put back on the workers a hand edit changed them on
    marks = [Patch("v1", "Pod", p.name, p.marks, even_if_refused=True) for p in pods if p.marks and not p.deleting]
    return PassPlan(
        apply=decided.apply, create_only=frozenset({"Pod", "Workload"}),
        patch=marks + ([Patch(KUEUE_API, "Workload", workload.name, decided.workload_status, status=True,
                              resource_version=workload.resource_version, even_if_refused=True)]
                       if decided.workload_status and workload else []),
        delete=[Delete("v1", "Pod", name) for name in decided.delete_pods] +
        [Delete("v1", "Pod", p.name, even_if_refused=True, orphan=True) for p in untrusted] +
        ([Delete(KUEUE_API, "Workload", decided.delete_workload, even_if_refused=True)]
         if decided.delete_workload else []),
        status=decided.status, events=decided.events, delete_self=decided.delete_job,
        keep_on_refusal={"attempt": previous.get("attempt")}, requeue_after=None if decided.delete_job else requeue,
        warnings=decided.warnings)
