"""The scaling decision: HPA algorithm, windows, rate limits, and holding on bad data."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from modelops.api.modelservice import Autoscaling
from modelops.autoscale.decision import ScaleMemory, decide, recommend

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def scaling(**overrides: object) -> Autoscaling:
    return Autoscaling.model_validate({"minReplicas": 1, "maxReplicas": 10, "target": 100, **overrides})


@pytest.mark.parametrize(("current", "value", "expected"), [
    (2, 100, 2),      # on target
    (2, 109, 2),      # inside the 10% tolerance
    (2, 111, 3),      # just outside: ceil(2 * 1.11)
    (2, 300, 6),
    (4, 50, 2),
    (3, 0, 1),        # idle: down to the minimum
    (1, 1e9, 10),     # clamped to maxReplicas by decide
])
def test_recommendation_table(current: int, value: float, expected: int) -> None:
    s = scaling()
    got = min(max(recommend(current, value, s), s.min_replicas), s.max_replicas)
    assert got == expected


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -1.0])
def test_bad_data_holds_replicas(bad: float | None) -> None:
    d = decide(3, bad, scaling(), ScaleMemory(), T0, "metric unavailable: Prometheus down")
    assert d.desired == 3 and not d.able and "Prometheus down" in d.reason


def test_bad_data_never_goes_below_min_or_to_zero() -> None:
    assert decide(0, None, scaling(minReplicas=2), ScaleMemory(), T0).desired == 2


def test_scale_up_is_immediate_and_rate_limited() -> None:
    s = scaling(scaleUp={"maxStepReplicas": 2, "maxStepPercent": 50, "periodSeconds": 15})
    first = decide(2, 1000, s, ScaleMemory(), T0)
    assert first.desired == 4  # wants 10; may add max(2, 50% of 2) = 2
    second = decide(4, 1000, s, first.memory, T0 + timedelta(seconds=5))
    assert second.desired == 4  # the period's budget is spent
    third = decide(4, 1000, s, second.memory, T0 + timedelta(seconds=16))
    assert third.desired == 6


def test_scale_down_waits_for_its_stabilisation_window() -> None:
    s = scaling(scaleDown={"stabilizationWindowSeconds": 60})
    memory = decide(4, 100, s, ScaleMemory(), T0).memory  # a recommendation of 4
    low = decide(4, 25, s, memory, T0 + timedelta(seconds=30))
    assert low.desired == 4 and "stabilisation" in low.reason
    later = decide(4, 25, s, low.memory, T0 + timedelta(seconds=61))
    assert later.desired == 1


def test_noisy_metric_around_target_does_not_flap() -> None:
    s = scaling()
    memory, replicas, changes = ScaleMemory(), 4, 0
    for i in range(120):  # +-8% noise around the target, every 10 s for 20 minutes
        value = 100 * (1 + 0.08 * math.sin(i * 1.7))
        d = decide(replicas, value, s, memory, T0 + timedelta(seconds=10 * i))
        changes += d.desired != replicas
        replicas, memory = d.desired, d.memory
    assert changes == 0 and replicas == 4


def test_spike_then_quiet_scales_up_fast_and_down_after_window() -> None:
    s = scaling()  # HPA defaults: up at once, down after 300 s
    memory, replicas = ScaleMemory(), 1
    trace = [(t, 400 if 60 <= t < 180 else 20) for t in range(0, 900, 10)]
    history = []
    for t, value in trace:
        d = decide(replicas, value, s, memory, T0 + timedelta(seconds=t))
        replicas, memory = d.desired, d.memory
        history.append((t, replicas))
    assert dict(history)[60] > 1                      # reacts within one evaluation
    assert dict(history)[300] > 1                     # still up inside the 300 s down window
    assert history[-1][1] == 1                        # back to the minimum after it
