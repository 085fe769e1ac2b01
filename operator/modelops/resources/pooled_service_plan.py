"""Pure planning for a pooled ModelService's pass (spec.pool): no Deployment of its own, its copies live on
the pool's servers (placed by the pool's planner, resources/pool_plan.py). This pass writes what routes to
them: a selector-less Service and one EndpointSlice listing pool servers where a version it serves is loaded
AND Triton reports it ready (read from the pool's status, which each pool pass rebuilds from the servers'
reports), so kube-proxy routes /v2/models/<model>/infer with no proxy of ours.

A new version rolls out as on pods of its own, through the same code: canary.decide (via
modelservice_plan.decide_rollout) with the analysis judged on Triton's per-model metrics of each version, and
the evaluation gate (evaluation_plan.plan_gate) scoring a pool server that holds the candidate. What differs
is how a step's weight is realised: kube-proxy spreads connections evenly over a Service's endpoints, so the
weight is a share of the EndpointSlice's endpoints (endpoints_for). The canary's copies are what the pool
places for it: at least the endpoints its weight asks (status.canary.replicas, which the pool reads).

The rollout state and the evaluation records live on the EndpointSlice (ANNOTATION_ROLLOUT), as a dedicated
ModelService's live on its revision Deployments: rebuilt from the world, not from a status anyone can write."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modelops.api.modelservice import ModelServiceSpec
from modelops.clock import parse_rfc3339, rfc3339
from modelops.resources import modelservice as build
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.resources.evaluation_plan import plan_gate
from modelops.resources.modelservice_plan import (AnalysisSample, decide_rollout, decision_events,
                                                  evaluation_status, state_from_status)
from modelops.resources.plan import Delete, Plan
from modelops.resources.scale_to_zero import targets_name, targets_slice
from modelops.rollout import evaluation
from modelops.rollout.canary import ANNOTATION as ROLLOUT_ANNOTATION, CanaryHealth, Decision, RolloutState

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICE_MANAGER_LABEL = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "modelops.dev"
ANNOTATION_ROLLOUT = "modelops.dev/pooled-rollout"
"""On the EndpointSlice (JSON): the rollout state, and the evaluation record and lineage of each revision."""
RESYNC_SECONDS = 30.0
PORTS = (("http", build.HTTP_PORT), ("grpc", build.GRPC_PORT), ("metrics", build.METRICS_PORT))
Records = dict[str, dict[str, Any] | None]


@dataclass(frozen=True)
class PooledObservation:
    meta: build.ServiceMeta
    spec: ModelServiceSpec
    previous: dict[str, Any]
    now: datetime
    target: build.Target | None
    waiting: str
    pool: dict[str, Any] | None
    """The ModelPool object (None: not found)."""
    servers: list[dict[str, Any]]
    """The pool's server pods."""
    owned: list[tuple[str, str, str]]
    """(apiVersion, kind, name) of children left from serving on pods of its own (Deployments, ConfigMaps, an
    HPA): a pooled ModelService has none (they go once the pool serves a ready copy)."""
    recorded: dict[str, Any] = field(default_factory=dict)
    activators: tuple[str, ...] = ()
    """At minReplicas 0: the activator pods' addresses (the Service goes to them while no copy is ready)."""
    held: int = 0
    """Requests the activators hold for it now."""
    """The EndpointSlice's ANNOTATION_ROLLOUT, decoded ({}: none yet)."""
    action: str | None = None
    """A person's modelops.dev/rollout annotation ("promote" or "abort")."""
    analysis: AnalysisSample | None = None
    """Both versions' metrics, sampled only when the canary's step is due for analysis."""
    evaluation_pods: list[dict[str, Any]] = field(default_factory=list)


def min_copies(spec: ModelServiceSpec) -> int:
    return spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas


def revision_name(meta: build.ServiceMeta, version: int) -> str:
    return f"{meta.label}-v{version}"


def where_ready(pool: dict[str, Any] | None, model: str, version: int | None) -> list[str]:
    """The pool servers whose report says this version is loaded and ready (pool status), less the copies the
    pool is about to unload (leaving: they go out of the endpoints first)."""
    servers = ((pool or {}).get("status") or {}).get("servers") or []
    return sorted(s["name"] for s in servers if version is not None and any(
        m.get("name") == model and m.get("version") == version and m.get("ready") and not m.get("leaving")
        for m in s.get("models") or []))


