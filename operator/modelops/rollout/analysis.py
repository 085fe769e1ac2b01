"""Judging a canary step from its Triton metrics, against absolute thresholds and against the stable
revision over the same window (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from modelops.api.modelservice import Analysis
from modelops.rollout.canary import Verdict

LATENCY_FLOOR_MS = 1.0
"""Latencies below this count as this much in the ratio: 0.2 ms against 0.5 ms is noise, not a regression."""


@dataclass(frozen=True)
class CanarySample:
    """One revision's requests over the step: successes, failures and its p99 latency (None = no data)."""

    success: float | None
    failure: float | None
    p99_latency_ms: float | None

    @property
    def requests(self) -> float:
        return (self.success or 0.0) + (self.failure or 0.0)

    @property
    def error_rate(self) -> float | None:
        return (self.failure or 0.0) / self.requests if self.requests else None


def judge(sample: CanarySample, thresholds: Analysis, stable: CanarySample | None = None) -> tuple[Verdict, str]:
    """Failed on any broken threshold; Inconclusive while either side has too few requests to compare."""
    requests = sample.requests
    if requests < max(thresholds.min_requests, 1):
        return "Inconclusive", f"{requests:.0f} canary requests, fewer than minRequests={thresholds.min_requests}"
    error_rate = sample.error_rate or 0.0
    latency = "p99 unknown" if sample.p99_latency_ms is None else f"p99 {sample.p99_latency_ms:.1f}ms"
    summary = f"canary: {requests:.0f} requests, error rate {error_rate:.3f}, {latency}"
    if error_rate > thresholds.max_error_rate:
        return "Failed", f"error rate {error_rate:.3f} above maxErrorRate {thresholds.max_error_rate} ({summary})"
    if sample.p99_latency_ms is not None and sample.p99_latency_ms > thresholds.max_p99_latency_ms:
        return "Failed", (f"p99 latency {sample.p99_latency_ms:.1f}ms above maxP99LatencyMs "
                          f"{thresholds.max_p99_latency_ms} ({summary})")
    relative = thresholds.max_latency_ratio is not None or thresholds.max_error_rate_increase is not None
    if stable is None or not relative:
        return "Passed", summary
    if stable.requests < max(thresholds.min_requests, 1):
        return "Inconclusive", (f"{stable.requests:.0f} stable requests in the same window, fewer than "
                                f"minRequests={thresholds.min_requests} ({summary})")
    stable_rate = stable.error_rate or 0.0
    stable_latency = "p99 unknown" if stable.p99_latency_ms is None else f"p99 {stable.p99_latency_ms:.1f}ms"
    summary += f"; stable: {stable.requests:.0f} requests, error rate {stable_rate:.3f}, {stable_latency}"
    increase = thresholds.max_error_rate_increase
    if increase is not None and error_rate - stable_rate > increase:
        return "Failed", (f"error rate {error_rate:.3f} is {error_rate - stable_rate:.3f} above stable's "
                          f"(maxErrorRateIncrease {increase}) ({summary})")
    ratio = latency_ratio(sample, stable)
    if thresholds.max_latency_ratio is not None and ratio is not None and ratio > thresholds.max_latency_ratio:
        return "Failed", (f"p99 latency {ratio:.2f}x stable's (maxLatencyRatio {thresholds.max_latency_ratio}) "
                          f"({summary})")
    return "Passed", summary


def latency_ratio(canary: CanarySample, stable: CanarySample) -> float | None:
    if canary.p99_latency_ms is None or stable.p99_latency_ms is None:
        return None
    return max(canary.p99_latency_ms, LATENCY_FLOOR_MS) / max(stable.p99_latency_ms, LATENCY_FLOOR_MS)
