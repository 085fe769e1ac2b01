"""The canary state machine (pure): start, step, analyse, promote or roll back.

States live in the ModelService status (stable and canary revisions, the current step and when it
started, the last rejected revision): like Argo Rollouts' stableRS, they are recorded decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from modelops.api.modelservice import Rollout, RolloutStep

ANNOTATION = "modelops.dev/rollout"  # "promote" or "abort", set by a person (kubectl annotate)

Verdict = Literal["Passed", "Failed", "Inconclusive"]
Action = Literal["promote", "abort"]
Outcome = Literal["Initial", "Steady", "Started", "Waiting", "AwaitingApproval", "Stepped", "Promoted", "RolledBack",
                  "Rejected"]


@dataclass(frozen=True)
class RolloutState:
    stable: str | None = None
    stable_version: int | None = None
    canary: str | None = None
    canary_version: int | None = None
    step: int = 0
    step_started_at: datetime | None = None
    started_at: datetime | None = None
    rejected: str | None = None


@dataclass(frozen=True)
class CanaryHealth:
    """What the world says about the canary revision's pods."""

    ready_replicas: int
    desired_replicas: int
    model_failure: str | None = None


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    outcome: Outcome
    message: str
    weight: int = 0
    analysis_due: bool = False
    """The current step's pause is over: the caller should analyse the canary and decide again."""
    requeue_after: float | None = None
    action_used: bool = False
    """The modelops.dev/rollout annotation was acted on (the caller removes it)."""
    judged: bool = False
    """The decision rests on the verdict it was given (the analysis it judged is worth showing)."""


def decide(state: RolloutState, desired: str, desired_version: int, rollout: Rollout, *,
           canary: CanaryHealth | None, verdict: Verdict | None, verdict_message: str = "",
           action: Action | None = None, now: datetime) -> Decision:
    steps = rollout.steps
    if state.stable is None:
        first = replace(state, stable=desired, stable_version=desired_version)
        return Decision(first, "Initial", f"serving version {desired_version} ({desired})")
    if desired == state.stable:
        steady = replace(state, canary=None, canary_version=None, step=0, step_started_at=None, started_at=None)
        message = f"serving version {state.stable_version}"
        if state.canary:
            message += f"; canary {state.canary} dropped: the spec asks for the stable revision again"
        return Decision(steady, "Steady", message)
    if desired == state.rejected:
        kept = replace(state, canary=None, canary_version=None, step=0, step_started_at=None, started_at=None)
        return Decision(kept, "Rejected", f"revision {desired} was rolled back; still serving version "
                                          f"{state.stable_version}. Change the spec to try again")
    if state.canary != desired:
        started = replace(state, canary=desired, canary_version=desired_version, step=0, step_started_at=now,
                          started_at=now)
        return Decision(started, "Started", f"canary {desired} (version {desired_version}) started at "
                                            f"{steps[0].weight}%", weight=steps[0].weight, requeue_after=1)

    weight = steps[min(state.step, len(steps) - 1)].weight
    health = canary or CanaryHealth(0, 0)
    if action == "abort":
        return _roll_back(state, "aborted by the modelops.dev/rollout annotation")
    if health.model_failure:
        return _roll_back(state, health.model_failure)
    deadline = (state.started_at or now) + timedelta(seconds=rollout.progress_deadline_seconds)
    if health.ready_replicas < max(1, health.desired_replicas):
        if now >= deadline and health.ready_replicas == 0:
            return _roll_back(state, f"no canary pod served a verified model within "
                                     f"{rollout.progress_deadline_seconds}s (progressDeadlineSeconds)")
        wait = (deadline - now).total_seconds()
        return Decision(state, "Waiting", f"waiting for canary pods: {health.ready_replicas}/"
                                          f"{health.desired_replicas} ready", weight=weight,
                        requeue_after=max(1.0, min(wait, 5.0)))
    step = steps[state.step]
    if action == "promote" and step.approval:  # approves this step: its pause and analysis are skipped
        return _advance(state, steps, now, f"step {state.step + 1} approved by the modelops.dev/rollout annotation")
    if action == "promote":
        return _promote(state, "promoted by the modelops.dev/rollout annotation")

    step_end = _step_end(state, step, now)
    if now < step_end:
        return Decision(state, "Waiting", f"step {state.step + 1}/{len(steps)} at {weight}%: pausing",
                        weight=weight, requeue_after=(step_end - now).total_seconds())
    judged = step.pause_seconds > 0
    if judged:
        if verdict is None:
            return Decision(state, "Waiting", f"step {state.step + 1}/{len(steps)}: analysing", weight=weight,
                            analysis_due=True)
        if verdict == "Failed":
            return replace(_roll_back(state, f"analysis failed at step {state.step + 1}: {verdict_message}"),
                           judged=True)
        if verdict == "Inconclusive":
            return Decision(state, "Waiting", f"step {state.step + 1}/{len(steps)}: analysis inconclusive "
                                              f"({verdict_message}); holding at {weight}%", weight=weight,
                            requeue_after=5, judged=True)
    if step.approval:
        return Decision(state, "AwaitingApproval", f"step {state.step + 1}/{len(steps)} at {weight}%: waiting for approval "
                                          f"(kubectl annotate ms NAME {ANNOTATION}=promote)", weight=weight,
                        judged=judged)
    return replace(_advance(state, steps, now, ""), judged=judged)


def analysis_window(state: RolloutState, desired: str, rollout: Rollout, now: datetime) -> int | None:
    """The seconds of metrics a decision about the canary will judge now (its current step has paused long
    enough), else None: what the caller samples before deciding, so the decision is made once."""
    if state.stable is None or state.canary is None or desired != state.canary or desired in (state.stable,
                                                                                             state.rejected):
        return None
    step = rollout.steps[min(state.step, len(rollout.steps) - 1)]
    if step.pause_seconds <= 0 or now < _step_end(state, step, now):
        return None
    return step.pause_seconds


def _step_end(state: RolloutState, step: RolloutStep, now: datetime) -> datetime:
    return (state.step_started_at or now) + timedelta(seconds=step.pause_seconds)


def _advance(state: RolloutState, steps: list[RolloutStep], now: datetime, why: str) -> Decision:
    used = bool(why)
    if state.step + 1 >= len(steps):
        return replace(_promote(state, why or f"all {len(steps)} steps passed"), action_used=used)
    advanced = replace(state, step=state.step + 1, step_started_at=now)
    next_weight = steps[state.step + 1].weight
    message = f"step {state.step + 2}/{len(steps)}: canary at {next_weight}%" + (f" ({why})" if why else "")
    return Decision(advanced, "Stepped", message, weight=next_weight, requeue_after=1, action_used=used)


def _promote(state: RolloutState, why: str) -> Decision:
    promoted = RolloutState(stable=state.canary, stable_version=state.canary_version, rejected=state.rejected)
    return Decision(promoted, "Promoted", f"version {state.canary_version} promoted to stable: {why}",
                    action_used=True)


def _roll_back(state: RolloutState, why: str) -> Decision:
    kept = RolloutState(stable=state.stable, stable_version=state.stable_version, rejected=state.canary)
    return Decision(kept, "RolledBack", f"canary version {state.canary_version} rolled back, "
                                        f"version {state.stable_version} keeps serving: {why}", action_used=True)
