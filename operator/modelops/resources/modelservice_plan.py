"""Pure planning for a ModelService pass: from one observation (the caches, plus the Prometheus samples the
pass needs) to one plan. Every decision is made here, once: the evaluation gate's records and pods, the
rollout step (canary.decide), the replica count (autoscale.decision), then the children, status and Events."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from modelops.api.modelservice import ModelServiceSpec, Rollout
from modelops.autoscale.decision import ScaleMemory, decide as decide_scale
from modelops.resources import modelservice as build
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.resources.evaluation_plan import plan_gate
from modelops.resources.meta import MANAGED_BY, MANAGED_BY_LABEL
from modelops.resources.plan import Delete, Patch, Plan
from modelops.resources.pods import Wait, limited, wait_event
from modelops.resources.scale_to_zero import (DRAIN_SECONDS, Demand, activator_slice_name, routing, scales_to_zero,
                                             targets_name, zero_decision)
from modelops.rollout import evaluation
from modelops.rollout.analysis import CanarySample, judge, latency_ratio
from modelops.rollout.canary import (ANNOTATION as ROLLOUT_ANNOTATION, CanaryHealth, Decision, RolloutState, Verdict,
                                     decide)
from modelops.clock import parse_rfc3339, rfc3339

RESYNC_SECONDS = 300.0
AUTOSCALE_SECONDS = 10.0
"""The builtin autoscaler decides this often (like the HPA's sync period), however often events reconcile,
so its windows and rate limits see a steady cadence."""


# A revision's part in the rollout is recorded on its Deployment, so it is rebuilt from the world after a
# restart and a forged or wiped status cannot promote or abandon the wrong revision.
ANNOTATION_ROLE = "modelops.dev/rollout-role"  # stable | canary | retired
ANNOTATION_STEP = "modelops.dev/canary-step"
ANNOTATION_STEP_STARTED = "modelops.dev/canary-step-started-at"
ANNOTATION_STARTED = "modelops.dev/canary-started-at"
ANNOTATION_REJECTED = "modelops.dev/rejected-revision"


@dataclass(frozen=True)
class ObservedRevision:
    """One revision's Deployment as it is."""

    name: str
    version: int
    replicas: int
    ready_replicas: int
    model_failure: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    created: str = ""
    evaluation: dict[str, Any] | None = None
    """The evaluation gate's record (None: the revision is not gated)."""
    lineage: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] | None = None
    """Its labels as observed (None: not observed, nothing to put back)."""
    wait: Wait | None = None
    """Why its replicas cannot start or stay up: its first stuck pod's scheduler or kubelet, or the
    ReplicaSet controller refusing to create pods (quota)."""
    wait_pod: str = ""
    """The pod `wait` quotes ('' when no pod could be created)."""
    waiting: int = 0
    """How many of its pods are stuck."""

    def describe_wait(self) -> str:
        if self.wait is None:
            return ""
        if not self.wait_pod:
            return limited(f"revision {self.name} cannot create its pods: {self.wait.said()}")
        return limited(f"{self.waiting}/{self.replicas} replicas of revision {self.name} cannot start: "
                       f"pod {self.wait_pod} {self.wait.said()}")


@dataclass(frozen=True)
class ServiceMemory:
    """What the builtin autoscaler remembers between passes of one ModelService (held by the engine)."""

    scale: ScaleMemory = field(default_factory=ScaleMemory)
    evaluated_at: datetime | None = None
    desired: int = 0
    status: dict[str, Any] | None = None

    def scaling_due(self, now: datetime) -> bool:
        elapsed = None if self.evaluated_at is None else (now - self.evaluated_at).total_seconds()
        return elapsed is None or not 0 <= elapsed < AUTOSCALE_SECONDS  # (a clock set back: due at once)


@dataclass(frozen=True)
class AnalysisSample:
    """The canary's and the stable revision's metrics over the current step's window (or why there are none)."""

    canary: CanarySample
    stable: CanarySample
    unavailable: str = ""


@dataclass(frozen=True)
class MetricReading:
    """The autoscaling metric as Prometheus answered (value None: no data, or `unavailable` says why)."""

    value: float | None
    unavailable: str = ""


