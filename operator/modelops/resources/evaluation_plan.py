"""The evaluation gate's part of a ModelService plan (pure): start an evaluation pod for a gated revision once
one of its pods has a verified model, read its report when it ends, and hand the new records to the rest of
the plan (which writes them on the revision Deployments). Pods of a gated revision stay out of the Service
(their model-ready condition says EvaluationPending) until the record is final."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from modelops.api.modelservice import EvaluationGate, ModelServiceSpec
from modelops.api.trainingjob import DEFAULT_TRAINER_IMAGE
from modelops.clock import parse_rfc3339
from modelops.resources import modelservice as build
from modelops.rollout import evaluation
from modelops.rollout.canary import RolloutState

Obj = dict[str, Any]
Address = Callable[[str, "str | None"], "str | None"]
"""(revision, model-ready reason: PENDING_REASON for a candidate held out of the Service, None for one
serving) -> host:port of a Triton serving that revision, or None."""
PENDING_REASON = "EvaluationPending"
FAILED_REASON = "EvaluationFailed"


@dataclass
class GatePlan:
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """New evaluation records by revision."""
    lineages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What the evaluation found about a revision's lineage."""
    start: list[Obj] = field(default_factory=list)
    """Evaluation pods to create."""
    delete: list[str] = field(default_factory=list)
    """Evaluation pods (names) that are done or no longer wanted."""
    due: float | None = None
    """Seconds until a pass is needed (a retry, a timeout), if any."""


def plan_gate(meta: build.ServiceMeta, spec: ModelServiceSpec, revisions: dict[str, tuple[int, dict[str, Any] | None]],
              state: RolloutState, serving_pods: list[Obj], evaluation_pods: list[Obj],
              now: datetime, address: Address | None = None) -> GatePlan:
    """`revisions`: each observed revision's (model version, evaluation record); `serving_pods`: the
    ModelService's serving pods; `evaluation_pods`: its evaluation pods; `address`: where a revision is served
    (host:port), by default a serving pod (serving_address): a pooled ModelService passes its pool servers. The evaluation runs the operator's
    trainer image (or gates.evaluation.image), never the image that trained the candidate: a candidate does
    not write its own exam."""
    plan = GatePlan()
    due: list[float] = []
    gate = spec.rollout.gates.evaluation
    by_name = {p["metadata"]["name"]: p for p in evaluation_pods}
    for revision in filter(None, (state.canary, state.stable)):
        version, record = revisions.get(revision, (0, None))
        if revision not in revisions or (record or {}).get("verdict") != "Pending":
            continue
        pod = by_name.get(build.evaluation_pod_name(revision))
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            continue  # the last attempt's pod is still going away
        if not gate.enabled or spec.repository.uri:
            why = "disabled in the spec" if not gate.enabled else \
                "the repository is an object-store URI (the evaluation pod needs it mounted)"
            plan.records[revision] = {"verdict": "Skipped", "message": f"evaluation gate skipped: {why}"}
        elif pod is not None and _finished(pod):
            stable = state.stable if revision != state.stable else None
            plan.records[revision], lineage = _read(pod, record, gate, stable, now)
            if lineage:
                plan.lineages[revision] = lineage
        elif pod is not None and _age(pod, now) > gate.timeout_seconds:
            plan.records[revision] = evaluation.failed_attempt(
                record, f"the evaluation pod ran longer than timeoutSeconds={gate.timeout_seconds}", now)
        elif pod is None and (wait := evaluation.retry_in(record, now)):
            due.append(wait)
            continue
        elif pod is None:
            started = _evaluation_pod(meta, spec, revision, version, revisions, state,
                                      address or (lambda r, reason: serving_address(serving_pods, r, reason)),
                                      gate.image or DEFAULT_TRAINER_IMAGE)
            if started:  # else no pod of the revision has a verified model yet: a pod update wakes us
                plan.start.append(started)
            continue
        else:  # running: its end wakes us; the timeout needs a pass of its own
            due.append(max(1.0, gate.timeout_seconds - _age(pod, now)))
            continue
        if pod is not None:
            plan.delete.append(pod["metadata"]["name"])
        if plan.records[revision].get("retryAfter"):
            due.append(evaluation.retry_in(plan.records[revision], now) or 1.0)
    # Evaluation pods of revisions no longer rolled out (rolled back, replaced, promoted meanwhile) go.
    evaluating = {state.canary, state.stable}
    for pod in evaluation_pods:
        evaluated = (pod["metadata"].get("labels") or {}).get(build.LABEL_EVALUATES)
        name = pod["metadata"]["name"]
        if evaluated not in evaluating and not pod["metadata"].get("deletionTimestamp") and name not in plan.delete:
            plan.delete.append(name)
    plan.due = min(due) if due else None
    return plan


def _evaluation_pod(meta: build.ServiceMeta, spec: ModelServiceSpec, revision: str, version: int,
                    revisions: dict[str, tuple[int, dict[str, Any] | None]], state: RolloutState,
                    address: Address, image: str) -> Obj | None:
    candidate = address(revision, PENDING_REASON)
    if candidate is None:
        return None
    # The stable version's folder is mounted even while no stable pod is ready: its held-out set is evidence
    # the candidate did not produce, with the score its training run recorded on it.
    stable = None
    if state.stable and state.stable != revision and state.stable in revisions:
        stable = (address(state.stable, None) or "", revisions[state.stable][0])
    return build.evaluation_pod(meta, spec, revision, version, image, candidate=candidate, stable=stable)


def serving_address(pods: list[Obj], revision: str, reason: str | None) -> str | None:
    """host:port of a Running pod of the revision whose model-ready condition is True (reason None) or has
    the given reason."""
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if labels.get(build.LABEL_REVISION) != revision or status.get("phase") != "Running" \
                or not status.get("podIP") or pod["metadata"].get("deletionTimestamp"):
            continue
        ready = build.model_ready_condition(pod) or {}
        if (reason is None and ready.get("status") == "True") or (reason and ready.get("reason") == reason):
            return f"{status['podIP']}:{build.HTTP_PORT}"
    return None


def evaluation_hold(record: dict[str, Any] | None) -> tuple[str, str] | None:
    """For the model check: (reason, message) holding a verified pod out of the Service while its revision's
    evaluation `record` is pending or failed; None when it may serve."""
    if record is None or record["verdict"] in ("Passed", "Skipped"):
        return None
    if record["verdict"] == "Failed":
        return FAILED_REASON, f"model verified, but the evaluation gate failed: {record.get('message', '')}"
    return PENDING_REASON, "model verified; waiting for the evaluation gate (held-out set through this revision)"


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _age(pod: Obj, now: datetime) -> float:
    try:
        return (now - parse_rfc3339(pod["metadata"].get("creationTimestamp", ""))).total_seconds()
    except ValueError:
        return 0.0


def _read(pod: Obj, record: dict[str, Any] | None, gate: EvaluationGate, stable: str | None,
          now: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    message, code = "", None
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        message, code = str(terminated.get("message") or ""), terminated.get("exitCode")
    report = evaluation.parse_report(message) if code == 0 else None
    if report is None:
        why = _error(message) or f"the evaluation pod ended with exit code {code} and no report"
        return evaluation.failed_attempt(record, why, now), {}
    return evaluation.judge(report, gate, stable=stable), report.lineage or {}


def _error(message: str) -> str:
    try:
        data = json.loads(message)
    except ValueError:
        return message.strip().splitlines()[-1][:500] if message.strip() else ""
    return str(data.get("error", ""))[:500] if isinstance(data, dict) else ""
