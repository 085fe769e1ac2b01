"""The evaluation gate's part of a ModelService pass: start an evaluation pod for a gated revision once one of
its pods has a verified model, read its report when it ends, and hand the new records to the planner (which
writes them on the revision Deployments). Pods of a gated revision stay out of the Service (their model-ready
gate says EvaluationPending) until the record is final."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from modelops.api.modelservice import ModelServiceSpec
from modelops.api.trainingjob import DEFAULT_TRAINER_IMAGE
from modelops.clock import parse_rfc3339
from modelops.engine.cache import Obj
from modelops.engine.engine import Context
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import ObservedRevision
from modelops.rollout import evaluation
from modelops.rollout.canary import RolloutState

log = logging.getLogger(__name__)
PENDING_REASON = "EvaluationPending"
FAILED_REASON = "EvaluationFailed"


def run_gate(ctx: Context, meta: build.ServiceMeta, spec: ModelServiceSpec, observed: dict[str, ObservedRevision],
             state: RolloutState, image: str | None, now: datetime) -> tuple[dict[str, dict[str, Any]],
                                                                               dict[str, dict[str, Any]], float | None]:
    """(new evaluation records, lineage found, seconds until a pass is due) for the revisions whose record is
    Pending; the planner records them and posts their Events."""
    records: dict[str, dict[str, Any]] = {}
    lineages: dict[str, dict[str, Any]] = {}
    due: list[float] = []
    gate = spec.rollout.gates.evaluation
    for revision in filter(None, (state.canary, state.stable)):
        seen = observed.get(revision)
        if seen is None or (seen.evaluation or {}).get("verdict") != "Pending":
            continue
        pod = ctx.caches.store("Pod").get(meta.namespace, build.evaluation_pod_name(revision))
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            continue  # the last attempt's pod is still going away
        if not gate.enabled or spec.repository.uri:
            why = "disabled in the spec" if not gate.enabled else \
                "the repository is an object-store URI (the evaluation pod needs it mounted)"
            records[revision] = {"verdict": "Skipped", "message": f"evaluation gate skipped: {why}"}
        elif pod is not None and _finished(pod):
            record, lineage = _read(pod, seen.evaluation, gate, state.stable if revision != state.stable else None, now)
            records[revision] = record
            if lineage:
                lineages[revision] = lineage
        elif pod is not None and _age(pod, now) > gate.timeout_seconds:
            records[revision] = evaluation.failed_attempt(
                seen.evaluation, f"the evaluation pod ran longer than timeoutSeconds={gate.timeout_seconds}", now)
        elif pod is None and (wait := evaluation.retry_in(seen.evaluation, now)):
            due.append(wait)
            continue
        elif pod is None:
            _start(ctx, meta, spec, revision, seen.version, observed, state, gate.image or image
                   or DEFAULT_TRAINER_IMAGE)
            continue
        else:  # running: its end wakes us; the timeout needs a pass of its own
            due.append(max(1.0, gate.timeout_seconds - _age(pod, now)))
            continue
        if pod is not None:
            ctx.children.delete(meta.uid, "v1", "Pod", meta.namespace, pod["metadata"]["name"])
        if records[revision].get("retryAfter"):
            due.append(evaluation.retry_in(records[revision], now) or 1.0)
    _remove_strays(ctx, meta, {state.canary, state.stable})
    return records, lineages, min(due) if due else None


def _remove_strays(ctx: Context, meta: build.ServiceMeta, evaluating: set[str | None]) -> None:
    """Evaluation pods of revisions no longer rolled out (rolled back, replaced, promoted meanwhile) go."""
    for pod in ctx.caches.store("Pod").by_index("owner", meta.uid):
        revision = (pod["metadata"].get("labels") or {}).get(build.LABEL_EVALUATES)
        if revision and revision not in evaluating:  # delete() passes over one already going
            ctx.children.delete(meta.uid, "v1", "Pod", meta.namespace, pod["metadata"]["name"])


def _start(ctx: Context, meta: build.ServiceMeta, spec: ModelServiceSpec, revision: str, version: int,
           observed: dict[str, ObservedRevision], state: RolloutState, image: str) -> None:
    candidate = _serving_address(ctx, meta, revision, PENDING_REASON)
    if candidate is None:
        return  # no pod of the revision has a verified model yet: a pod update wakes us
    stable = None
    if state.stable and state.stable != revision and state.stable in observed:
        address = _serving_address(ctx, meta, state.stable, None)
        stable = (address, observed[state.stable].version) if address else None
    pod = build.evaluation_pod(meta, spec, revision, version, image, candidate=candidate, stable=stable)
    if ctx.children.ensure(meta.uid, pod, create_only=True) == "created":
        log.info("ModelService %s/%s: evaluating revision %s through %s", meta.namespace, meta.name, revision,
                 candidate)


def _serving_address(ctx: Context, meta: build.ServiceMeta, revision: str, reason: str | None) -> str | None:
    """host:port of a Running pod of the revision whose model-ready gate is True (reason None) or has
    the given reason."""
    for pod in ctx.caches.store("Pod").by_index("service", f"{meta.namespace}/{meta.label}"):
        labels = pod["metadata"].get("labels") or {}
        status = pod.get("status") or {}
        if labels.get(build.LABEL_REVISION) != revision or status.get("phase") != "Running" \
                or not status.get("podIP") or pod["metadata"].get("deletionTimestamp"):
            continue
        gate = next((c for c in status.get("conditions") or [] if c.get("type") == build.MODEL_READY_GATE), {})
        if (reason is None and gate.get("status") == "True") or (reason and gate.get("reason") == reason):
            return f"{status['podIP']}:{build.HTTP_PORT}"
    return None


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _age(pod: Obj, now: datetime) -> float:
    try:
        return (now - parse_rfc3339(pod["metadata"].get("creationTimestamp", ""))).total_seconds()
    except ValueError:
        return 0.0


def _read(pod: Obj, record: dict[str, Any] | None, gate: Any, stable: str | None,
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


def pod_gate(ctx: Context, pod: Obj) -> tuple[str, str] | None:
    """For the model check: (reason, message) holding a verified pod out of the Service while its revision's
    evaluation is pending or failed; None when it may serve."""
    namespace = pod["metadata"].get("namespace", "")
    revision = (pod["metadata"].get("labels") or {}).get(build.LABEL_REVISION, "")
    deployment = ctx.caches.store("Deployment").get(namespace, revision)
    record = evaluation.read((deployment or {}).get("metadata", {}).get("annotations") or {})
    if record is None or record["verdict"] in ("Passed", "Skipped"):
        return None
    if record["verdict"] == "Failed":
        return FAILED_REASON, f"model verified, but the evaluation gate failed: {record.get('message', '')}"
    return PENDING_REASON, "model verified; waiting for the evaluation gate (held-out set through this revision)"
