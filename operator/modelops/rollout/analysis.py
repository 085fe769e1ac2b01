"""Judging a canary step from its Triton metrics (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from modelops.api.modelservice import Analysis
from modelops.rollout.canary import Verdict


@dataclass(frozen=True)
class CanarySample:
    """The canary's requests over the step: successes, failures and its p99 latency (None = no data)."""

    success: float | None
    failure: float | None
    p99_latency_ms: float | None


def judge(sample: CanarySample, thresholds: Analysis) -> tuple[Verdict, str]:
    requests = (sample.success or 0.0) + (sample.failure or 0.0)
    if requests < max(thresholds.min_requests, 1):
        return "Inconclusive", f"{requests:.0f} canary requests, fewer than minRequests={thresholds.min_requests}"
    error_rate = (sample.failure or 0.0) / requests
    latency = "p99 unknown" if sample.p99_latency_ms is None else f"p99 {sample.p99_latency_ms:.1f}ms"
    summary = f"{requests:.0f} requests, error rate {error_rate:.3f}, {latency}"
    if error_rate > thresholds.max_error_rate:
        return "Failed", f"error rate {error_rate:.3f} above maxErrorRate {thresholds.max_error_rate} ({summary})"
    if sample.p99_latency_ms is not None and sample.p99_latency_ms > thresholds.max_p99_latency_ms:
        return "Failed", (f"p99 latency {sample.p99_latency_ms:.1f}ms above maxP99LatencyMs "
                          f"{thresholds.max_p99_latency_ms} ({summary})")
    return "Passed", summary
