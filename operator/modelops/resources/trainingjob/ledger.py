"""The attempt ledger: which attempt is current, how the earlier ones ended, whether this pass ends one.

The record of ended attempts lives in status.endedAttempts and on every pod of the next attempt (annotation
modelops.dev/ended-attempts); failed pods are kept (they hold no resources), so failures are also rebuilt
from the world after an operator restart. The last status is an observation: where the world contradicts
it, the world wins."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from modelops.api.trainingjob import TrainingJobSpec
from modelops.resources.kueue import Queue
from modelops.resources.trainingjob.names import FAILED, PREEMPTED, SUSPENDED, JobMeta, pod_name
from modelops.resources.trainingjob.observe import ObservedPod, ended_attempts_of, json_object


@dataclass(frozen=True)
class Ending:
    """Why the current attempt is over: a worker ended or disappeared without succeeding."""

    outcome: str  # FAILED or PREEMPTED
    message: str
    by_queue: bool = False
    """Kueue evicted the job's workload (preempted it in its ClusterQueue, deactivated it...)."""


@dataclass(frozen=True)
class Ledger:
    """The job's attempts as this pass knows them."""

    ended: dict[int, str]
    """How each earlier attempt ended (FAILED, PREEMPTED, SUSPENDED)."""
    started: int | None
    """The attempt the last status says was started, unless the world contradicts it."""
    current: int
    """The attempt this pass works on."""
    ending: Ending | None = None
    """Why the attempt before `current` ended in this pass (None: it did not end now)."""

    @property
    def failures(self) -> list[int]:
        """The attempts that failed (counted against backoffLimit)."""
        return sorted(a for a, outcome in self.ended.items() if outcome == FAILED)

    @property
    def preemptions(self) -> int:
        return sum(outcome == PREEMPTED for outcome in self.ended.values())

    def group(self, pods: list[ObservedPod]) -> dict[int, ObservedPod]:
        """The current attempt's workers by rank."""
        return {p.rank: p for p in pods if p.attempt == self.current}

    def restarting_after(self, group: dict[int, ObservedPod]) -> str | None:
        """How the previous attempt ended (FAILED or PREEMPTED) while the job waits to start the current
        attempt's group after it; None otherwise."""
        last = max(self.ended, default=None)
        if last is None or last != self.current - 1 or self.ended[last] == SUSPENDED or group:
            return None
        return self.ended[last]


def read_ledger(previous: dict[str, Any], pods: list[ObservedPod]) -> Ledger:
    """The ledger as the pods and the last status record it."""
    ended = _ended_attempts(previous, pods)
    started = _started_attempt(previous, pods, ended)
    current = max([*(p.attempt for p in pods), *([started] if started is not None else []),
                   *(a + 1 for a in ended)], default=0)
    return Ledger(ended, started, current)


def close_attempt(ledger: Ledger, job: JobMeta, spec: TrainingJobSpec, pods: list[ObservedPod],
                  queue: Queue | None, present: frozenset[str] | None) -> Ledger:
    """The ledger after this pass looked at the current attempt's group: when the group is over, the attempt
    is recorded as ended (with why) and the next one is current."""
    workload = queue.workload if queue else None
    ending = _attempt_ending(job, spec, [p for p in pods if p.attempt == ledger.current],
                             ledger.started == ledger.current, evicted=workload.evicted if workload else None,
                             present=present if present is not None else frozenset(p.name for p in pods))
    if ending is None or ledger.current in ledger.ended:
        return ledger
    return replace(ledger, ended={**ledger.ended, ledger.current: ending.outcome}, current=ledger.current + 1,
                   ending=ending)


def record_suspension(ledger: Ledger, phase: str, pods: list[ObservedPod]) -> Ledger:
    """The ledger once the phase is decided: a group spec.suspend removes ends its attempt as Suspended."""
    if phase != "Suspended" or not ledger.group(pods):
        return ledger
    return replace(ledger, ended={**ledger.ended, ledger.current: SUSPENDED})


def _attempt_ending(job: JobMeta, spec: TrainingJobSpec, attempt: list[ObservedPod], started: bool,
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
        return Ending(FAILED, describe_failure(failed[0]))
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
        # the pod went before a pass saw it going (its deletion was the first event the cache got): named still
        gone = f" (pod {pod_name(job.name, number, missing[0])})" if number is not None else ""
        return Ending(PREEMPTED, f"worker {missing[0]}{gone} disappeared (its pod was deleted)")
    return None


def _group_size(spec: TrainingJobSpec, attempt: list[ObservedPod]) -> int:
    """How many workers the attempt's group was started with (its pods record the spec they were made
    from; an edit of spec.workers since then is refused, not a missing worker)."""
    for p in attempt:
        recorded = json_object(p.pod_spec)
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


def ended_message(ledger: Ledger, pods: list[ObservedPod]) -> str:
    """What ended the attempt before the current one: the decision of this pass, else its failed worker if
    still there."""
    if ledger.ending:
        return ledger.ending.message
    attempt = ledger.current - 1
    failed = sorted((p for p in pods if p.attempt == attempt and p.phase == "Failed"), key=lambda p: p.rank)
    return describe_failure(failed[0]) if failed else f"attempt {attempt} ended"


def describe_failure(pod: ObservedPod) -> str:
    code = f"exit code {pod.exit_code}" if pod.exit_code is not None else "no exit code"
    return f"worker {pod.rank} (pod {pod.name}) failed: {code}" + (f" ({pod.reason})" if pod.reason else "")


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
