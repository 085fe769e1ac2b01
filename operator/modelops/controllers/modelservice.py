"""The ModelService controller: observe (the caches, plus the Prometheus samples the pass needs), one pure
plan (resources/modelservice_plan.plan_service), one writer. Nothing here decides or writes."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Iterable

from pydantic import ValidationError

from modelops import API_VERSION
from modelops.api.modelservice import ModelServiceSpec
from modelops.autoscale.prometheus import (Prometheus, PrometheusUnavailable, canary_queries, metric_queries,
                                          requests_query, selector)
from modelops.controllers.common import claimants, end_orphans, refuse_invalid_spec, report_failure, write_plan
from modelops.controllers.model_check import check_inputs
from modelops.engine.cache import IndexFn, Obj, by_controller_uid, by_label, trim_pod
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Failure, Key
from modelops.kube import controller_owner
from modelops.metrics import reconcile_timer, record_phase
from modelops.resources import modelservice as build
from modelops.resources.meta import Claim, by_claim, is_ours
from modelops.resources.plan import with_orphans
from modelops.resources.pods import Wait, pod_wait
from modelops.resources.scale_to_zero import Demand, scales_to_zero, targets_name
from modelops.resources.modelservice_plan import (AnalysisSample, MetricReading, ObservedRevision, ServiceMemory,
                                                  ServiceObservation, plan_service, rollout_state, with_evaluation)
from modelops.resources import modelpool as build_pool
from modelops.resources.pooled_service_plan import (ANNOTATION_ROLLOUT, PooledObservation, decode_rollout,
                                                    plan_pooled_service, recorded_rollout, revision_name)
from modelops.rollout import evaluation
from modelops.rollout.analysis import CanarySample
from modelops.rollout.canary import ANNOTATION as ROLLOUT_ANNOTATION, RolloutState, analysis_window

KIND = "ModelService"
SERVICE_MONITOR = ("monitoring.coreos.com/v1", "ServiceMonitor")

log = logging.getLogger(__name__)


def _follows(obj: Obj) -> Iterable[str]:
    followed = ((obj.get("spec") or {}).get("model") or {}).get("fromTrainingJob")
    return [f"{obj['metadata'].get('namespace', '')}/{followed}"] if isinstance(followed, str) else []


def pooled_by(obj: Obj) -> Iterable[str]:
    """"<namespace>/<pool>" of a pooled ModelService (its pool's controller reads its demand by this index)."""
    pool = (obj.get("spec") or {}).get("pool")
    return [f"{obj['metadata'].get('namespace', '')}/{pool}"] if isinstance(pool, str) else []


class ModelServiceController:
    kind = KIND
    # What runs (pods, Deployments) is watched by identity, not by label, so an edited label never hides it
    # (resources/meta.is_ours); the rest by our label: one that loses it is found again when next written.
    child_kinds = [
        ChildKind("v1", "Pod", trim_pod, {"service": by_label(build.LABEL_SERVICE), "owner": by_controller_uid,
                                          "claims": by_claim, "served-by": build.served_by}, labels=None,
                  keep=lambda obj: is_ours(obj) or build.is_serving_pod(obj)),
        ChildKind("apps/v1", "Deployment", indexes={"owner": by_controller_uid, "claims": by_claim}, labels=None,
                  keep=is_ours),
        ChildKind("v1", "Service", indexes={"owner": by_controller_uid, "claims": by_claim}),
        ChildKind("v1", "ConfigMap", indexes={"owner": by_controller_uid, "claims": by_claim}),
        ChildKind("autoscaling/v2", "HorizontalPodAutoscaler",
                  indexes={"owner": by_controller_uid, "claims": by_claim}),
        ChildKind(*SERVICE_MONITOR, indexes={"owner": by_controller_uid, "claims": by_claim}, optional=True),
        ChildKind("discovery.k8s.io/v1", "EndpointSlice", indexes={"owner": by_controller_uid, "claims": by_claim}),
    ]
    resource_indexes: dict[str, IndexFn] = {"follows": _follows, "pool": pooled_by}

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None:
        key = (KIND, namespace, name)
        obj = ctx.caches.store(KIND).get(namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            end_orphans(ctx, self.child_kinds, KIND, namespace, name)
            ctx.forget(key)
            record_phase(KIND, namespace, name, None)
            return None
        with reconcile_timer(KIND):
            try:
                spec = ModelServiceSpec.model_validate(obj.get("spec") or {})
            except ValidationError as error:
                refuse_invalid_spec(ctx, obj, error)
                return None
            if spec.pool:
                plan = plan_pooled_service(observe_pooled(ctx, obj, spec))
            else:
                plan = plan_service(observe(ctx, obj, spec, key))
            orphans = claimants(ctx, self.child_kinds, KIND, namespace, name)
            return write_plan(ctx, key, obj, with_orphans(plan, build.ServiceMeta.of(obj), orphans))

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        namespace = obj.get("metadata", {}).get("namespace", "")
        if kind == "Pod":
            annotations = obj.get("metadata", {}).get("annotations") or {}
            owner = annotations.get(build.ANNOTATION_SERVICE_NAME)
            if not owner:  # an evaluation pod: its owner reads the report (an orphaned one: adopts or ends it)
                owner_ref, claim = controller_owner(obj, KIND), Claim.of(obj)
                named = owner_ref.get("name") if owner_ref else claim.name if claim and claim.kind == KIND else None
                if named:
                    yield KIND, namespace, named
                return
            if new is not None and check_inputs(new) != (check_inputs(old) if old else None):
                ctx.checks.forget((namespace, new["metadata"]["name"]))
                ctx.enqueue_check((namespace, new["metadata"]["name"]))
            yield KIND, namespace, owner
            return
        owner_ref = controller_owner(obj, KIND)
        if owner_ref:
            yield KIND, namespace, owner_ref.get("name", "")
        claim = Claim.of(obj)
        if claim and claim.kind == KIND and not controller_owner(obj):
            yield KIND, namespace, claim.name  # an orphan: adopted or ended

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]:
        """A TrainingJob that changed: every ModelService following it looks again (a new model version); a
        ModelPool that changed (where copies are ready): every ModelService in it (its endpoints)."""
        meta = obj.get("metadata") or {}
        if kind == "ModelPool":
            for pooled in ctx.caches.store(KIND).by_index("pool", f"{meta.get('namespace', '')}/{meta.get('name')}"):
                yield KIND, pooled["metadata"]["namespace"], pooled["metadata"]["name"]
            return
        if kind != "TrainingJob":
            return
        for follower in ctx.caches.store(KIND).by_index("follows", f"{meta.get('namespace', '')}/{meta.get('name')}"):
            yield KIND, follower["metadata"]["namespace"], follower["metadata"]["name"]

    def failed(self, ctx: Context, failure: Failure) -> None:
        report_failure(ctx, KIND, failure)


# ---- observe ------------------------------------------------------------------------------------------

def observe(ctx: Context, obj: Obj, spec: ModelServiceSpec, key: Key) -> ServiceObservation:
    """The world as this pass sees it: the caches, and Prometheus only for what is due (the canary's
    analysis when its step has paused long enough, the autoscaling metric every AUTOSCALE_SECONDS)."""
    meta = build.ServiceMeta.of(obj)
    previous = obj.get("status") or {}
    now = datetime.now(timezone.utc)
    target, waiting = resolve_target(ctx, meta.namespace, spec)
    if target is None and spec.model.from_training_job:
        target = last_served(ctx, meta, spec, previous) or None
    desired = build.revision_name(meta, spec, target) if target else None
    serving_pods = ctx.caches.store("Pod").by_index("service", f"{meta.namespace}/{meta.label}")
    observed = observe_revisions(ctx, meta, serving_pods)
    state, warning = rollout_state(observed, previous)
    memory = ctx.memory.get(key) or ServiceMemory()
    window = analysis_window(state, desired, spec.rollout, now) if desired else None
    hpa = ctx.caches.store("HorizontalPodAutoscaler").get(meta.namespace, build.service_name(meta))
    scaling = spec.autoscaling
    due = scaling is not None and scaling.provider == "builtin" and memory.scaling_due(now)
    zero = scales_to_zero(spec) and ctx.demand is not None
    return ServiceObservation(
        meta=meta, spec=spec, previous=previous, now=now, target=target, waiting=waiting, desired=desired,
        followed_missing=bool(spec.model.from_training_job)
        and ctx.absent(API_VERSION, "TrainingJob", meta.namespace, spec.model.from_training_job or ""),
        observed=observed, state=state, state_warning=warning,
        action=(obj["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION),
        serving_pods=serving_pods,
        released_pods=released_pods(ctx, meta),
        evaluation_pods=[p for p in ctx.caches.store("Pod").by_index("owner", meta.uid)
                         if (p["metadata"].get("labels") or {}).get(build.LABEL_EVALUATES)],
        analysis=sample_analysis(ctx.prometheus, state, window) if window else None,
        metric=read_metric(ctx.prometheus, spec, meta, observed, state) if due else None,
        requests=read_requests(ctx.prometheus, spec, meta) if zero and due else None,
        demand=ctx.demand.snapshot(meta.namespace, meta.name) if zero and ctx.demand else Demand(),
        activators=ctx.demand.addresses() if zero and ctx.demand else (),
        slices=tuple(o["metadata"]["name"] for o in ctx.caches.store("EndpointSlice").by_index("owner", meta.uid)),
        memory=memory, service_monitor=ctx.serves(*SERVICE_MONITOR),
        has_hpa=hpa is not None and (controller_owner(hpa) or {}).get("uid") == meta.uid)


def observe_pooled(ctx: Context, obj: Obj, spec: ModelServiceSpec) -> PooledObservation:
    """A pooled ModelService's world: its pool (status: where copies are ready), the pool's server pods, the
    rollout its EndpointSlice records, its evaluation pods, and both versions' metrics when a step is due."""
    meta = build.ServiceMeta.of(obj)
    previous = obj.get("status") or {}
    now = datetime.now(timezone.utc)
    target, waiting = resolve_target(ctx, meta.namespace, spec)
    pools = ctx.caches.stores.get("ModelPool")
    pool = pools.get(meta.namespace, spec.pool or "") if pools is not None else None
    servers = ctx.caches.store("Pod").by_index("owner", pool["metadata"]["uid"]) if pool else []
    keep = {("Service", build.service_name(meta)), ("EndpointSlice", build.service_name(meta)),
            *((("EndpointSlice", targets_name(meta)),) if scales_to_zero(spec) else ())}
    owned = [(o["apiVersion"], o["kind"], o["metadata"]["name"])
             for kind in ("Deployment", "ConfigMap", "HorizontalPodAutoscaler", "Service", "EndpointSlice")
             for o in ctx.caches.store(kind).by_index("owner", meta.uid) if (kind, o["metadata"]["name"]) not in keep]
    endpoints = ctx.caches.store("EndpointSlice").get(meta.namespace, build.service_name(meta))
    ours = endpoints is not None and (controller_owner(endpoints) or {}).get("uid") == meta.uid
    recorded = decode_rollout(((endpoints or {})["metadata"].get("annotations") or {}).get(ANNOTATION_ROLLOUT)
                              if ours else None)
    state, _, _ = recorded_rollout(recorded, previous)
    desired = revision_name(meta, target.version) if target else None
    window = analysis_window(state, desired, spec.rollout, now) if desired else None
    pool_label = build_pool.PoolMeta.of(pool).label if pool else ""
    return PooledObservation(
        meta=meta, spec=spec, previous=previous, now=now, target=target, waiting=waiting, pool=pool,
        servers=servers, owned=owned, recorded=recorded,
        action=(obj["metadata"].get("annotations") or {}).get(ROLLOUT_ANNOTATION),
        analysis=sample_pooled_analysis(ctx.prometheus, spec.model.name, pool_label, state, window)
        if window else None,
        evaluation_pods=[p for p in ctx.caches.store("Pod").by_index("owner", meta.uid)
                         if (p["metadata"].get("labels") or {}).get(build.LABEL_EVALUATES)],
        activators=ctx.demand.addresses() if ctx.demand and scales_to_zero(spec) else (),
        held=ctx.demand.snapshot(meta.namespace, meta.name).held if ctx.demand and scales_to_zero(spec) else 0)


def released_pods(ctx: Context, meta: build.ServiceMeta) -> list[str]:
    """Serving pods of this ModelService that no controller owns any more (found by their annotation)."""
    named = ctx.caches.store("Pod").by_index("served-by", f"{meta.namespace}/{meta.name}")
    return [p["metadata"]["name"] for p in named
            if not controller_owner(p) and not p["metadata"].get("deletionTimestamp")]


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
                previous: dict[str, object]) -> build.Target | None:
    """With the followed TrainingJob gone (or not saying), keep serving what this ModelService's revisions
    record they serve, so a deleted Deployment is re-created: the revision status names as stable if its
    ConfigMap is still ours, else the newest."""
    configs = sorted(ctx.caches.store("ConfigMap").by_index("owner", meta.uid),
                     key=lambda c: str(c["metadata"].get("creationTimestamp", "")), reverse=True)
    recorded = previous.get("stable")
    stable = recorded.get("name") if isinstance(recorded, dict) else None
    configs.sort(key=lambda c: c["metadata"]["name"] != stable)
    return next((t for c in configs if (t := build.served_target(c, spec.model.name))), None)


def observe_revisions(ctx: Context, meta: build.ServiceMeta, serving_pods: list[Obj]) -> dict[str, ObservedRevision]:
    failures: dict[str, str] = {}
    stuck: dict[str, list[tuple[str, Wait]]] = {}
    for pod in sorted(serving_pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        wait = pod_wait(status) if status.get("phase") not in ("Succeeded", "Failed") \
            and not pod["metadata"].get("deletionTimestamp") else None
        if wait:
            revision = (pod["metadata"].get("labels") or {}).get(build.LABEL_REVISION, "")
            stuck.setdefault(revision, []).append((pod["metadata"]["name"], wait))
        ready = build.model_ready_condition(pod)
        if ready and ready.get("status") == "False" and ready.get("reason") == "ModelCheckFailed":
            labels = pod["metadata"].get("labels") or {}
            failures.setdefault(labels.get(build.LABEL_REVISION, ""), f"model check failed: {ready.get('message', '')}")
    observed = {}
    for dep in ctx.caches.store("Deployment").by_index("owner", meta.uid):
        name = dep["metadata"]["name"]
        labels = {k: v for k, v in (dep["metadata"].get("labels") or {}).items() if isinstance(v, str)}
        version = build.revision_version(meta, name)  # its name says, whatever its labels say
        if version is None:
            try:
                version = int(labels.get(build.LABEL_VERSION, 0))
            except ValueError:
                log.warning("Deployment %s/%s: label %s is not a number", meta.namespace, name, build.LABEL_VERSION)
                version = 0
        annotations = {k: v for k, v in (dep["metadata"].get("annotations") or {}).items() if isinstance(v, str)}
        waits = stuck.get(name, [])
        refused = replica_failure(dep)
        seen = ObservedRevision(
            name=name, version=version, replicas=int((dep.get("spec") or {}).get("replicas") or 0),
            ready_replicas=int((dep.get("status") or {}).get("readyReplicas") or 0),
            model_failure=failures.get(name), annotations=annotations, labels=labels,
            wait=waits[0][1] if waits else refused, wait_pod=waits[0][0] if waits else "", waiting=len(waits),
            created=str(dep["metadata"].get("creationTimestamp") or ""), lineage=evaluation.read_lineage(annotations))
        observed[name] = with_evaluation(seen, evaluation.read(annotations), None)
    return observed


def replica_failure(deployment: Obj) -> Wait | None:
    """The ReplicaSet controller cannot create the revision's pods (a quota, admission): its own words, as
    the Deployment's ReplicaFailure condition carries them."""
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return Wait(str(cond.get("reason") or "FailedCreate"), str(cond.get("message") or ""))
    return None


def sample_analysis(prometheus: Prometheus, state: RolloutState, window_seconds: int) -> AnalysisSample:
    """Both revisions over the same window."""
    try:
        canary, stable = (_sample(prometheus, revision, window_seconds) for revision in (state.canary, state.stable))
    except PrometheusUnavailable as error:
        nothing = CanarySample(None, None, None)
        return AnalysisSample(nothing, nothing, str(error))
    return AnalysisSample(canary, stable)


def _sample(prometheus: Prometheus, revision: str | None, window_seconds: int) -> CanarySample:
    return _read_sample(prometheus, selector(modelops_dev_revision=revision or ""), window_seconds)


def sample_pooled_analysis(prometheus: Prometheus, model: str, pool: str, state: RolloutState,
                           window_seconds: int) -> AnalysisSample:
    """Both versions over the same window, from Triton's per-model metrics on the pool's servers: a pool
    server serves many models, so the selector names the model, the version and the pool (its server pods'
    modelops.dev/model-pool label, which the scrape keeps as modelops_dev_model_pool)."""
    try:
        canary, stable = (_read_sample(prometheus, selector(model=model, version=str(version),
                                                            modelops_dev_model_pool=pool), window_seconds)
                          for version in (state.canary_version, state.stable_version))
    except PrometheusUnavailable as error:
        nothing = CanarySample(None, None, None)
        return AnalysisSample(nothing, nothing, str(error))
    return AnalysisSample(canary, stable)


def _read_sample(prometheus: Prometheus, sel: str, window_seconds: int) -> CanarySample:
    queries = canary_queries(sel, window_seconds)
    p99_us = prometheus.scalar(queries["p99_us"])
    return CanarySample(prometheus.scalar(queries["success"]), prometheus.scalar(queries["failure"]),
                        None if p99_us is None else p99_us / 1000.0)


def read_metric(prometheus: Prometheus, spec: ModelServiceSpec, meta: build.ServiceMeta,
                observed: dict[str, ObservedRevision], state: RolloutState) -> MetricReading:
    metric = spec.autoscaling.metric  # type: ignore[union-attr]
    ready = sum(observed[r].ready_replicas for r in (state.stable, state.canary) if r in observed)
    try:
        numerator, denominator = metric_queries(metric, selector(modelops_dev_model_service=meta.label))
        top = prometheus.scalar(numerator)
        if top is None:
            return MetricReading(None)
        if metric == "inferenceRatePerReplica":
            return MetricReading(top / max(ready, 1))
        if denominator is not None:
            rate = prometheus.scalar(denominator)
            return MetricReading(0.0 if not rate else top / rate)  # no requests: nothing queues
        return MetricReading(top)
    except PrometheusUnavailable as error:
        return MetricReading(None, f"metric unavailable: {error}")


def read_requests(prometheus: Prometheus, spec: ModelServiceSpec, meta: build.ServiceMeta) -> MetricReading:
    """Triton's requests over the idle period (scale to zero); no data or no Prometheus: value None."""
    seconds = spec.autoscaling.scale_to_zero_after_seconds  # type: ignore[union-attr]
    try:
        return MetricReading(prometheus.scalar(requests_query(selector(modelops_dev_model_service=meta.label),
                                                              seconds)))
    except PrometheusUnavailable as error:
        return MetricReading(None, str(error))
