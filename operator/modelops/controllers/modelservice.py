"""kopf handlers for ModelServices: resolve the model version, decide the rollout and the replica count,
apply the children, write status; and verify each serving pod's model before it takes traffic."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import kopf
from pydantic import ValidationError

from modelops import API_VERSION, GROUP, VERSION
from modelops.api.modelservice import ModelServiceSpec
from modelops.autoscale.decision import ScaleMemory, decide as decide_scale
from modelops.autoscale.prometheus import Prometheus, PrometheusUnavailable, canary_queries, metric_queries, selector
from modelops.controllers.common import KeyedLocks, Requeuer, refuse_invalid_spec
from modelops.kube import Kube, controller_owner, status_patch
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import ObservedRevision, PlanInputs, plan_service, state_from_status
from modelops.rollout.analysis import CanarySample, judge
from modelops.rollout.canary import CanaryHealth, Decision, decide
from modelops.clock import rfc3339

KIND = "ModelService"
PLURAL = "modelservices"
ROLLOUT_ANNOTATION = "modelops.dev/rollout"  # "promote" or "abort"
RESYNC_SECONDS = 30.0
AUTOSCALE_SECONDS = 10.0
POD_CHECK_SECONDS = 3.0

log = logging.getLogger(__name__)
_locks = KeyedLocks()
_requeue = Requeuer()
_pod_checks = Requeuer()
_scale_memory: dict[tuple[str, str], ScaleMemory] = {}
# The last autoscaling evaluation per ModelService: pod events reconcile often, the scaler decides every
# AUTOSCALE_SECONDS (like the HPA's sync period), so its windows and rate limits see a steady cadence.
_last_scaling: dict[tuple[str, str], tuple[float, int, dict[str, Any]]] = {}


def reconcile(kube: Kube, prometheus: Prometheus, namespace: str, name: str) -> None:
    with _locks.hold((namespace, name)), reconcile_timer(KIND):
        obj = kube.get(API_VERSION, KIND, namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            _forget(namespace, name)
            return
        try:
            spec = ModelServiceSpec.model_validate(obj.get("spec") or {})
        except ValidationError as error:
            refuse_invalid_spec(kube, obj, error)
            return
        meta = build.ServiceMeta(name, namespace, obj["metadata"]["uid"], obj["metadata"].get("generation"))
        previous: dict[str, Any] = obj.get("status") or {}
        now = datetime.now(timezone.utc)
        target, waiting = resolve_target(kube, namespace, spec)
        desired = build.revision_name(meta, spec, target) if target else None
        observed = observe_revisions(kube, meta)
        action = (obj["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        action = action if action in ("promote", "abort") else None

        decision, analysis = None, None
        if desired and target:
            decision, analysis = _decide_rollout(prometheus, meta, spec, desired, target.version, observed,
                                                 previous, action, now)
        total, autoscaling = _replica_total(prometheus, meta, spec, observed, previous, now)
        has_hpa = kube.get("autoscaling/v2", "HorizontalPodAutoscaler", namespace, build.service_name(meta)) is not None
        plan = plan_service(PlanInputs(
            meta=meta, spec=spec, desired=desired, target=target, decision=decision, waiting=waiting,
            observed=observed, total=total, previous=previous, now=now, last_analysis=analysis,
            autoscaling=autoscaling, service_monitor=kube.has_kind("monitoring.coreos.com/v1", "ServiceMonitor"),
            has_hpa=has_hpa))

        for child in plan.apply:
            kube.apply(child)
        for revision, replicas in plan.scale.items():
            kube.patch("apps/v1", "Deployment", namespace, revision, {"spec": {"replicas": replicas}})
        for api_version, kind, child_name in plan.delete:
            kube.delete(api_version, kind, namespace, child_name)
        patch = status_patch(previous, plan.status)
        if patch:
            kube.patch_status(API_VERSION, KIND, namespace, name, patch)
        for event in plan.events:
            kube.post_event(obj, event)
        if action and decision and decision.outcome in ("Promoted", "RolledBack"):
            kube.patch(API_VERSION, KIND, namespace, name, {"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}})
        record_phase(KIND, namespace, name, plan.status.get("phase"))

        delay = RESYNC_SECONDS
        if decision and decision.requeue_after is not None:
            delay = min(delay, decision.requeue_after)
        if spec.autoscaling and spec.autoscaling.provider == "builtin":
            delay = min(delay, AUTOSCALE_SECONDS)
        _requeue.after((namespace, name), delay, lambda: reconcile(kube, prometheus, namespace, name))


def resolve_target(kube: Kube, namespace: str, spec: ModelServiceSpec) -> tuple[build.Target | None, str]:
    """The version to serve and its signature, or (None, why not)."""
    model = spec.model
    if model.version is not None:
        signature = model.signature.wire() if model.signature else None
        return build.Target(model.version, signature), ""
    job = kube.get(API_VERSION, "TrainingJob", namespace, model.from_training_job or "")
    if job is None:
        return None, f"TrainingJob {model.from_training_job} not found"
    published = (job.get("status") or {}).get("model")
    if not published:
        return None, f"waiting for TrainingJob {model.from_training_job} to publish a model"
    if published.get("name") != model.name:
        return None, (f"TrainingJob {model.from_training_job} publishes model {published.get('name')}, "
                      f"not {model.name}")
    if not published.get("signature"):
        return None, f"TrainingJob {model.from_training_job} reported no signature for version {published['version']}"
    return build.Target(int(published["version"]), published["signature"]), ""


def observe_revisions(kube: Kube, meta: build.ServiceMeta) -> dict[str, ObservedRevision]:
    labels = f"{build.LABEL_SERVICE}={meta.label}"
    failures: dict[str, str] = {}
    for pod in kube.list("v1", "Pod", meta.namespace, labels=labels):
        gate = _gate(pod)
        if gate and gate.get("status") == "False" and gate.get("reason") == "ModelCheckFailed":
            failures.setdefault(pod["metadata"]["labels"].get(build.LABEL_REVISION, ""), gate.get("message", ""))
    observed = {}
    for dep in kube.list("apps/v1", "Deployment", meta.namespace, labels=labels):
        if (controller_owner(dep, KIND) or {}).get("uid") != meta.uid:
            continue
        name = dep["metadata"]["name"]
        observed[name] = ObservedRevision(
            name=name, version=int(dep["metadata"]["labels"].get(build.LABEL_VERSION, 0)),
            replicas=int(dep["spec"].get("replicas") or 0),
            ready_replicas=int((dep.get("status") or {}).get("readyReplicas") or 0),
            model_failure=failures.get(name))
    return observed


def _decide_rollout(prometheus: Prometheus, meta: build.ServiceMeta, spec: ModelServiceSpec, desired: str,
                    version: int, observed: dict[str, ObservedRevision], previous: dict[str, Any],
                    action: Any, now: datetime) -> tuple[Decision, dict[str, Any] | None]:
    state = state_from_status(previous)
    seen = observed.get(state.canary or "")
    health = CanaryHealth(seen.ready_replicas, seen.replicas, seen.model_failure) if seen else None
    decision = decide(state, desired, version, spec.rollout, canary=health, verdict=None, action=action, now=now)
    if not decision.analysis_due:
        return decision, None
    step = spec.rollout.steps[state.step]
    queries = canary_queries(selector(modelops_dev_revision=state.canary or ""), step.pause_seconds)
    try:
        sample = CanarySample(prometheus.scalar(queries["success"]), prometheus.scalar(queries["failure"]),
                              _ms(prometheus.scalar(queries["p99_us"])))
        verdict, message = judge(sample, spec.rollout.analysis)
    except PrometheusUnavailable as error:
        sample, verdict, message = CanarySample(None, None, None), "Inconclusive", str(error)
    analysis = {"time": rfc3339(now), "verdict": verdict, "message": message,
                "errorRate": _error_rate(sample), "p99LatencyMs": sample.p99_latency_ms,
                "requests": (sample.success or 0) + (sample.failure or 0)}
    decision = decide(state, desired, version, spec.rollout, canary=health, verdict=verdict,
                      verdict_message=message, action=action, now=now)
    return decision, {k: v for k, v in analysis.items() if v is not None}


def _replica_total(prometheus: Prometheus, meta: build.ServiceMeta, spec: ModelServiceSpec,
                   observed: dict[str, ObservedRevision], previous: dict[str, Any],
                   now: datetime) -> tuple[int, dict[str, Any] | None]:
    scaling = spec.autoscaling
    if scaling is None or scaling.provider != "builtin":
        return spec.replicas, None
    key = (meta.namespace, meta.name)
    last = _last_scaling.get(key)
    if last and time.monotonic() - last[0] < AUTOSCALE_SECONDS:
        return last[1], last[2]
    state = state_from_status(previous)
    serving = [observed[r] for r in (state.stable, state.canary) if r in observed]
    current = sum(r.replicas for r in serving) or (previous.get("autoscaling") or {}).get("desiredReplicas") \
        or scaling.min_replicas
    ready = sum(r.ready_replicas for r in serving)
    value, unavailable = None, ""
    try:
        value = _metric_value(prometheus, scaling.metric, meta, ready)
        if value is None:
            unavailable = "metric unavailable: Prometheus has no data for this ModelService yet"
    except PrometheusUnavailable as error:
        unavailable = f"metric unavailable: {error}"
    decision = decide_scale(current, value, scaling, _scale_memory.get(key, ScaleMemory()), now, unavailable)
    _scale_memory[key] = decision.memory
    scaled_at = (previous.get("autoscaling") or {}).get("lastScaleTime")
    status = {"metric": scaling.metric, "value": value, "target": scaling.target,
              "desiredReplicas": decision.desired, "reason": decision.reason,
              "lastScaleTime": rfc3339(now) if decision.desired != current else scaled_at}
    status = {k: v for k, v in status.items() if v is not None}
    _last_scaling[key] = (time.monotonic(), decision.desired, status)
    return decision.desired, status


def _metric_value(prometheus: Prometheus, metric: str, meta: build.ServiceMeta, ready: int) -> float | None:
    numerator, denominator = metric_queries(metric, selector(modelops_dev_model_service=meta.label))
    top = prometheus.scalar(numerator)
    if top is None:
        return None
    if metric == "inferenceRatePerReplica":
        return top / max(ready, 1)
    if denominator is not None:
        rate = prometheus.scalar(denominator)
        return 0.0 if not rate else top / rate  # no requests: nothing queues
    return top


def verify_pod(kube: Kube, pod: dict[str, Any]) -> None:
    """Set the pod's model-ready readiness gate once Triton in it serves the right model (tritonclient)."""
    from modelops.triton.check import check_model

    meta, status = pod["metadata"], pod.get("status") or {}
    gate = _gate(pod)
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return
    if gate and (gate.get("status") == "True" or gate.get("reason") == "ModelCheckFailed"):
        return
    annotations = meta.get("annotations") or {}
    model, _, version = annotations.get(build.ANNOTATION_MODEL, ":").partition(":")
    if not model or not version:
        return
    expected = json.loads(annotations[build.ANNOTATION_SIGNATURE]) if annotations.get(build.ANNOTATION_SIGNATURE) \
        else None
    result = check_model(f"{status['podIP']}:{build.HTTP_PORT}", model, int(version), expected)
    key = (meta["namespace"], meta["name"])
    if result.verdict == "pending":
        _pod_checks.after(key, POD_CHECK_SECONDS, lambda: _recheck(kube, meta["namespace"], meta["name"]))
        if not gate:
            kube.patch_pod_condition(meta["namespace"], meta["name"], build.MODEL_READY_GATE, False,
                                     "ModelCheckPending", result.message)
        return
    _pod_checks.cancel(key)
    passed = result.verdict == "passed"
    kube.patch_pod_condition(meta["namespace"], meta["name"], build.MODEL_READY_GATE, passed,
                             "ModelVerified" if passed else "ModelCheckFailed", result.message)


