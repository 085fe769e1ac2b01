"""The ModelService controller: resolve the model version, decide the rollout and the replica count,
write only the children that differ, write status when it changed; and verify each serving pod's model
(on the model-check queue) before it takes traffic."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import ValidationError

from modelops import API_VERSION
from modelops.api.modelservice import ModelServiceSpec
from modelops.autoscale.decision import ScaleMemory, decide as decide_scale
from modelops.autoscale.prometheus import Prometheus, PrometheusUnavailable, canary_queries, metric_queries, selector
from modelops.clock import rfc3339
from modelops.controllers.evaluation import FAILED_REASON, pod_gate, run_gate
from modelops.controllers.common import (
    refusal_backoff, refusal_event, refuse_invalid_spec, report_failure, with_refusal, write_children, write_status)
from modelops.engine.cache import Obj, by_controller_uid, by_label, trim_pod
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Backoff, Failure, Key
from modelops.kube import controller_owner
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import ObservedRevision, PlanInputs, plan_service, rollout_state
from modelops.rollout import evaluation
from modelops.rollout.analysis import CanarySample, judge, latency_ratio
from modelops.rollout.canary import ANNOTATION as ROLLOUT_ANNOTATION, CanaryHealth, Decision, RolloutState, decide

KIND = "ModelService"
RESYNC_SECONDS = 300.0
AUTOSCALE_SECONDS = 10.0
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")

log = logging.getLogger(__name__)
_scale_memory: dict[tuple[str, str], ScaleMemory] = {}
# The last autoscaling evaluation per ModelService: events reconcile often, the scaler decides every
# AUTOSCALE_SECONDS (like the HPA's sync period), so its windows and rate limits see a steady cadence.
_last_scaling: dict[tuple[str, str], tuple[float, int, dict[str, Any]]] = {}
# Rechecks of a pod whose Triton is not ready yet: 1 s doubling to 30 s, reset by a change of the pod.
check_backoff = Backoff(base=1.0, cap=30.0, jitter=0.2)


def _follows(obj: Obj) -> Iterable[str]:
    followed = ((obj.get("spec") or {}).get("model") or {}).get("fromTrainingJob")
    return [f"{obj['metadata'].get('namespace', '')}/{followed}"] if isinstance(followed, str) else []


class ModelServiceController:
    kind = KIND
    child_kinds = [
        ChildKind("v1", "Pod", trim_pod, {"service": by_label(build.LABEL_SERVICE), "owner": by_controller_uid}),
        ChildKind("apps/v1", "Deployment", indexes={"owner": by_controller_uid}),
        ChildKind("v1", "Service", indexes={"owner": by_controller_uid}),
        ChildKind("v1", "ConfigMap", indexes={"owner": by_controller_uid}),
        ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", indexes={"owner": by_controller_uid}),
        ChildKind(*SERVICE_MONITOR, indexes={"owner": by_controller_uid}, optional=True),
    ]
    resource_indexes = {"follows": _follows}

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None:
        obj = ctx.caches.store(KIND).get(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            _forget(namespace, name)
            return None
        with reconcile_timer(KIND):
            return self._pass(ctx, obj)

    def _pass(self, ctx: Context, obj: Obj) -> float | None:
        meta_in = obj["metadata"]
        namespace, name = meta_in["namespace"], meta_in["name"]
        key = (KIND, namespace, name)
        try:
            spec = ModelServiceSpec.model_validate(obj.get("spec") or {})
        except ValidationError as error:
            refuse_invalid_spec(ctx, obj, error)
            return None
        meta = build.ServiceMeta(name, namespace, meta_in["uid"], meta_in.get("generation"))
        previous: dict[str, Any] = obj.get("status") or {}
        now = datetime.now(timezone.utc)
        target, waiting = resolve_target(ctx, namespace, spec)
        if target is None and spec.model.from_training_job:
            target = last_served(ctx, meta, spec, previous) or None
        desired = build.revision_name(meta, spec, target) if target else None
        observed = observe_revisions(ctx, meta)
        state, contradiction = rollout_state(observed, previous)
        if contradiction:
            log.warning("ModelService %s/%s: %s", namespace, name, contradiction)
        recorded = {r: o.evaluation for r, o in observed.items()}
        records, lineages, gate_due = run_gate(ctx, meta, spec, observed, state, (target.lineage or {}).get("image")
                                               if target else None, now)
        for revision, record in records.items():
            observed[revision] = with_evaluation(observed[revision], record, lineages.get(revision))
        action = (meta_in.get("annotations") or {}).get(ROLLOUT_ANNOTATION)
        action = action if action in ("promote", "abort") else None

        decision, analysis = None, None
        if desired and target:
            decision, analysis = _decide_rollout(ctx.prometheus, spec, desired, target.version, observed, state,
                                                 action, now)
        total, autoscaling = _replica_total(ctx.prometheus, meta, spec, observed, state, previous, now)
        hpa = ctx.caches.store("HorizontalPodAutoscaler").get(namespace, build.service_name(meta))
        plan = plan_service(PlanInputs(
            meta=meta, spec=spec, desired=desired, target=target, decision=decision, waiting=waiting,
            observed=observed, total=total, previous=previous, now=now, state=state, last_analysis=analysis,
            autoscaling=autoscaling, service_monitor=ctx.serves(*SERVICE_MONITOR), recorded_evaluations=recorded,
            has_hpa=hpa is not None and (controller_owner(hpa) or {}).get("uid") == meta.uid))

        status, requeue = plan.status, None
        refusal = write_children(ctx, meta.uid, plan.apply)
        if refusal:
            status = with_refusal(status, refusal, generation=meta.generation, stored=previous.get("conditions", []))
            requeue = refusal_backoff.next_delay(key)
        else:
            refusal_backoff.forget(key)
            for revision, patch in plan.patch.items():
                ctx.caches.remember(ctx.kube.patch("apps/v1", "Deployment", namespace, revision, patch))
            for api_version, kind, child in plan.delete:
                ctx.children.delete(meta.uid, api_version, kind, namespace, child)
            recheck_held_pods(ctx, meta, [r for r, record in records.items() if record["verdict"] in evaluation.FINAL])
        write_status(ctx, obj, status)
        for event in plan.events + refusal_event(previous, refusal):
            ctx.kube.post_event(obj, event)
        if action and decision and decision.action_used:
            ctx.kube.patch(API_VERSION, KIND, namespace, name, {"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}})
        record_phase(KIND, namespace, name, status.get("phase"))

        delay = RESYNC_SECONDS if requeue is None else requeue
        if decision and decision.requeue_after is not None:
            delay = min(delay, decision.requeue_after)
        if gate_due is not None:
            delay = min(delay, gate_due)
        if spec.autoscaling and spec.autoscaling.provider == "builtin":
            delay = min(delay, AUTOSCALE_SECONDS)
        return delay

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        namespace = obj.get("metadata", {}).get("namespace", "")
        if kind == "Pod":
            annotations = obj.get("metadata", {}).get("annotations") or {}
            owner = annotations.get(build.ANNOTATION_SERVICE_NAME)
            if not owner:  # an evaluation pod: its owner reads the report
                owner_ref = controller_owner(obj, KIND)
                if owner_ref:
                    yield KIND, namespace, owner_ref.get("name", "")
                return
            if new is not None and _check_inputs(new) != (_check_inputs(old) if old else None):
                check_backoff.forget((namespace, new["metadata"]["name"]))
                ctx.enqueue_check((namespace, new["metadata"]["name"]))
            yield KIND, namespace, owner
            return
        owner_ref = controller_owner(obj, KIND)
        if owner_ref:
            yield KIND, namespace, owner_ref.get("name", "")

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]:
        """A TrainingJob that changed: every ModelService following it looks again (a new model version)."""
        if kind != "TrainingJob":
            return
        meta = obj.get("metadata") or {}
        for follower in ctx.caches.store(KIND).by_index("follows", f"{meta.get('namespace', '')}/{meta.get('name')}"):
            yield KIND, follower["metadata"]["namespace"], follower["metadata"]["name"]

    def failed(self, ctx: Context, failure: Failure) -> None:
        report_failure(ctx, KIND, failure)


def resolve_target(ctx: Context, namespace: str, spec: ModelServiceSpec) -> tuple[build.Target | None, str]:
    """The version to serve and its signature, or (None, why not)."""
    model = spec.model
    if model.version is not None:
        signature = model.signature.wire() if model.signature else None
        return build.Target(model.version, signature), ""
    job = ctx.caches.store("TrainingJob").get(namespace, model.from_training_job or "")
    if job is None:
        return None, f"TrainingJob {model.from_training_job} not found"
    published = (job.get("status") or {}).get("model")
    if not isinstance(published, dict) or not published:
        return None, f"waiting for TrainingJob {model.from_training_job} to publish a model"
    if published.get("name") != model.name:
        return None, (f"TrainingJob {model.from_training_job} publishes model {published.get('name')}, "
                      f"not {model.name}")
    if not isinstance(published.get("signature"), dict):
        return None, f"TrainingJob {model.from_training_job} reported no signature for version {published.get('version')}"
    try:
        version = int(published["version"])
    except (KeyError, TypeError, ValueError):
        return None, f"TrainingJob {model.from_training_job} reported no valid model version"
    spec_image = (job.get("spec") or {}).get("image")
    job_meta = job["metadata"]
    lineage = {"trainingJob": {"namespace": namespace, "name": job_meta.get("name"), "uid": job_meta.get("uid")},
               "image": spec_image if isinstance(spec_image, str) else None,
               "datasetFingerprint": published.get("datasetFingerprint"), "testAccuracy": published.get("testAccuracy")}
    return build.Target(version, published["signature"], {k: v for k, v in lineage.items() if v is not None}), ""


def last_served(ctx: Context, meta: build.ServiceMeta, spec: ModelServiceSpec,
                previous: dict[str, Any]) -> build.Target | None:
    """With the followed TrainingJob gone (or not saying), keep serving what this ModelService's revisions
    record they serve, so a deleted Deployment is re-created: the revision status names as stable if its
    ConfigMap is still ours, else the newest."""
    configs = sorted(ctx.caches.store("ConfigMap").by_index("owner", meta.uid),
                     key=lambda c: str(c["metadata"].get("creationTimestamp", "")), reverse=True)
    stable = (previous.get("stable") or {}).get("name") if isinstance(previous.get("stable"), dict) else None
    configs.sort(key=lambda c: c["metadata"]["name"] != stable)
    return next((t for c in configs if (t := build.served_target(c, spec.model.name))), None)


def observe_revisions(ctx: Context, meta: build.ServiceMeta) -> dict[str, ObservedRevision]:
    failures: dict[str, str] = {}
    for pod in ctx.caches.store("Pod").by_index("service", f"{meta.namespace}/{meta.label}"):
        gate = _gate(pod)
        if gate and gate.get("status") == "False" and gate.get("reason") == "ModelCheckFailed":
            labels = pod["metadata"].get("labels") or {}
            failures.setdefault(labels.get(build.LABEL_REVISION, ""), f"model check failed: {gate.get('message', '')}")
    observed = {}
    for dep in ctx.caches.store("Deployment").by_index("owner", meta.uid):
        name = dep["metadata"]["name"]
        labels = dep["metadata"].get("labels") or {}
        try:
            version = int(labels.get(build.LABEL_VERSION, 0))
        except ValueError:
            log.warning("Deployment %s/%s: label %s is not a number", meta.namespace, name, build.LABEL_VERSION)
            version = 0
        annotations = {k: v for k, v in (dep["metadata"].get("annotations") or {}).items() if isinstance(v, str)}
        seen = ObservedRevision(
            name=name, version=version, replicas=int((dep.get("spec") or {}).get("replicas") or 0),
            ready_replicas=int((dep.get("status") or {}).get("readyReplicas") or 0),
            model_failure=failures.get(name), annotations=annotations,
            created=str(dep["metadata"].get("creationTimestamp") or ""), lineage=evaluation.read_lineage(annotations))
        observed[name] = with_evaluation(seen, evaluation.read(annotations), None)
    return observed


def with_evaluation(seen: ObservedRevision, record: dict[str, Any] | None,
                    lineage: dict[str, Any] | None) -> ObservedRevision:
    """The revision with its evaluation record (a failed gate is a failure of the revision, like a failed model
    check) and the lineage the evaluation found added to what it had."""
    failure = seen.model_failure
    if record and record.get("verdict") == "Failed":
        failure = f"evaluation gate failed: {record.get('message', '')}"
    return replace(seen, evaluation=record, model_failure=failure, lineage={**(lineage or {}), **seen.lineage})


def _decide_rollout(prometheus: Prometheus, spec: ModelServiceSpec, desired: str, version: int,
                    observed: dict[str, ObservedRevision], state: RolloutState, action: Any,
                    now: datetime) -> tuple[Decision, dict[str, Any] | None]:
    seen = observed.get(state.canary or "")
    health = CanaryHealth(seen.ready_replicas, seen.replicas, seen.model_failure) if seen else None
    decision = decide(state, desired, version, spec.rollout, canary=health, verdict=None, action=action, now=now)
    if not decision.analysis_due:
        return decision, None
    step = spec.rollout.steps[state.step]
    nothing = CanarySample(None, None, None)
    try:  # both revisions over the same window
        sample, stable = (_sample(prometheus, revision, step.pause_seconds) for revision in (state.canary, state.stable))
        verdict, message = judge(sample, spec.rollout.analysis, stable)
    except PrometheusUnavailable as error:
        sample, stable, verdict, message = nothing, nothing, "Inconclusive", str(error)
    analysis = {"time": rfc3339(now), "verdict": verdict, "message": message,
                "errorRate": sample.error_rate, "p99LatencyMs": sample.p99_latency_ms, "requests": sample.requests,
                "stableErrorRate": stable.error_rate, "stableP99LatencyMs": stable.p99_latency_ms,
                "stableRequests": stable.requests, "latencyRatio": latency_ratio(sample, stable)}
    decision = decide(state, desired, version, spec.rollout, canary=health, verdict=verdict,
                      verdict_message=message, action=action, now=now)
    return decision, {k: v for k, v in analysis.items() if v is not None}


def _replica_total(prometheus: Prometheus, meta: build.ServiceMeta, spec: ModelServiceSpec,
                   observed: dict[str, ObservedRevision], state: RolloutState, previous: dict[str, Any],
                   now: datetime) -> tuple[int, dict[str, Any] | None]:
    scaling = spec.autoscaling
    if scaling is None or scaling.provider != "builtin":
        return spec.replicas, None
    key = (meta.namespace, meta.name)
    last = _last_scaling.get(key)
    if last and time.monotonic() - last[0] < AUTOSCALE_SECONDS:
        return last[1], last[2]
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


# ---- the model check (its own queue) ------------------------------------------------------------------

def check_pod(ctx: Context, key: Key) -> float | None:
    """One check of one serving pod's Triton; sets the pod's model-ready readiness gate. Returns when to
    check again (backing off while Triton is not ready), or None when there is nothing (more) to check."""
    from modelops.triton.check import check_model

    namespace, name = key  # type: ignore[misc]
    pod = ctx.caches.store("Pod").get(namespace, name)
    target = _check_target(pod) if pod else None
    if pod is None or target is None:
        check_backoff.forget(key)
        return None
    address, model, version, expected = target
    result = check_model(address, model, version, expected)
    gate = _gate(pod)
    if result.verdict == "pending":
        if not gate:
            _set_gate(ctx, namespace, name, False, "ModelCheckPending", result.message)
        return check_backoff.next_delay(key)
    check_backoff.forget(key)
    passed = result.verdict == "passed"
    held = pod_gate(ctx, pod) if passed else None
    if held:
        if (gate or {}).get("reason") != held[0]:
            _set_gate(ctx, namespace, name, False, *held)
        return None
    _set_gate(ctx, namespace, name, passed, "ModelVerified" if passed else "ModelCheckFailed", result.message)
    return None


def _check_target(pod: Obj) -> tuple[str, str, int, dict[str, Any] | None] | None:
    """(address, model, version, signature) when the pod's model still needs checking, else None."""
    meta, status = pod["metadata"], pod.get("status") or {}
    gate = _gate(pod)
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    if gate and (gate.get("status") == "True" or gate.get("reason") in ("ModelCheckFailed", FAILED_REASON)):
        return None
    annotations = meta.get("annotations") or {}
    model, _, version = str(annotations.get(build.ANNOTATION_MODEL, ":")).partition(":")
    try:
        number = int(version)
        expected = json.loads(annotations[build.ANNOTATION_SIGNATURE]) if annotations.get(build.ANNOTATION_SIGNATURE) \
            else None
    except ValueError:
        log.warning("pod %s/%s: unreadable model annotations; not checked", meta.get("namespace"), meta.get("name"))
        return None
    if not model or not isinstance(expected, (dict, type(None))):
        return None
    return f"{status['podIP']}:{build.HTTP_PORT}", model, number, expected


