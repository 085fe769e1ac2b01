"""The operator's own Prometheus metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("modelops_reconciles_total", "Reconcile passes by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("modelops_reconcile_duration_seconds", "Duration of one reconcile pass", ["kind"])
RESOURCES_BY_PHASE = Gauge("modelops_resources", "Resources this operator manages, by kind and phase",
                           ["kind", "phase"])
API_REQUESTS = Counter("modelops_api_requests_total", "Requests to the Kubernetes API server by verb, kind and code",
                       ["verb", "kind", "code"])
QUEUE_DEPTH = Gauge("modelops_workqueue_depth", "Keys waiting in a work queue (ready, not delayed)", ["queue"])
QUEUE_DELAYED = Gauge("modelops_workqueue_delayed", "Keys scheduled for later in a work queue", ["queue"])
QUEUE_WAIT_SECONDS = Histogram("modelops_workqueue_queue_duration_seconds",
                               "How long a key waited in the queue before its pass started", ["queue"],
                               buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
QUEUE_RETRIES = Counter("modelops_workqueue_retries_total", "Passes that failed and were requeued with backoff",
                        ["queue"])
CHILD_WRITES = Counter("modelops_child_writes_total", "Children created, updated or deleted, by kind and action",
                       ["kind", "action"])

_phases: dict[tuple[str, str, str], str] = {}
_phase_counts: dict[tuple[str, str], int] = {}
_phases_lock = threading.Lock()


@contextmanager
def reconcile_timer(kind: str) -> Iterator[None]:
    """Counts a pass as ok or error and observes its duration."""
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)


def record_phase(kind: str, namespace: str, name: str, phase: str | None) -> None:
    """Remember one resource's phase (None forgets it) and move the by-phase gauge; O(1) per call."""
    key = (kind, namespace, name)
    with _phases_lock:
        old = _phases.pop(key, None) if phase is None else _phases.get(key)
        if old == phase:
            return
        if phase is not None:
            _phases[key] = phase
        for changed, delta in ((old, -1), (phase, 1)):
            if changed is not None:
                count = _phase_counts[(kind, changed)] = _phase_counts.get((kind, changed), 0) + delta
                RESOURCES_BY_PHASE.labels(kind, changed).set(count)  # a phase that emptied shows 0
