"""The model check (its own queue): one look at one serving pod's Triton, setting the pod's model-ready
condition (its readiness gate), so a pod joins its Service only once its model answers as the version it
should serve, and, where the evaluation gate holds its revision, only once the revision passed."""

from __future__ import annotations

import json
import logging
from typing import Any

from modelops.engine.cache import Obj
from modelops.engine.engine import Context
from modelops.engine.queue import Key
from modelops.resources import modelservice as build
from modelops.resources.evaluation_plan import FAILED_REASON, evaluation_hold
from modelops.rollout import evaluation

log = logging.getLogger(__name__)


def check_pod(ctx: Context, key: Key) -> float | None:
    """One check of one serving pod's Triton. Returns when to check again (backing off while Triton is not
    ready), or None when there is nothing (more) to check."""
    from modelops.triton.check import check_model

    namespace, name = key
    pod = ctx.caches.store("Pod").get(namespace, name)
    target = _check_target(pod) if pod else None
    if pod is None or target is None:
        ctx.checks.forget(key)
        return None
    address, model, version, expected = target
    result = check_model(address, model, version, expected)
    ready = build.model_ready_condition(pod)
    if result.verdict == "pending":
        if not ready:
            _set(ctx, namespace, name, False, "ModelCheckPending", result.message)
        return ctx.checks.next_delay(key)
    ctx.checks.forget(key)
    passed = result.verdict == "passed"
    held = _evaluation_hold(ctx, pod) if passed else None
    if held:
        if (ready or {}).get("reason") != held[0]:
            _set(ctx, namespace, name, False, *held)
        return None
    _set(ctx, namespace, name, passed, "ModelVerified" if passed else "ModelCheckFailed", result.message)
    return None


def _evaluation_hold(ctx: Context, pod: Obj) -> tuple[str, str] | None:
    """What the pod's revision's evaluation record (on its Deployment) says about letting it serve."""
    namespace = pod["metadata"].get("namespace", "")
    revision = (pod["metadata"].get("labels") or {}).get(build.LABEL_REVISION, "")
    deployment = ctx.caches.store("Deployment").get(namespace, revision)
    return evaluation_hold(evaluation.read((deployment or {}).get("metadata", {}).get("annotations") or {}))


def _check_target(pod: Obj) -> tuple[str, str, int, dict[str, Any] | None] | None:
    """(address, model, version, signature) when the pod's model still needs checking, else None."""
    meta, status = pod["metadata"], pod.get("status") or {}
    ready = build.model_ready_condition(pod)
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
        return None
    if ready and (ready.get("status") == "True" or ready.get("reason") in ("ModelCheckFailed", FAILED_REASON)):
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


def check_inputs(pod: Obj) -> tuple[Any, ...]:
    """What a model check depends on; a pod event that changes none of it (e.g. our own condition patch)
    does not reset the recheck backoff."""
    status = pod.get("status") or {}
    containers = tuple((c.get("name"), c.get("ready"), c.get("started"), c.get("restartCount"))
                       for c in status.get("containerStatuses") or [])
    return status.get("phase"), status.get("podIP"), containers, _check_target(pod) is not None


def _set(ctx: Context, namespace: str, name: str, passed: bool, reason: str, message: str) -> None:
    ctx.writer.set_pod_condition(namespace, name, build.MODEL_READY_GATE, passed, reason, message)