def endpoints_for(stable: list[str], canary: list[str], weight: int) -> tuple[list[str], list[str], int]:
    """(stable servers listed, canary servers listed, canary copies wanted) for a step at `weight`%.

    The Service keeps as many endpoints as stable has ready copies (n, at least 1) and the weight takes its
    share of them with the dedicated path's split (split_replicas: at least one of each while both serve;
    weight 20 over 5 -> 4 + 1). Stable gives up an endpoint only for a canary copy that is ready, as a stable
    Deployment gives up a replica only for a canary pod that serves; so while the canary's copies load, its
    share is below the weight, and the step waits (canary.decide) until they are all ready."""
    if weight <= 0:
        return stable, [], 0
    total = max(len(stable), 1)
    keep, wanted = build.split_replicas(total, weight)
    listed = canary[:wanted]
    return stable[:max(keep, total - len(listed))], listed, wanted


def recorded_rollout(recorded: dict[str, Any], previous: dict[str, Any]) -> tuple[RolloutState, Records, Records]:
    """(the rollout, the evaluation records, the lineages) as the EndpointSlice records them; before it
    records any (a ModelService pooled before rollouts were), the rollout as the status says, ungated."""
    if not recorded:
        return state_from_status(previous), {}, {}
    state = RolloutState(
        stable=_str(recorded.get("stable")), stable_version=_int(recorded.get("stableVersion")),
        canary=_str(recorded.get("canary")), canary_version=_int(recorded.get("canaryVersion")),
        step=_int(recorded.get("step")) or 0, step_started_at=_time(recorded.get("stepStartedAt")),
        started_at=_time(recorded.get("startedAt")), rejected=_str(recorded.get("rejected")))
    return state, dict(_dict(recorded.get("evaluations"))), dict(_dict(recorded.get("lineages")))


def encode_rollout(state: RolloutState, records: Records, lineages: Records) -> str:
    kept = {r for r in (state.stable, state.canary) if r}
    value = {"stable": state.stable, "stableVersion": state.stable_version, "canary": state.canary,
             "canaryVersion": state.canary_version, "step": state.step,
             "stepStartedAt": rfc3339(state.step_started_at) if state.step_started_at else None,
             "startedAt": rfc3339(state.started_at) if state.started_at else None, "rejected": state.rejected,
             "evaluations": {r: v for r, v in records.items() if r in kept and v},
             "lineages": {r: v for r, v in lineages.items() if r in kept and v}}
    return json.dumps({k: v for k, v in value.items() if v not in (None, {})}, sort_keys=True, separators=(",", ":"))


def decode_rollout(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def service(meta: build.ServiceMeta) -> dict[str, Any]:
    """Selector-less: its endpoints are the EndpointSlice this pass writes."""
    ports = [{"name": name, "port": port, "targetPort": port, "protocol": "TCP"} for name, port in PORTS]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta.child_metadata(build.service_name(meta), meta.selector),
            "spec": {"ports": ports}}


def endpoint_slice(meta: build.ServiceMeta, pods: list[dict[str, Any]], rollout: str = "") -> dict[str, Any]:
    name = build.service_name(meta)
    endpoints = [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                  "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": meta.namespace}}
                 for p in sorted(pods, key=lambda p: p["metadata"]["name"])]
    metadata = meta.child_metadata(name, {**meta.selector, SERVICE_NAME_LABEL: name,
                                          SLICE_MANAGER_LABEL: SLICE_MANAGER})
    if rollout:
        metadata["annotations"] = {**(metadata.get("annotations") or {}), ANNOTATION_ROLLOUT: rollout}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": metadata,
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": n, "port": port, "protocol": "TCP"} for n, port in PORTS]}