def _check_inputs(pod: Obj) -> tuple[Any, ...]:
    """What a model check depends on; a pod event that changes none of it (e.g. our own gate patch)
    does not reset the recheck backoff."""
    status = pod.get("status") or {}
    containers = tuple((c.get("name"), c.get("ready"), c.get("started"), c.get("restartCount"))
                       for c in status.get("containerStatuses") or [])
    return status.get("phase"), status.get("podIP"), containers, _check_target(pod) is not None


def recheck_held_pods(ctx: Context, meta: build.ServiceMeta, revisions: list[str]) -> None:
    """Pods held out of the Service while their revision was evaluated: check them again now that the verdict
    is on the Deployment (in the cache: this pass wrote it), so they join or stay out."""
    for pod in ctx.caches.store("Pod").by_index("service", f"{meta.namespace}/{meta.label}") if revisions else []:
        if (pod["metadata"].get("labels") or {}).get(build.LABEL_REVISION) in revisions:
            ctx.enqueue_check((meta.namespace, pod["metadata"]["name"]))


def _set_gate(ctx: Context, namespace: str, name: str, passed: bool, reason: str, message: str) -> None:
    written = ctx.kube.patch_pod_condition(namespace, name, build.MODEL_READY_GATE, passed, reason, message)
    if written:
        ctx.caches.remember(written)


def _gate(pod: Obj) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == build.MODEL_READY_GATE), None)


def _forget(namespace: str, name: str) -> None:
    refusal_backoff.forget((KIND, namespace, name))
    _scale_memory.pop((namespace, name), None)
    _last_scaling.pop((namespace, name), None)
    record_phase(KIND, namespace, name, None)


def _ms(microseconds: float | None) -> float | None:
    return None if microseconds is None else microseconds / 1000.0


def _sample(prometheus: Prometheus, revision: str | None, window_seconds: int) -> CanarySample:
    queries = canary_queries(selector(modelops_dev_revision=revision or ""), window_seconds)
    return CanarySample(prometheus.scalar(queries["success"]), prometheus.scalar(queries["failure"]),
                        _ms(prometheus.scalar(queries["p99_us"])))