@dataclass(frozen=True)
class ServiceObservation:
    """Everything one ModelService pass knows of the world, read before anything is decided."""

    meta: build.ServiceMeta
    spec: ModelServiceSpec
    previous: dict[str, Any]
    now: datetime
    target: build.Target | None
    waiting: str
    """Why there is no target, when there is none."""
    desired: str | None
    """The revision the spec asks for (None while its model version is not known)."""
    observed: dict[str, ObservedRevision]
    state: RolloutState
    """The rollout as the revision Deployments record it."""
    followed_missing: bool = False
    """The TrainingJob spec.model.fromTrainingJob names does not exist (in the caches)."""
    released_pods: list[str] = field(default_factory=list)
    """Serving pods of this ModelService no controller owns (their ReplicaSet let go of them after their
    labels were edited): replaced already, they are ended, never left running unowned."""
    state_warning: str = ""
    action: str | None = None
    """A person's modelops.dev/rollout annotation ("promote" or "abort")."""
    serving_pods: list[dict[str, Any]] = field(default_factory=list)
    evaluation_pods: list[dict[str, Any]] = field(default_factory=list)
    analysis: AnalysisSample | None = None
    """Sampled only when the canary's step is due for analysis."""
    metric: MetricReading | None = None
    """Read only when the builtin autoscaler is due to decide."""
    memory: ServiceMemory = field(default_factory=ServiceMemory)
    service_monitor: bool = False
    has_hpa: bool = False
    requests: MetricReading | None = None
    """At minReplicas 0, with `metric`: Triton's requests over scaleToZeroAfterSeconds (None value: no data)."""
    demand: Demand = field(default_factory=Demand)
    """What the activators hold for this ModelService now (their /demand long polls)."""
    activators: tuple[str, ...] = ()
    """The activator pods' addresses (its Service's endpoints)."""
    slices: tuple[str, ...] = ()
    """Its EndpointSlices (written while it may scale to zero; removed when it may not)."""


def with_evaluation(seen: ObservedRevision, record: dict[str, Any] | None,
                    lineage: dict[str, Any] | None) -> ObservedRevision:
    """The revision with its evaluation record (a failed gate is a failure of the revision, like a failed model
    check) and the lineage the evaluation found added to what it had."""
    failure = seen.model_failure
    if record and record.get("verdict") == "Failed":
        failure = f"evaluation gate failed: {record.get('message', '')}"
    return replace(seen, evaluation=record, model_failure=failure, lineage={**(lineage or {}), **seen.lineage})