def plan_pooled_service(obs: PooledObservation) -> Plan:
    meta, spec, previous, now = obs.meta, obs.spec, obs.previous, obs.now
    model = spec.model.name
    state, records, lineages = recorded_rollout(obs.recorded, previous)
    desired = revision_name(meta, obs.target.version) if obs.target else None
    versions = {r: v for r, v in ((state.stable, state.stable_version), (state.canary, state.canary_version))
                if r and v is not None}
    if obs.target and desired and desired not in versions and desired != state.rejected:
        # a new revision: gated from the start when the gate is on (one that predates the gate never is)
        records[desired] = {"verdict": "Pending"} if spec.rollout.gates.evaluation.enabled else None
        versions[desired] = obs.target.version
    if obs.target and desired and not lineages.get(desired):
        lineages[desired] = obs.target.lineage or None
    running = {p["metadata"]["name"]: p for p in obs.servers
               if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")}

    def ready(revision: str | None) -> list[str]:
        """Servers where the revision's copies serve: ready, and not held out by its evaluation gate."""
        if not revision or (records.get(revision) or {}).get("verdict") not in (None, "Passed", "Skipped"):
            return []
        return [s for s in where_ready(obs.pool, model, versions.get(revision)) if s in running]

    def address(revision: str, reason: str | None) -> str | None:
        """A pool server holding the revision's copy, ready (held out of the Service or not): what the gate scores."""
        servers = [s for s in where_ready(obs.pool, model, versions.get(revision)) if s in running]
        return f"{running[servers[0]]['status']['podIP']}:{build.HTTP_PORT}" if servers else None

    gate = plan_gate(meta, spec, {r: (v, records.get(r)) for r, v in versions.items()}, state, [],
                     obs.evaluation_pods, now, address)
    before = dict(records)
    records.update(gate.records)
    for revision, found in gate.lineages.items():
        lineages[revision] = {**found, **(lineages.get(revision) or {})}

    unplaced = [u for u in ((obs.pool or {}).get("status") or {}).get("unplaced") or []
                if u.get("modelService") == meta.name]
    action = obs.action if obs.action in ("promote", "abort") else None
    decision: Decision | None = None
    analysis = None
    if obs.target and desired:
        health = None
        if state.canary:
            steps = spec.rollout.steps
            _, _, wanted = endpoints_for(ready(state.stable), [], steps[min(state.step, len(steps) - 1)].weight)
            health = CanaryHealth(len(ready(state.canary)), wanted, _failure(records.get(state.canary), unplaced,
                                                                             state.canary_version))
        decision, analysis = decide_rollout(state, desired, obs.target.version, spec.rollout, health, obs.analysis,
                                            action, now)
        state = decision.state
    weight = decision.weight if decision and state.canary else 0
    stable_ready, canary_ready = ready(state.stable), ready(state.canary)
    stable_listed, canary_listed, canary_wanted = endpoints_for(stable_ready, canary_ready, weight)
    listed = stable_listed + canary_listed
    pods = [running[s] for s in listed]

    # verdicts the gate reached in this pass (announced once, shown as lastEvaluation)
    reached: Records = {r: record for r, record in gate.records.items() if record.get("verdict") in evaluation.FINAL
                        and record.get("verdict") != (before.get(r) or {}).get("verdict")}
    status = _status(obs, state, records, lineages, decision, analysis, weight, stable_ready, canary_ready,
                     canary_wanted, listed, unplaced, reached, versions)
    events = decision_events(decision, previous)
    if became_true(previous.get("conditions", []), status["conditions"], "Ready"):
        events.append(Event("Normal", "Serving", next(c["message"] for c in status["conditions"]
                                                      if c["type"] == "Ready")))
    for revision, record in reached.items():
        verdict = (record or {}).get("verdict")
        events.append(Event("Warning" if verdict == "Failed" else "Normal", f"Evaluation{verdict}",
                            f"revision {revision}: {(record or {}).get('message', '')}"))
    # Moving from pods of its own into a pool: they serve until the pool has a ready copy.
    handed_over = bool(pods) or min_copies(spec) == 0
    requeue = [RESYNC_SECONDS, *(d for d in (decision.requeue_after if decision else None, gate.due) if d is not None)]
    routed = endpoint_slice(meta, pods, encode_rollout(state, records, lineages))
    extra: list[dict[str, Any]] = []
    if min_copies(spec) == 0 and obs.activators:
        # scale to zero: with no ready copy the Service goes to the activator, told which servers to ask
        if not pods:
            routed["endpoints"] = [{"addresses": [a], "conditions": {"ready": True}} for a in sorted(obs.activators)]
            routed["ports"] = [p for p in routed["ports"] if p["name"] != "metrics"]
        reason = next((str(u.get("message", "")) for u in unplaced), "")
        extra = [targets_slice(meta, model, state.stable_version or (obs.target.version if obs.target else 0),
                               list(running.values()), reason)]
        if obs.held:
            status["coldStart"] = {"held": obs.held}
    return Plan(apply=[service(meta), routed, *extra, *gate.start],
                create_only=frozenset({"Pod"}),
                delete=([Delete(api_version, kind, name) for api_version, kind, name in obs.owned] if handed_over
                        else []) + [Delete("v1", "Pod", name) for name in gate.delete],
                status=status, events=events, requeue_after=min(requeue),
                own_patch={"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}}
                if action and decision and decision.action_used else None)


def _failure(record: dict[str, Any] | None, unplaced: list[dict[str, Any]], version: int | None) -> str | None:
    """Why the canary can never serve: its evaluation failed, or Triton refused to load it."""
    if (record or {}).get("verdict") == "Failed":
        return f"evaluation gate failed: {(record or {}).get('message', '')}"
    refused = next((u for u in unplaced if u.get("version") == version and u.get("reason") == "LoadFailed"), None)
    return f"the pool could not load it: {refused.get('message', '')}" if refused else None


def _status(obs: PooledObservation, state: RolloutState, records: Records, lineages: Records,
            decision: Decision | None, analysis: dict[str, Any] | None, weight: int, stable_ready: list[str],
            canary_ready: list[str], canary_wanted: int, listed: list[str], unplaced: list[dict[str, Any]],
            reached: Records, versions: dict[str, int]) -> dict[str, Any]:
    meta, spec = obs.meta, obs.spec
    model = spec.model.name

    def revision(name: str | None, version: int | None, replicas: int, ready: int) -> dict[str, Any] | None:
        if not name or version is None:
            return None
        record, lineage = records.get(name), lineages.get(name) or {}
        measured = (record or {}).get("accuracy")
        value = {"name": name, "version": version, "replicas": replicas, "readyReplicas": ready,
                 "accuracy": measured if measured is not None else lineage.get("testAccuracy"),
                 "evaluation": evaluation_status(record), "lineage": lineage or None}
        return {k: v for k, v in value.items() if v is not None}

    stable = revision(state.stable, state.stable_version, len(stable_ready),
                      len([s for s in listed if s in stable_ready]))
    canary = revision(state.canary, state.canary_version, canary_wanted, len(canary_ready))
    if canary:
        canary |= {k: v for k, v in {"step": state.step, "weight": weight,
                                     "stepStartedAt": rfc3339(state.step_started_at) if state.step_started_at else None,
                                     "startedAt": rfc3339(state.started_at) if state.started_at else None}.items()
                   if v is not None}
    outcome = decision.outcome if decision else None
    message = decision.message if decision else obs.waiting
    rejected_now = outcome in ("RolledBack", "Rejected")
    stable_unplaced = next((u for u in unplaced if u.get("version") in (None, state.stable_version)), None)
    stable_record = records.get(state.stable or "") or {}
    if obs.pool is None:
        why = Cond("Ready", False, "PoolNotFound", f"ModelPool {spec.pool} not found in {meta.namespace}")
    elif listed:
        canary_note = f" (canary v{state.canary_version} on {len(canary_ready)})" if canary_ready else ""
        why = Cond("Ready", True, "Serving",
                   f"{len(listed)} ready copies of {model}:{state.stable_version} in pool {spec.pool}{canary_note}")
    elif stable_unplaced:
        why = Cond("Ready", False, str(stable_unplaced.get("reason")), str(stable_unplaced.get("message", "")))
    elif state.stable is None:
        why = Cond("Ready", False, "Waiting", obs.waiting or "waiting for a model version to serve")
    elif stable_record.get("verdict") == "Failed":
        why = Cond("Ready", False, "EvaluationFailed", f"evaluation gate failed: {stable_record.get('message', '')}")
    elif stable_record.get("verdict") == "Pending" and where_ready(obs.pool, model, state.stable_version):
        why = Cond("Ready", False, "EvaluationPending", f"{model}:{state.stable_version} waits for its evaluation gate")
    elif min_copies(spec) > 0:
        why = Cond("Ready", False, "Placing", f"waiting for a ready copy of {model}:{state.stable_version} "
                                              f"in pool {spec.pool}")
    else:
        why = Cond("Ready", True, "Serving", f"no copy of {model} asked for (0 replicas) in pool {spec.pool}")
    stalled = not why.status and (obs.pool is None or stable_unplaced is not None or why.reason == "EvaluationFailed")
    stalled_reason = why.reason if stalled else "RolledBack" if rejected_now else ""
    phase = ("Degraded" if stalled or rejected_now else "Progressing" if canary or not why.status and listed
             else "Ready" if why.status else "Pending")
    gated = state.canary or state.stable
    record = records.get(gated) if gated else None
    verdict = (record or {}).get("verdict")
    earlier = next((c for c in obs.previous.get("conditions", []) if c.get("type") == "RolledBack"
                    and c.get("status") == "True"), None)
    rollback_message = earlier["message"] if outcome == "Rejected" and earlier else message
    canary_unplaced = next((u for u in unplaced if state.canary and u.get("version") == state.canary_version), None)
    conds = [why,
             Cond("Progressing", bool(canary), outcome or "Waiting",
                  (message + (f"; canary unplaced: {canary_unplaced.get('message', '')}" if canary_unplaced else ""))
                  if canary else ""),
             Cond("Reconciling", phase in ("Pending", "Progressing"), outcome or why.reason,
                  message if canary else "" if why.status else why.message),
             Cond("Stalled", stalled or rejected_now, stalled_reason,
                  why.message if stalled else message if rejected_now else ""),
             Cond("RolledBack", rejected_now, "RolledBack" if rejected_now else "",
                  rollback_message if rejected_now else ""),
             Cond("EvaluationGate", verdict in (None, "Passed", "Skipped"), verdict or "NotGated",
                  (record or {}).get("message", "") or ("waiting for a pool server holding the candidate to "
                                                        "evaluate" if verdict == "Pending" else
                                                        "this revision predates the gate or has none"))]
    conditions = merge_conditions(obs.previous.get("conditions", []), conds, now=rfc3339(obs.now),
                                  generation=meta.generation)
    status: dict[str, Any] = {
        "observedGeneration": meta.generation, "phase": phase, "conditions": conditions,
        "modelVersion": state.stable_version,
        "replicas": len(stable_ready) + len(canary_ready), "readyReplicas": len(listed),
        "ready": f"{len(listed)}/{min_copies(spec)}",
        "selector": ",".join(f"{k}={v}" for k, v in meta.selector.items()),
        "url": f"http://{build.service_name(meta)}.{meta.namespace}.svc:{build.HTTP_PORT}",
        "stable": stable, "canary": canary,
        "canarySummary": f"v{state.canary_version} {weight}% (step {state.step + 1}/{len(spec.rollout.steps)}, "
                         f"{len(canary_ready)}/{canary_wanted} copies)" if canary else None,
        "lastAnalysis": analysis or obs.previous.get("lastAnalysis"),
        "rejectedRevision": state.rejected,
        "lastEvaluation": _last_evaluation(reached, versions) or obs.previous.get("lastEvaluation"),
        "pool": {"name": spec.pool, "copies": len(stable_ready), "servers": listed,
                 **({"canaryServers": canary_ready} if state.canary else {})},
    }
    return {k: v for k, v in status.items() if v is not None}


def _last_evaluation(reached: Records, versions: dict[str, int]) -> dict[str, Any] | None:
    """The verdict the gate reached in this pass, if any."""
    for revision, record in reached.items():
        if record:
            return {"revision": revision, **({"version": versions[revision]} if revision in versions else {}),
                    **(evaluation_status(record) or {})}
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime | None:
    try:
        return parse_rfc3339(value) if isinstance(value, str) and value else None
    except ValueError:
        return None