def _recheck(kube: Kube, namespace: str, name: str) -> None:
    pod = kube.get("v1", "Pod", namespace, name)
    if pod:
        verify_pod(kube, pod)


def _gate(pod: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == build.MODEL_READY_GATE), None)


def _forget(namespace: str, name: str) -> None:
    _requeue.cancel((namespace, name))
    _scale_memory.pop((namespace, name), None)
    _last_scaling.pop((namespace, name), None)
    record_phase(KIND, namespace, name, None)


def _ms(microseconds: float | None) -> float | None:
    return None if microseconds is None else microseconds / 1000.0


def _error_rate(sample: CanarySample) -> float | None:
    total = (sample.success or 0) + (sample.failure or 0)
    return (sample.failure or 0) / total if total else None


# ---- handlers ------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def on_model_service(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    reconcile(memo.kube, memo.prometheus, namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # no finalizer: children go by owner references
def on_model_service_deleted(name: str, namespace: str, **_: Any) -> None:
    _forget(namespace, name)


@kopf.on.event("", "v1", "pods", labels={build.LABEL_SERVICE: kopf.PRESENT})
def on_serving_pod(body: kopf.Body, event: kopf.RawEvent, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    pod = dict(body)
    if event.get("type") != "DELETED":
        verify_pod(memo.kube, pod)
    owner = (pod["metadata"].get("annotations") or {}).get(build.ANNOTATION_SERVICE_NAME)
    if owner:
        reconcile(memo.kube, memo.prometheus, namespace, owner)


@kopf.on.event("apps", "v1", "deployments", labels={build.LABEL_SERVICE: kopf.PRESENT})
def on_revision_deployment(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    owner = controller_owner(dict(body), KIND)
    if owner:
        reconcile(memo.kube, memo.prometheus, namespace, owner["name"])


@kopf.on.event(GROUP, VERSION, "trainingjobs")
def on_training_job(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A TrainingJob that published a model: roll it out in every ModelService following it."""
    if not (body.get("status") or {}).get("model"):
        return
    for ms in memo.kube.list(API_VERSION, KIND, namespace):
        if (ms.get("spec") or {}).get("model", {}).get("fromTrainingJob") == body["metadata"]["name"]:
            reconcile(memo.kube, memo.prometheus, namespace, ms["metadata"]["name"])

