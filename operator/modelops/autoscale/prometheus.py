"""A small client for Prometheus' HTTP query API, and the PromQL we ask it about Triton's metrics."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


class PrometheusUnavailable(RuntimeError):
    """Prometheus could not be asked (not configured, unreachable, or an error answer)."""


@dataclass(frozen=True)
class Prometheus:
    url: str
    timeout: float = 3.0

    def scalar(self, promql: str) -> float | None:
        """The query's single value; None when it has no (finite) result."""
        if not self.url:
            raise PrometheusUnavailable("no Prometheus address configured (MODELOPS_PROMETHEUS_URL)")
        query = urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(f"{self.url.rstrip('/')}/api/v1/query?{query}", timeout=self.timeout) as r:
                body = json.load(r)
        except (OSError, ValueError) as error:
            raise PrometheusUnavailable(f"Prometheus at {self.url}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"Prometheus refused {promql!r}: {body.get('error', body)}")
        result = body["data"]["result"]
        if body["data"].get("resultType") == "scalar":
            value = float(result[1])
        elif not result:
            return None
        else:
            value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None


def selector(**labels: str) -> str:
    """A PromQL label selector; our pods' labels arrive as modelops_dev_* (kubernetes_sd / podTargetLabels)."""
    return "{" + ",".join(f'{name}="{value}"' for name, value in sorted(labels.items())) + "}"


def metric_queries(metric: str, sel: str) -> tuple[str, str | None]:
    """(numerator, denominator) for a per-replica autoscaling metric; the denominator, when given, is the
    request rate (queue time is per request) and a zero rate means idle."""
    window = "30s"  # long enough to smooth a 2-5 s scrape, short enough to follow a load step
    if metric == "queueTimeMicroseconds":
        return (f"sum(rate(nv_inference_queue_duration_us{sel}[{window}]))",
                f"sum(rate(nv_inference_request_success{sel}[{window}]))")
    if metric == "inferenceRatePerReplica":
        return f"sum(rate(nv_inference_request_success{sel}[{window}]))", None
    if metric == "pendingRequests":
        return f"avg(sum by (pod) (nv_inference_pending_request_count{sel}))", None
    if metric == "gpuUtilization":
        return f"100 * avg(nv_gpu_utilization{sel})", None
    raise ValueError(f"unknown metric {metric}")


def canary_queries(sel: str, window_seconds: int) -> dict[str, str]:
    window = f"{max(window_seconds, 10)}s"
    return {
        "success": f"sum(increase(nv_inference_request_success{sel}[{window}]))",
        "failure": f"sum(increase(nv_inference_request_failure{sel}[{window}]))",
        "p99_us": f'max(nv_inference_request_summary_us{{quantile="0.99",{sel[1:-1]}}})',
    }


def requests_query(sel: str, seconds: int) -> str:
    """Requests Triton answered (successes and failures) over the last `seconds`: the idle check before scaling
    to zero. No series (a pod not scraped yet) gives no result, which never counts as idle."""
    return (f"sum(increase(nv_inference_request_success{sel}[{seconds}s])) + "
            f"sum(increase(nv_inference_request_failure{sel}[{seconds}s]))")
