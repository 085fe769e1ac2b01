"""The operator's own Prometheus metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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

# Per-resource series (labels: namespace and name, plus one fixed-set label where said). One small record
# per resource, rendered at scrape time by the collector below, instead of prometheus-client children
# (~0.8 kB each: 20+ MB for 2000 jobs and 2000 services). A pass changes a record only when a value
# changed; forgetting the resource (record_phase(..., None)) removes every series of it.


@dataclass(frozen=True)
class _Family:
    name: str
    help: str
    extra: tuple[str, ...] = ()  # label values after namespace and name (the label is `label`)
    label: str = ""
    counter: bool = False  # exposed as <name>_total


_EPOCH = _Family("modelops_trainingjob_progress_epoch", "The epoch the TrainingJob's trainer is in, or the last "
                 "one it trained once training ended (status.progress.epoch)")
_CHECKPOINTED = _Family("modelops_trainingjob_progress_checkpointed_epoch", "The last epoch whose checkpoint the "
                        "trainer saved: where a preemption now would resume (status.progress.checkpointedEpoch)")
_EPOCHS = _Family("modelops_trainingjob_progress_epochs", "Epochs the TrainingJob trains for (status.progress.epochs)")
_STEP = _Family("modelops_trainingjob_progress_step", "Optimizer steps the trainer has taken (status.progress.step)")
_LOSS = _Family("modelops_trainingjob_loss", "Training loss of the trainer's last report (status.progress.loss)")
_VAL_ACCURACY = _Family("modelops_trainingjob_val_accuracy",
                        "Validation accuracy of the trainer's last report (status.progress.valAccuracy)")
_SAMPLES = _Family("modelops_trainingjob_samples_per_second",
                   "Training throughput over all ranks, from the trainer's last report; only while Running")
_RESTARTS = _Family("modelops_trainingjob_restarts", "Group restarts of the TrainingJob (status.restarts)")
_PREEMPTIONS = _Family("modelops_trainingjob_preemptions", "Group restarts of the TrainingJob after a worker was "
                       "preempted, evicted or lost, not failures (status.preemptions)")
_DESIRED = _Family("modelops_modelservice_replicas", "Serving replicas over all revisions: desired "
                   "(status.replicas) and ready (status.readyReplicas)", ("desired",), "state")
_READY = replace(_DESIRED, extra=("ready",))
_CANARY_WEIGHT = _Family("modelops_modelservice_canary_weight",
                         "Percent of the serving replicas on the canary revision (0: no canary)")
_MODEL_VERSION = _Family("modelops_modelservice_model_version",
                         "Model version the stable revision serves (status.modelVersion)")
_ANALYSES = _Family("modelops_rollout_analysis", "Canary analyses, by verdict", label="verdict", counter=True)
_SCALED = _Family("modelops_autoscale_decisions", "Replica changes the builtin autoscaler decided, by direction",
                  label="direction", counter=True)
_UP, _DOWN = replace(_SCALED, extra=("up",)), replace(_SCALED, extra=("down",))
_POOL_SERVERS = _Family("modelops_modelpool_servers", "Server pods of the ModelPool: desired (status.replicas) and "
                        "ready (their Triton answers: status.readyServers)", ("desired",), "state")
_POOL_READY = replace(_POOL_SERVERS, extra=("ready",))
_POOL_COPIES = _Family("modelops_modelpool_copies", "Ready model copies resident on the ModelPool's servers")
_POOL_MODELS = _Family("modelops_modelpool_models", "Model versions with a ready copy in the ModelPool")
_POOL_USED = _Family("modelops_modelpool_memory_bytes", "Memory of the resident copies (measured, else declared) "
                     "and the servers' capacity x (1 + overcommit), over all servers", ("used",), "state")
_POOL_CAPACITY = replace(_POOL_USED, extra=("capacity",))
_POOL_OPS = _Family("modelops_modelpool_operations", "Loads, unloads and evictions done by the ModelPool's live "
                    "servers (status.totals, from the servers' ledgers: a replaced server's go with it)",
                    ("loads",), "operation")
_POOL_UNLOADS, _POOL_EVICTIONS = replace(_POOL_OPS, extra=("unloads",)), replace(_POOL_OPS, extra=("evictions",))
_POOL_UNPLACED = _Family("modelops_modelpool_unplaced", "Copies asked for that the ModelPool cannot place")
_VERDICTS = tuple(replace(_ANALYSES, extra=(verdict,)) for verdict in ("Passed", "Failed", "Inconclusive"))

# The gauges of each kind, in the order of the values record_status computes for it.
_GAUGES: dict[str, tuple[_Family, ...]] = {
    "TrainingJob": (_EPOCH, _CHECKPOINTED, _EPOCHS, _STEP, _LOSS, _VAL_ACCURACY, _SAMPLES, _RESTARTS, _PREEMPTIONS),
    "ModelService": (_DESIRED, _READY, _CANARY_WEIGHT, _MODEL_VERSION),
    "ModelPool": (_POOL_SERVERS, _POOL_READY, _POOL_COPIES, _POOL_MODELS, _POOL_USED, _POOL_CAPACITY, _POOL_OPS,
                  _POOL_UNLOADS, _POOL_EVICTIONS, _POOL_UNPLACED),
}
_FAMILIES = (_EPOCH, _CHECKPOINTED, _EPOCHS, _STEP, _LOSS, _VAL_ACCURACY, _SAMPLES, _RESTARTS, _PREEMPTIONS, _DESIRED,
             _CANARY_WEIGHT, _MODEL_VERSION, _ANALYSES, _SCALED, _POOL_SERVERS, _POOL_COPIES, _POOL_MODELS, _POOL_USED,
             _POOL_OPS, _POOL_UNPLACED)
Values = tuple[Any, ...]


@dataclass(slots=True)
class _Recorded:
    """What one resource's series show: its gauges' values (None: no series), the facts its counters
    count changes of, and its counters."""

    gauges: Values
    facts: Values
    counts: dict[_Family, float]


_recorded: dict[tuple[str, str, str], _Recorded] = {}


class _ResourceCollector(Collector):
    """Renders the per-resource series at scrape time."""

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for family in _FAMILIES:
            labels = ["namespace", "name", *([family.label] if family.label else [])]
            series = CounterMetricFamily if family.counter else GaugeMetricFamily
            families[family.name] = series(family.name, family.help, labels=labels)
        with _phases_lock:
            records = [(key, r.gauges, tuple(r.counts.items())) for key, r in _recorded.items()]
        for (kind, namespace, name), gauges, counts in records:
            for family, value in zip(_GAUGES[kind], gauges):
                if value is not None:
                    families[family.name].add_metric([namespace, name, *family.extra], value)
            for family, count in counts:
                families[family.name].add_metric([namespace, name, *family.extra], count)
        return families.values()


REGISTRY.register(_ResourceCollector())

# Known from the start, so an error rate reads 0 before the first error instead of "no data".
for _kind in ("TrainingJob", "ModelService"):
    for _result in ("ok", "error"):
        RECONCILES.labels(_kind, _result)

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
    """Remember one resource's phase and move the by-phase gauge; O(1) per call. None forgets the resource:
    its phase and every per-resource series of it."""
    key = (kind, namespace, name)
    with _phases_lock:
        if phase is None:
            _recorded.pop(key, None)
        old = _phases.pop(key, None) if phase is None else _phases.get(key)
        if old == phase:
            return
        if phase is not None:
            _phases[key] = phase
        for changed, delta in ((old, -1), (phase, 1)):
            if changed is not None:
                count = _phase_counts[(kind, changed)] = _phase_counts.get((kind, changed), 0) + delta
                RESOURCES_BY_PHASE.labels(kind, changed).set(count)  # a phase that emptied shows 0


def record_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Mirror the status a pass published in the per-resource series; O(1), and a status that did not
    change costs a dict lookup and a tuple compare. Counts what changed between two statuses: a new
    canary analysis (lastAnalysis.time), a new replica count of the autoscaler (autoscaling.desiredReplicas)."""
    if kind == "TrainingJob":
        progress = _dict(status.get("progress"))
        gauges: Values = (
            progress.get("epoch"), progress.get("checkpointedEpoch"), progress.get("epochs"), progress.get("step"),
            progress.get("loss"), progress.get("valAccuracy"),
            progress.get("samplesPerSecond") if status.get("phase") == "Running" else None,
            status.get("restarts", 0), status.get("preemptions", 0))
        facts: Values = ()
    elif kind == "ModelService":
        analysis, scaling = _dict(status.get("lastAnalysis")), _dict(status.get("autoscaling"))
        gauges = (status.get("replicas", 0), status.get("readyReplicas", 0),
                  _dict(status.get("canary")).get("weight", 0), status.get("modelVersion"))
        facts = (analysis.get("time"), analysis.get("verdict"), scaling.get("desiredReplicas"),
                 isinstance(status.get("canary"), dict))
    elif kind == "ModelPool":
        servers = [s for s in status.get("servers") or [] if isinstance(s, dict)]
        totals = _dict(status.get("totals"))
        gauges = (status.get("replicas", 0), status.get("readyServers", 0), status.get("copies", 0),
                  status.get("models", 0), sum(_number(s.get("bytesUsed")) or 0 for s in servers),
                  sum(_number(s.get("capacityBytes")) or 0 for s in servers), totals.get("loads", 0),
                  totals.get("unloads", 0), totals.get("evictions", 0), len(status.get("unplaced") or []))
        facts = ()
    else:
        return
    gauges = tuple(_number(v) for v in gauges)
    key = (kind, namespace, name)
    with _phases_lock:
        old = _recorded.get(key)
        if old is not None and old.gauges == gauges and old.facts == facts:
            return
        first = old is None
        if old is None:
            old = _recorded[key] = _Recorded(gauges, facts, {})
        if kind == "ModelService":
            _count_service_changes(old.counts, old.facts, facts, first)
        old.gauges, old.facts = gauges, facts


def _count_service_changes(counts: dict[_Family, float], before: Values, now: Values, first: bool) -> None:
    """Counts from two consecutive statuses; nothing from the first one seen (after a restart it is old news)."""
    when, verdict, desired, canary = now
    if canary:  # analyses come during a canary: the verdicts exist at 0 before the first (increase() sees it)
        for known in _VERDICTS:
            counts.setdefault(known, 0.0)
    if not first and when and when != before[0] and isinstance(verdict, str):
        analysed = replace(_ANALYSES, extra=(verdict,))
        counts[analysed] = counts.get(analysed, 0.0) + 1
    if isinstance(desired, int):  # autoscaled: both directions exist from the start ("none", not "no data")
        moved = desired - before[2] if isinstance(before[2], int) and not first else 0
        counts[_UP] = counts.get(_UP, 0.0) + (moved > 0)
        counts[_DOWN] = counts.get(_DOWN, 0.0) + (moved < 0)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
