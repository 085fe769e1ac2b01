"""The scaling decision (pure): the HPA algorithm with tolerance, stabilisation windows and rate limits.

Bad data never moves replicas: a missing, NaN or stale metric holds the current count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from modelops.api.modelservice import Autoscaling


@dataclass(frozen=True)
class ScaleMemory:
    """Recent recommendations and replica changes (the stabilisation and rate-limit windows look back on them)."""

    recommendations: tuple[tuple[datetime, int], ...] = ()
    changes: tuple[tuple[datetime, int], ...] = ()


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    reason: str
    memory: ScaleMemory = field(default_factory=ScaleMemory)
    able: bool = True
    """False when the metric could not be used (the count is held)."""


def recommend(current: int, value: float, scaling: Autoscaling) -> int:
    """The raw HPA recommendation: ceil(current * value / target), unless within the tolerance."""
    ratio = value / scaling.target
    if abs(ratio - 1.0) <= scaling.tolerance:
        return current
    return math.ceil(max(current, 1) * ratio) if ratio > 0 else scaling.min_replicas


def decide(current: int, value: float | None, scaling: Autoscaling, memory: ScaleMemory, now: datetime,
           unavailable_reason: str = "") -> ScaleDecision:
    if value is None or not math.isfinite(value) or value < 0:
        held = min(max(current, scaling.min_replicas), scaling.max_replicas)
        return ScaleDecision(held, unavailable_reason or "metric unavailable: holding replicas", memory, able=False)

    raw = min(max(recommend(current, value, scaling), scaling.min_replicas), scaling.max_replicas)
    horizon = max(scaling.scale_up.stabilization_window_seconds, scaling.scale_down.stabilization_window_seconds,
                  scaling.scale_up.period_seconds, scaling.scale_down.period_seconds)
    recent = tuple(r for r in memory.recommendations if now - r[0] <= timedelta(seconds=horizon)) + ((now, raw),)

    def within(seconds: int) -> list[int]:
        return [n for t, n in recent if now - t <= timedelta(seconds=seconds)]

    # Scale up to the lowest and down to the highest recommendation of each window (as the HPA does).
    up_to = min(within(scaling.scale_up.stabilization_window_seconds))
    down_to = max(within(scaling.scale_down.stabilization_window_seconds))
    desired = current
    if desired < up_to:
        desired = up_to
    if desired > down_to:
        desired = down_to

    changes = tuple(c for c in memory.changes if now - c[0] <= timedelta(seconds=horizon))
    reason = f"metric {value:.4g} vs target {scaling.target:.4g}: recommend {raw}"
    if desired > current:
        rules = scaling.scale_up
        added = sum(d for t, d in changes if d > 0 and now - t < timedelta(seconds=rules.period_seconds))
        base = current - added
        limit = base + max(rules.max_step_replicas, math.ceil(base * rules.max_step_percent / 100))
        if desired > limit:
            desired, reason = max(limit, current), reason + f"; limited to {limit} by scaleUp"
    elif desired < current:
        rules = scaling.scale_down
        removed = -sum(d for t, d in changes if d < 0 and now - t < timedelta(seconds=rules.period_seconds))
        base = current + removed
        limit = base - max(rules.max_step_replicas, math.floor(base * rules.max_step_percent / 100))
        if desired < limit:
            desired, reason = min(limit, current), reason + f"; limited to {limit} by scaleDown"
    elif raw != current:
        reason += "; held by the stabilisation window"
    desired = min(max(desired, scaling.min_replicas), scaling.max_replicas)
    if desired != current:
        changes += ((now, desired - current),)
    return ScaleDecision(desired, reason, ScaleMemory(recent, changes))