def plan_service(seen: ServiceObservation) -> Plan:
    """The whole pass: gate, rollout decision, replicas, then children, status and Events."""
    meta, spec, state = seen.meta, seen.spec, seen.state
    gate = plan_gate(meta, spec, {name: (r.version, r.evaluation) for name, r in seen.observed.items()}, state,
                     seen.serving_pods, seen.evaluation_pods, seen.now)
    observed = dict(seen.observed)
    for revision, record in gate.records.items():
        observed[revision] = with_evaluation(observed[revision], record, gate.lineages.get(revision))
    action = seen.action if seen.action in ("promote", "abort") else None
    decision, analysis = _decide_rollout(seen, observed, action)
    total, autoscaling, memory = _scale(seen, observed)
    zero = scales_to_zero(spec)
    serving = [observed[r] for r in (state.stable, state.canary) if r in observed]
    draining = zero and total == 0 and any(r.replicas for r in serving)
    if draining:  # the Service's slice goes to the activator first; the replicas after kube-proxy's lag
        since = _parse((autoscaling or {}).get("lastScaleTime"))
        if since is None or 0 <= (seen.now - since).total_seconds() < DRAIN_SECONDS:
            total = sum(r.replicas for r in serving)
    routed = None
    if zero:
        waiting_rev = next((r for r in serving if r.wait is not None), None)
        version = seen.target.version if seen.target else state.stable_version
        routed = routing(meta, spec.model.name, state.stable_version or version, seen.serving_pods, seen.activators,
                         to_zero=(autoscaling or {}).get("desiredReplicas") == 0,
                         reason=waiting_rev.describe_wait() if waiting_rev else seen.waiting)

    revisions = plan_revisions(PlanInputs(
        meta=meta, spec=spec, desired=seen.desired, target=seen.target, decision=decision, waiting=seen.waiting,
        observed=observed, total=total, previous=seen.previous, now=seen.now, state=state, last_analysis=analysis,
        autoscaling=autoscaling, service_monitor=seen.service_monitor, has_hpa=seen.has_hpa,
        followed_missing=seen.followed_missing, routing=routed,
        recorded_evaluations={r: o.evaluation for r, o in seen.observed.items()}))
    if zero:
        revisions.status["coldStart"] = cold_start(seen, revisions.status.get("readyReplicas", 0))
    final = {r for r, record in gate.records.items() if record["verdict"] in evaluation.FINAL}
    requeue = [RESYNC_SECONDS, *(d for d in (decision.requeue_after if decision else None, gate.due) if d is not None)]
    if spec.autoscaling and spec.autoscaling.provider == "builtin":
        requeue.append(AUTOSCALE_SECONDS)
    if draining:
        requeue.append(DRAIN_SECONDS)
    return Plan(
        apply=revisions.apply + gate.start, create_only=frozenset({"Pod"}),
        patch=[Patch("apps/v1", "Deployment", name, patch) for name, patch in revisions.patch.items()],
        delete=[Delete(api_version, kind, name) for api_version, kind, name in revisions.delete] +
        [Delete("v1", "Pod", name) for name in gate.delete] +
        [Delete("v1", "Pod", name, even_if_refused=True, orphan=True) for name in seen.released_pods] +
        [Delete("discovery.k8s.io/v1", "EndpointSlice", name) for name in seen.slices
         if not (zero and name in (activator_slice_name(meta), targets_name(meta)))],
        status=revisions.status, events=revisions.events, requeue_after=min(requeue),
        own_patch={"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}}
        if action and decision and decision.action_used else None,
        memory=memory,
        recheck=[p["metadata"]["name"] for p in seen.serving_pods
                 if (p["metadata"].get("labels") or {}).get(build.LABEL_REVISION) in final],
        warnings=[seen.state_warning] if seen.state_warning else [])


def _decide_rollout(seen: ServiceObservation, observed: dict[str, ObservedRevision],
                    action: Any) -> tuple[Decision | None, dict[str, Any] | None]:
    """The rollout decision, judged on the sample the observation took when the step was due for analysis."""
    if not (seen.desired and seen.target):
        return None, None
    canary = observed.get(seen.state.canary or "")
    health = CanaryHealth(canary.ready_replicas, canary.replicas, canary.model_failure) if canary else None
    return decide_rollout(seen.state, seen.desired, seen.target.version, seen.spec.rollout, health, seen.analysis,
                          action, seen.now)


def decide_rollout(state: RolloutState, desired: str, version: int, rollout: Rollout, health: CanaryHealth | None,
                   sample: AnalysisSample | None, action: Any, now: datetime
                   ) -> tuple[Decision, dict[str, Any] | None]:
    """canary.decide on the analysis `sample` (taken when the step was due), and the analysis as status shows
    it (None unless the decision judged it). Shared by the dedicated and the pooled planner."""
    verdict: Verdict | None = None
    message, analysis = "", None
    if sample is not None:
        canary_sample, stable = sample.canary, sample.stable
        if sample.unavailable:
            verdict, message = "Inconclusive", sample.unavailable
        else:
            verdict, message = judge(canary_sample, rollout.analysis, stable)
        analysis = {"time": rfc3339(now), "verdict": verdict, "message": message,
                    "errorRate": canary_sample.error_rate, "p99LatencyMs": canary_sample.p99_latency_ms,
                    "requests": canary_sample.requests, "stableErrorRate": stable.error_rate,
                    "stableP99LatencyMs": stable.p99_latency_ms, "stableRequests": stable.requests,
                    "latencyRatio": latency_ratio(canary_sample, stable)}
    decision = decide(state, desired, version, rollout, canary=health, verdict=verdict, verdict_message=message,
                      action=action, now=now)
    if not decision.judged:  # sampled, but the decision did not come to judging it
        analysis = None
    return decision, {k: v for k, v in analysis.items() if v is not None} if analysis else None


def _scale(seen: ServiceObservation, observed: dict[str, ObservedRevision]
           ) -> tuple[int, dict[str, Any] | None, ServiceMemory | None]:
    """(replicas to spread over the serving revisions, status.autoscaling, the autoscaler's new memory)."""
    scaling = seen.spec.autoscaling
    if scaling is None or scaling.provider != "builtin":
        return seen.spec.replicas, None, None
    memory = seen.memory
    zero = scaling.min_replicas == 0
    serving = [observed[r] for r in (seen.state.stable, seen.state.canary) if r in observed]
    if seen.metric is None:  # not due: the last decision stands, but demand brings a ModelService at zero back now
        if not (zero and seen.demand.held and memory.desired == 0 and memory.evaluated_at is not None):
            return memory.desired, memory.status, None
        reason = f"{seen.demand.held} requests held by the activator"
        status = {**(memory.status or {}), "desiredReplicas": 1, "reason": reason, "lastScaleTime": rfc3339(seen.now)}
        return 1, status, replace(memory, desired=1, status=status)
    current = sum(r.replicas for r in serving)
    if not current and not (zero and serving):  # (a new ModelService starts at one replica even at minReplicas
        # 0, as Knative's initial scale, so its model is checked once before it may go to zero)
        current = (seen.previous.get("autoscaling") or {}).get("desiredReplicas") or max(scaling.min_replicas, 1)
    value = seen.metric.value
    unavailable = seen.metric.unavailable or ("" if value is not None else
                                              "metric unavailable: Prometheus has no data for this ModelService yet")
    floored = scaling.model_copy(update={"min_replicas": 1}) if zero else scaling
    decision = decide_scale(max(current, 1) if zero else current, value, floored, memory.scale, seen.now, unavailable)
    desired, reason = decision.desired, decision.reason
    scaled_at = (seen.previous.get("autoscaling") or {}).get("lastScaleTime")
    if zero:
        said = ""
        desired, said = zero_decision(scaling, current, desired, seen.requests.value if seen.requests else None,
                                      seen.demand, seen.activators, scaled_at, seen.now)
        reason = said or reason
    status = {"metric": scaling.metric, "value": value, "target": scaling.target,
              "desiredReplicas": desired, "reason": reason,
              "lastScaleTime": rfc3339(seen.now) if desired != current else scaled_at}
    status = {k: v for k, v in status.items() if v is not None}
    return desired, status, ServiceMemory(decision.memory, seen.now, desired, status)


def cold_start(seen: ServiceObservation, ready: int) -> dict[str, Any]:
    """status.coldStart: what the activators hold, and the last cold start (the operator's measure: from the
    pass that saw demand with nothing ready to the pass that sees a replica ready)."""
    before = _dict(seen.previous.get("coldStart"))
    woken = before.get("wokenAt")
    value: dict[str, Any] = {"lastSeconds": before.get("lastSeconds"), "lastTime": before.get("lastTime")}
    if ready and woken:
        started = _parse(woken)
        if started is not None:
            value |= {"lastSeconds": round(max((seen.now - started).total_seconds(), 0.0), 3),
                      "lastTime": rfc3339(seen.now)}
        woken = None
    elif not ready and seen.demand.held and not woken:
        woken = rfc3339(seen.now)
    value |= {"wokenAt": woken, "held": seen.demand.held or None,
              "heldSince": rfc3339(datetime.fromtimestamp(seen.demand.since, timezone.utc))
              if seen.demand.held and seen.demand.since else None}
    return {k: v for k, v in value.items() if v is not None}


@dataclass
class ServicePlan:
    apply: list[dict[str, Any]] = field(default_factory=list)
    patch: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Merge patches (replicas, rollout annotations) of Deployments not re-rendered: their spec predates
    the current one."""
    delete: list[tuple[str, str, str]] = field(default_factory=list)
    """(apiVersion, kind, name) of children to remove."""
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class PlanInputs:
    meta: build.ServiceMeta
    spec: ModelServiceSpec
    desired: str | None
    """The revision the spec asks for (None while its model version is not known yet)."""
    target: build.Target | None
    decision: Decision | None
    waiting: str
    """Why there is no desired revision, when there is none."""
    observed: dict[str, ObservedRevision]
    total: int
    """Replicas to spread over the serving revisions."""
    previous: dict[str, Any]
    now: datetime
    state: RolloutState = field(default_factory=RolloutState)
    """The rollout as the Deployments record it (used when there is no decision)."""
    last_analysis: dict[str, Any] | None = None
    autoscaling: dict[str, Any] | None = None
    service_monitor: bool = False
    has_hpa: bool = False
    recorded_evaluations: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    """The evaluation records as the Deployments hold them before this pass (to tell what changed)."""
    followed_missing: bool = False
    routing: list[dict[str, Any]] | None = None
    """At minReplicas 0: the Service and the activator's slices (scale_to_zero.routing)."""


def state_from_status(status: dict[str, Any]) -> RolloutState:
    """What the last status recorded (a fallback and a cross-check, never the truth)."""
    stable, canary = _dict(status.get("stable")), _dict(status.get("canary"))
    return RolloutState(
        stable=stable.get("name"), stable_version=stable.get("version"),
        canary=canary.get("name"), canary_version=canary.get("version"), step=_int(canary.get("step", 0)),
        step_started_at=_parse(canary.get("stepStartedAt")), started_at=_parse(canary.get("startedAt")),
        rejected=status.get("rejectedRevision"))


def rollout_state(observed: dict[str, ObservedRevision], previous: dict[str, Any]) -> tuple[RolloutState, str]:
    """The rollout as the revision Deployments record it, and a warning when the status says otherwise.
    Only Deployments that record nothing (made by an operator before roles were recorded) fall back to the
    status, and then only to names that exist."""
    recorded = state_from_status(previous)
    stables = sorted((r for r in observed.values() if r.annotations.get(ANNOTATION_ROLE) == "stable"),
                     key=lambda r: r.created, reverse=True)
    canaries = sorted((r for r in observed.values() if r.annotations.get(ANNOTATION_ROLE) == "canary"),
                      key=lambda r: r.created, reverse=True)
    if not stables and not canaries:
        stable = recorded.stable if recorded.stable in observed else None
        canary = recorded.canary if recorded.canary in observed and stable else None
        state = RolloutState(stable=stable, stable_version=observed[stable].version if stable else None,
                             canary=canary, canary_version=observed[canary].version if canary else None,
                             step=recorded.step if canary else 0,
                             step_started_at=recorded.step_started_at if canary else None,
                             started_at=recorded.started_at if canary else None, rejected=recorded.rejected)
    else:
        stable_rev = stables[0] if stables else None
        canary_rev = canaries[0] if canaries and stable_rev else None
        state = RolloutState(
            stable=stable_rev.name if stable_rev else None, stable_version=stable_rev.version if stable_rev else None,
            canary=canary_rev.name if canary_rev else None,
            canary_version=canary_rev.version if canary_rev else None,
            step=_int(canary_rev.annotations.get(ANNOTATION_STEP)) if canary_rev else 0,
            step_started_at=_parse(canary_rev.annotations.get(ANNOTATION_STEP_STARTED)) if canary_rev else None,
            started_at=_parse(canary_rev.annotations.get(ANNOTATION_STARTED)) if canary_rev else None,
            rejected=(stable_rev.annotations.get(ANNOTATION_REJECTED) if stable_rev else None) or recorded.rejected)
    claimed = (recorded.stable, recorded.canary)
    warning = "" if claimed == (state.stable, state.canary) or not any(claimed) else \
        f"status names stable {claimed[0]} and canary {claimed[1]}, the Deployments record " \
        f"{state.stable} and {state.canary}: following the Deployments"
    return state, warning


def role_annotations(state: RolloutState, revision: str) -> dict[str, str | None]:
    """What the revision's Deployment records about its part in the rollout (None: remove the key)."""
    canary = revision == state.canary
    role = "stable" if revision == state.stable else "canary" if canary else "retired"
    return {ANNOTATION_ROLE: role,
            ANNOTATION_STEP: str(state.step) if canary else None,
            ANNOTATION_STEP_STARTED: _stamp(state.step_started_at) if canary else None,
            ANNOTATION_STARTED: _stamp(state.started_at) if canary else None,
            ANNOTATION_REJECTED: state.rejected if role == "stable" else None}


def gate_annotations(inputs: PlanInputs, revision: str) -> dict[str, str | None]:
    """The evaluation record and lineage a revision's Deployment carries. A revision created while the gate
    is on starts Pending; one that predates the gate is never gated."""
    seen = inputs.observed.get(revision)
    if seen is not None:
        record, lineage = seen.evaluation, seen.lineage
    else:
        record = {"verdict": "Pending"} if inputs.spec.rollout.gates.evaluation.enabled else None
        lineage = (inputs.target.lineage if inputs.target and revision == inputs.desired else None) or {}
    return {evaluation.ANNOTATION_EVALUATION: evaluation.encode(record) if record else None,
            evaluation.ANNOTATION_LINEAGE: evaluation.encode(lineage) if lineage else None}


def _revision_patch(observed: ObservedRevision, replicas: int | None, annotations: dict[str, str | None],
                    labels: dict[str, str]) -> dict[str, Any]:
    """The merge patch of a revision this pass does not apply: its rollout role, its replicas, and our
    labels a hand edit changed."""
    patch: dict[str, Any] = {}
    changed = {k: v for k, v in annotations.items() if observed.annotations.get(k) != v}
    relabel = {k: v for k, v in labels.items() if observed.labels.get(k) != v} if observed.labels is not None else {}
    if changed or relabel:
        patch["metadata"] = {k: v for k, v in (("annotations", changed), ("labels", relabel)) if v}
    if replicas is not None and observed.replicas != replicas:
        patch["spec"] = {"replicas": replicas}
    return patch


def _labels(inputs: PlanInputs, revision: str) -> dict[str, str]:
    seen = inputs.observed[revision]
    return {**build.revision_labels(inputs.meta, revision, seen.version), MANAGED_BY_LABEL: MANAGED_BY}


def plan_revisions(inputs: PlanInputs) -> ServicePlan:
    """The revisions' children (Deployments, ConfigMaps), the Service and extras, status and Events."""
    meta, spec = inputs.meta, inputs.spec
    plan = ServicePlan()
    state = inputs.decision.state if inputs.decision else inputs.state
    weight = inputs.decision.weight if inputs.decision and state.canary else 0
    stable_replicas, canary_replicas = build.split_replicas(inputs.total, weight)
    if state.stable and not state.canary:
        stable_replicas = inputs.total
    elif state.canary:  # surge: stable gives up a replica only for a canary replica that serves
        seen = inputs.observed.get(state.canary)
        stable_replicas = max(stable_replicas, inputs.total - min(seen.ready_replicas if seen else 0, canary_replicas))

    plan.apply += inputs.routing if inputs.routing is not None else [build.service(meta)]
    if inputs.service_monitor:
        plan.apply.append(build.service_monitor(meta))
    scaling = spec.autoscaling
    if scaling and scaling.provider == "hpa":
        plan.apply.append(build.horizontal_pod_autoscaler(meta, spec))
    elif inputs.has_hpa:
        plan.delete.append(("autoscaling/v2", "HorizontalPodAutoscaler", build.service_name(meta)))

    wanted = {state.stable: stable_replicas}
    if state.canary:
        wanted[state.canary] = canary_replicas
    for revision, replicas in wanted.items():
        if revision is None:
            continue
        roles = role_annotations(state, revision) | gate_annotations(inputs, revision)
        if revision == inputs.desired and inputs.target and inputs.target.signature is not None:
            recorded = {k: v for k, v in roles.items() if v is not None}
            plan.apply += [build.config_map(meta, spec, revision, inputs.target),
                           build.deployment(meta, spec, revision, inputs.target, replicas, recorded)]
        elif revision in inputs.observed:
            patch = _revision_patch(inputs.observed[revision], replicas, roles, _labels(inputs, revision))
            if patch:
                plan.patch[revision] = patch

    stable_obs = inputs.observed.get(state.stable or "")
    stable_ready = stable_obs.ready_replicas if stable_obs else 0
    for name in inputs.observed:
        if name in wanted:
            continue
        # A rolled-back canary goes at once; an old stable only once the new one serves in full.
        if name == state.rejected or stable_ready >= max(stable_replicas, 1):
            plan.delete += [("apps/v1", "Deployment", name), ("v1", "ConfigMap", name)]
        else:  # kept serving for now, but no longer part of the rollout
            patch = _revision_patch(inputs.observed[name], None, role_annotations(state, name), _labels(inputs, name))
            if patch:
                plan.patch[name] = patch

    plan.status = _status(inputs, state, weight, stable_replicas, canary_replicas)
    plan.events = _events(inputs, plan.status)
    return plan


def _status(inputs: PlanInputs, state: RolloutState, weight: int, stable_replicas: int,
            canary_replicas: int) -> dict[str, Any]:
    meta, spec, decision = inputs.meta, inputs.spec, inputs.decision

    def revision(name: str | None, version: int | None, replicas: int) -> dict[str, Any] | None:
        if not name or version is None:
            return None
        seen = inputs.observed.get(name)
        record = seen.evaluation if seen else gate_record(inputs, name)
        lineage = (seen.lineage if seen else None) or \
            ((inputs.target.lineage if inputs.target and name == inputs.desired else None) or {})
        measured = (record or {}).get("accuracy")
        return {"name": name, "version": version, "replicas": replicas,
                "readyReplicas": seen.ready_replicas if seen else 0,
                "accuracy": measured if measured is not None else lineage.get("testAccuracy"),
                "evaluation": evaluation_status(record), "lineage": lineage or None}

    stable = revision(state.stable, state.stable_version, stable_replicas)
    canary = revision(state.canary, state.canary_version, canary_replicas)
    if canary:
        canary |= {"step": state.step, "weight": weight, "stepStartedAt": _stamp(state.step_started_at),
                   "startedAt": _stamp(state.started_at)}
    stable = {k: v for k, v in stable.items() if v is not None} if stable else None
    if canary:
        canary = {k: v for k, v in canary.items() if v is not None}
    ready = (stable or {}).get("readyReplicas", 0) + (canary or {}).get("readyReplicas", 0)
    desired = stable_replicas + canary_replicas
    outcome = decision.outcome if decision else None
    message = decision.message if decision else inputs.waiting
    rejected_now = outcome == "Rejected" or (outcome == "RolledBack")
    # Later passes only say "rejected": keep the reason the rollback happened for.
    earlier = next((c for c in inputs.previous.get("conditions", []) if c.get("type") == "RolledBack"
                    and c.get("status") == "True"), None)
    rollback_message = earlier["message"] if outcome == "Rejected" and earlier else message
    stable_failure = (inputs.observed.get(state.stable or "") or ObservedRevision("", 0, 0, 0)).model_failure
    waiting = _waiting_revision(inputs, state)

    if stable is None:
        phase = "Pending"
    elif rejected_now:
        phase = "Degraded"
    elif canary or ready < desired or outcome in ("Initial", "Started", "Stepped", "Promoted"):
        phase = "Progressing" if ready else "Pending"
    else:
        phase = "Ready"
    serving = ready > 0
    ready_reason = "Serving" if serving else ("ModelCheckFailed" if stable_failure else
                                              waiting.wait.reason if waiting and waiting.wait else "NoReadyReplicas")
    ready_message = (f"{ready}/{desired} replicas serving version {state.stable_version}" if serving
                     else stable_failure or message or "no replica serves a verified model yet")
    if waiting and not stable_failure:  # the scheduler's or kubelet's words, where a user looks first
        ready_message = limited(f"{ready_message}; {waiting.describe_wait()}" if serving or message
                                else waiting.describe_wait())
    if not serving and not desired and phase == "Ready" and inputs.routing is not None and not stable_failure:
        # at zero by design (minReplicas 0): healthy, and the activator answers for it
        serving, ready_reason = True, "ScaledToZero"
        ready_message = (f"0 replicas: no request for {spec.autoscaling.scale_to_zero_after_seconds}s; the "  # type: ignore[union-attr]
                         f"activator holds the next requests and brings version {state.stable_version} back")
    conditions = [
        Cond("Ready", serving, ready_reason, ready_message),
        Cond("Progressing", bool(canary), outcome or "Waiting", message if canary else ""),
        # kstatus (Flux) reads whichever of Reconciling and Stalled is True first: never both.
        Cond("Reconciling", phase in ("Pending", "Progressing") and not (rejected_now or stable_failure),
             outcome or "Waiting", message),
        Cond("Stalled", rejected_now or bool(stable_failure), "RolledBack" if rejected_now else
             ("ModelCheckFailed" if stable_failure else ""), message if rejected_now else (stable_failure or "")),
        Cond("RolledBack", rejected_now, "RolledBack" if rejected_now else "", rollback_message if rejected_now else ""),
    ]
    gated = state.canary or state.stable
    record = (inputs.observed[gated].evaluation if gated in inputs.observed else gate_record(inputs, gated)) \
        if gated else None
    verdict = (record or {}).get("verdict")
    conditions.append(Cond("EvaluationGate", verdict in (None, "Passed", "Skipped"), verdict or "NotGated",
                           (record or {}).get("message", "") or ("waiting for a pod with a verified model to "
                                                                 "evaluate" if verdict == "Pending" else
                                                                 "this revision predates the gate or has none")))
    source = _source_condition(inputs, state)
    if source:
        conditions.append(source)
    if inputs.autoscaling is not None:
        able = not inputs.autoscaling.get("reason", "").startswith("metric unavailable") and \
            inputs.autoscaling.get("value") is not None
        conditions.append(Cond("ScalingActive", able, "ValidMetric" if able else "MetricUnavailable",
                               inputs.autoscaling.get("reason", "")))
    stamp = _stamp(inputs.now)
    status: dict[str, Any] = {
        "observedGeneration": meta.generation, "phase": phase,
        "conditions": merge_conditions(inputs.previous.get("conditions", []), conditions, now=stamp or "",
                                       generation=meta.generation),
        "modelVersion": state.stable_version, "replicas": desired, "readyReplicas": ready,
        "ready": f"{ready}/{desired}", "selector": f"{build.LABEL_SERVICE}={meta.label}",
        "stable": stable, "canary": canary,
        "canarySummary": f"v{state.canary_version} {weight}% (step {state.step + 1}/{len(spec.rollout.steps)})"
        if canary else None,
        "lastAnalysis": inputs.last_analysis or inputs.previous.get("lastAnalysis"),
        "lastEvaluation": _last_evaluation(inputs) or inputs.previous.get("lastEvaluation"),
        "rejectedRevision": state.rejected, "autoscaling": inputs.autoscaling,
        "url": f"http://{build.service_name(meta)}.{meta.namespace}.svc:{build.HTTP_PORT}",
    }
    return {k: v for k, v in status.items() if v is not None}


def _source_condition(inputs: PlanInputs, state: RolloutState) -> Cond | None:
    """SourceAvailable, for a ModelService following a TrainingJob: False while that job does not exist (what
    it served keeps serving, but no new version can come), True while it is followed."""
    followed = inputs.spec.model.from_training_job
    if not followed:
        return None
    if inputs.followed_missing:
        kept = f"; still serving version {state.stable_version}" if state.stable_version else ""
        return Cond("SourceAvailable", False, "TrainingJobNotFound",
                    f"TrainingJob {followed} not found{kept}: no new version can roll out until it exists again")
    return Cond("SourceAvailable", True, "Following", inputs.waiting or f"following TrainingJob {followed}")


def _waiting_revision(inputs: PlanInputs, state: RolloutState) -> ObservedRevision | None:
    """The serving revision (stable first, then the canary) whose pods are stuck, if any."""
    return next((seen for name in (state.stable, state.canary) if name
                 and (seen := inputs.observed.get(name)) is not None and seen.wait is not None), None)


def decision_events(decision: Decision | None, previous: dict[str, Any]) -> list[Event]:
    """The Event a rollout decision is worth (shared by the dedicated and the pooled planner)."""
    kinds = {"Initial": ("Normal", "Deploying"), "Started": ("Normal", "CanaryStarted"),
             "Stepped": ("Normal", "CanaryStepped"), "Promoted": ("Normal", "Promoted"),
             "RolledBack": ("Warning", "RolledBack")}
    progressing: dict[str, Any] = next(
        (c for c in previous.get("conditions", []) if c.get("type") == "Progressing"), {})
    # "Initial" repeats until the first revision exists (e.g. while its name is refused): say it once
    repeated = decision is not None and decision.outcome == "Initial" and progressing.get("reason") == "Initial"
    if decision and decision.outcome in kinds and not repeated:
        kind, reason = kinds[decision.outcome]
        return [Event(kind, reason, decision.message)]  # type: ignore[arg-type]
    return []


def _events(inputs: PlanInputs, status: dict[str, Any]) -> list[Event]:
    events = decision_events(inputs.decision, inputs.previous)
    old, new = inputs.previous.get("conditions", []), status["conditions"]
    if became_true(old, new, "Ready"):
        events.append(Event("Normal", "Serving", next(c["message"] for c in new if c["type"] == "Ready")))
    source = next((c for c in new if c["type"] == "SourceAvailable"), None)
    was: dict[str, Any] = next((c for c in old if c.get("type") == "SourceAvailable"), {})
    if source and source["status"] == "False" and was.get("status") != "False":
        events.append(Event("Warning", source["reason"], source["message"]))
    elif source and was.get("status") == "False" and source["status"] == "True":
        events.append(Event("Normal", "SourceFound", f"following TrainingJob {inputs.spec.model.from_training_job} "
                                                     "again"))
    waiting = _waiting_revision(inputs, inputs.decision.state if inputs.decision else inputs.state)
    if waiting:
        ready_old: dict[str, Any] = next((c for c in old if c.get("type") == "Ready"), {})
        ready = next(c for c in new if c["type"] == "Ready")
        # the same rule as a TrainingJob's workers: one Warning per change of what is said
        events += wait_event(ready_old, ready, waiting.wait)
    for revision, before_record in inputs.recorded_evaluations.items():
        after_record = (inputs.observed.get(revision) or ObservedRevision("", 0, 0, 0)).evaluation or {}
        verdict = after_record.get("verdict")
        if verdict in evaluation.FINAL and verdict != (before_record or {}).get("verdict"):
            events.append(Event("Warning" if verdict == "Failed" else "Normal", f"Evaluation{verdict}",
                                f"revision {revision}: {after_record.get('message', '')}"))
    before = (inputs.previous.get("autoscaling") or {}).get("desiredReplicas")
    after = (inputs.autoscaling or {}).get("desiredReplicas")
    if inputs.autoscaling and before is not None and after is not None and before != after:
        events.append(Event("Normal", "Scaled", f"{before} -> {after} replicas: {inputs.autoscaling['reason']}"))
    return events


def gate_record(inputs: PlanInputs, revision: str) -> dict[str, Any] | None:
    return evaluation.read({k: v for k, v in gate_annotations(inputs, revision).items() if v is not None})


def _last_evaluation(inputs: PlanInputs) -> dict[str, Any] | None:
    """The verdict reached in this pass, if any."""
    for revision, before in inputs.recorded_evaluations.items():
        seen = inputs.observed.get(revision)
        after = seen.evaluation if seen else None
        if after and after.get("verdict") in evaluation.FINAL and after.get("verdict") != (before or {}).get("verdict"):
            return {"revision": revision, "version": seen.version, **(evaluation_status(after) or {})}  # type: ignore[union-attr]
    return None


def evaluation_status(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record as status shows it (what the API's EvaluationStatus knows)."""
    if not record:
        return None
    keys = ("verdict", "metric", "accuracy", "stableAccuracy", "stableRevision", "samples", "sha256", "sets",
            "attempts")
    # message always set: the schema defaults it to "", and a status that differs from what the API server
    # stores would be written again on every pass
    return {k: record[k] for k in keys if record.get(k) is not None} | {"message": str(record.get("message") or "")}


def _stamp(moment: datetime | None) -> str | None:
    return rfc3339(moment) if moment else None


def _parse(stamp: Any) -> datetime | None:
    try:
        return parse_rfc3339(stamp) if isinstance(stamp, str) and stamp else None
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0
