"""The canary state machine and the analysis verdicts, table-driven."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from modelops.api.modelservice import Analysis, Rollout
from modelops.rollout.analysis import CanarySample, judge
from modelops.rollout.canary import CanaryHealth, RolloutState, decide

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
ROLLOUT = Rollout.model_validate({"steps": [{"weight": 20, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30}],
                                  "progressDeadlineSeconds": 120})
STABLE = RolloutState(stable="ms-v1-aaaaa", stable_version=1)
CANARY = replace(STABLE, canary="ms-v2-bbbbb", canary_version=2, step=0, step_started_at=T0, started_at=T0)
READY = CanaryHealth(ready_replicas=1, desired_replicas=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_first_revision_becomes_stable_without_canary() -> None:
    d = decide(RolloutState(), "ms-v1-aaaaa", 1, ROLLOUT, canary=None, verdict=None, now=T0)
    assert (d.outcome, d.state.stable, d.state.canary, d.weight) == ("Initial", "ms-v1-aaaaa", None, 0)


def test_new_version_starts_a_canary_at_the_first_weight() -> None:
    d = decide(STABLE, "ms-v2-bbbbb", 2, ROLLOUT, canary=None, verdict=None, now=T0)
    assert d.outcome == "Started" and d.weight == 20
    assert (d.state.canary, d.state.step, d.state.step_started_at) == ("ms-v2-bbbbb", 0, T0)
    assert d.state.stable == "ms-v1-aaaaa"


@pytest.mark.parametrize(("case", "health", "verdict", "action", "seconds", "outcome", "weight"), [
    ("pods still starting", CanaryHealth(0, 1), None, None, 10, "Waiting", 20),
    ("deadline without any ready pod", CanaryHealth(0, 1), None, None, 121, "RolledBack", 0),
    ("deadline ignored once a pod serves", CanaryHealth(1, 2), None, None, 121, "Waiting", 20),
    ("model check failed", CanaryHealth(0, 1, "shape [-1, 8] != [-1, 64]"), None, None, 1, "RolledBack", 0),
    ("pausing", READY, None, None, 10, "Waiting", 20),
    ("pause over: analysis due", READY, None, None, 30, "Waiting", 20),
    ("analysis passed: next step", READY, "Passed", None, 30, "Stepped", 50),
    ("analysis failed: roll back", READY, "Failed", None, 30, "RolledBack", 0),
    ("analysis inconclusive: hold", READY, "Inconclusive", None, 30, "Waiting", 20),
    ("manual abort", READY, None, "abort", 5, "RolledBack", 0),
    ("manual promote", READY, None, "promote", 5, "Promoted", 0),
])
def test_canary_step(case: str, health: CanaryHealth, verdict: str | None, action: str | None, seconds: float,
                     outcome: str, weight: int) -> None:
    d = decide(CANARY, "ms-v2-bbbbb", 2, ROLLOUT, canary=health, verdict=verdict,  # type: ignore[arg-type]
               action=action, now=at(seconds))  # type: ignore[arg-type]
    assert (d.outcome, d.weight) == (outcome, weight), case
    if outcome == "RolledBack":
        assert d.state == RolloutState(stable="ms-v1-aaaaa", stable_version=1, rejected="ms-v2-bbbbb")
    if outcome == "Promoted":
        assert (d.state.stable, d.state.canary) == ("ms-v2-bbbbb", None)
    if case == "pause over: analysis due":
        assert d.analysis_due
    if case == "pausing":
        assert d.requeue_after == pytest.approx(20)


def test_last_step_passing_promotes() -> None:
    last = replace(CANARY, step=1, step_started_at=at(30))
    d = decide(last, "ms-v2-bbbbb", 2, ROLLOUT, canary=READY, verdict="Passed", now=at(60))
    assert d.outcome == "Promoted" and d.state.stable == "ms-v2-bbbbb" and d.state.stable_version == 2


def test_rolled_back_revision_is_not_retried_until_the_spec_changes() -> None:
    rejected = replace(STABLE, rejected="ms-v2-bbbbb")
    d = decide(rejected, "ms-v2-bbbbb", 2, ROLLOUT, canary=None, verdict=None, now=T0)
    assert d.outcome == "Rejected" and d.state.canary is None
    again = decide(rejected, "ms-v3-ccccc", 3, ROLLOUT, canary=None, verdict=None, now=T0)
    assert again.outcome == "Started"


def test_spec_back_to_stable_drops_the_canary() -> None:
    d = decide(CANARY, "ms-v1-aaaaa", 1, ROLLOUT, canary=READY, verdict=None, now=at(5))
    assert d.outcome == "Steady" and d.state.canary is None and "dropped" in d.message


def test_zero_pause_steps_advance_without_analysis() -> None:
    quick = Rollout.model_validate({"steps": [{"weight": 50, "pauseSeconds": 0}]})
    d = decide(CANARY, "ms-v2-bbbbb", 2, quick, canary=READY, verdict=None, now=T0)
    assert d.outcome == "Promoted"


@pytest.mark.parametrize(("sample", "verdict"), [
    (CanarySample(100, 0, 12.0), "Passed"),
    (CanarySample(100, 0, None), "Passed"),
    (CanarySample(5, 0, 12.0), "Inconclusive"),
    (CanarySample(None, None, None), "Inconclusive"),
    (CanarySample(90, 10, 12.0), "Failed"),
    (CanarySample(100, 0, 2500.0), "Failed"),
    (CanarySample(99, 1, 12.0), "Passed"),  # 1% is the threshold itself
])
def test_analysis_verdicts(sample: CanarySample, verdict: str) -> None:
    result, message = judge(sample, Analysis(max_error_rate=0.01, max_p99_latency_ms=1000, min_requests=20))
    assert result == verdict, message


APPROVAL = Rollout.model_validate({"steps": [{"weight": 20, "approval": True, "pauseSeconds": 0},
                                             {"weight": 50, "pauseSeconds": 30},
                                             {"weight": 80, "approval": True, "pauseSeconds": 30}]})


def test_an_approval_step_waits_for_the_annotation_and_says_so() -> None:
    d = decide(CANARY, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict=None, now=at(3600))
    assert d.outcome == "AwaitingApproval" and d.weight == 20 and "waiting for approval" in d.message
    assert "modelops.dev/rollout=promote" in d.message and not d.action_used


def test_promote_at_an_approval_step_approves_that_step_only() -> None:
    d = decide(CANARY, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict=None, action="promote", now=at(1))
    assert (d.outcome, d.weight, d.state.step) == ("Stepped", 50, 1) and d.action_used
    assert d.state.stable == "ms-v1-aaaaa"  # not promoted: the next steps still run


def test_an_approval_step_with_a_pause_analyses_first_then_holds() -> None:
    last = replace(CANARY, step=2, step_started_at=T0)
    assert decide(last, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict=None, now=at(30)).analysis_due
    held = decide(last, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict="Passed", now=at(30))
    assert held.outcome == "AwaitingApproval" and "waiting for approval" in held.message
    failed = decide(last, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict="Failed", now=at(30))
    assert failed.outcome == "RolledBack"
    approved = decide(last, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict=None, action="promote", now=at(31))
    assert approved.outcome == "Promoted" and approved.state.stable == "ms-v2-bbbbb" and approved.action_used


def test_promote_outside_an_approval_step_promotes_at_once() -> None:
    second = replace(CANARY, step=1, step_started_at=T0)
    d = decide(second, "ms-v2-bbbbb", 2, APPROVAL, canary=READY, verdict=None, action="promote", now=at(1))
    assert d.outcome == "Promoted" and d.action_used


RELATIVE = Analysis(max_error_rate=0.05, max_p99_latency_ms=1000, min_requests=20, max_latency_ratio=1.5,
                    max_error_rate_increase=0.01)


@pytest.mark.parametrize(("canary", "stable", "verdict", "words"), [
    (CanarySample(100, 0, 30.0), CanarySample(400, 0, 10.0), "Failed", "3.00x stable's"),  # under the 1000 ms bar
    (CanarySample(100, 0, 14.0), CanarySample(400, 0, 10.0), "Passed", "stable: 400 requests"),
    (CanarySample(100, 0, 0.9), CanarySample(400, 0, 0.3), "Passed", ""),  # sub-millisecond: noise, not a 3x
    (CanarySample(97, 3, 10.0), CanarySample(400, 0, 10.0), "Failed", "0.030 above stable's"),  # under maxErrorRate
    (CanarySample(97, 3, 10.0), CanarySample(392, 8, 10.0), "Passed", ""),  # stable errs as much
    (CanarySample(100, 0, 10.0), CanarySample(5, 0, 10.0), "Inconclusive", "5 stable requests"),
    (CanarySample(100, 0, 10.0), CanarySample(400, 0, None), "Passed", ""),  # no stable latency: no ratio
])
def test_canary_is_judged_against_stable_over_the_same_window(canary: CanarySample, stable: CanarySample,
                                                               verdict: str, words: str) -> None:
    result, message = judge(canary, RELATIVE, stable)
    assert result == verdict and words in message, message


def test_relative_checks_can_be_turned_off() -> None:
    absolute = RELATIVE.model_copy(update={"max_latency_ratio": None, "max_error_rate_increase": None})
    assert judge(CanarySample(100, 0, 30.0), absolute, CanarySample(5, 0, 10.0))[0] == "Passed"
