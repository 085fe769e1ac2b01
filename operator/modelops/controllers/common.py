"""What both controllers do the same way: hand a pass's plan to the one writer and keep the key's memory and
backoff, refuse invalid specs, and make repeated failures visible on the resource."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from modelops import API_VERSION
from modelops.clock import rfc3339
from modelops.engine.cache import Obj
from modelops.engine.engine import ChildKind, Context
from modelops.engine.queue import Failure, Key
from modelops.resources.meta import Claim
from modelops.resources.plan import Plan, Refusal, failure_plan, orphans_plan, refusal_plan

log = logging.getLogger(__name__)
# After this many failed passes in a row the resource says so (a condition and an Event).
FAILURES_BEFORE_REPORT = 3


def write_plan(ctx: Context, key: Key, obj: dict[str, Any], plan: Plan) -> float | None:
    """Write the pass's plan; when to look again. A refused child backs off (the spec or the squatting
    object must change first), never sooner than the plan asks."""
    refusal = ctx.writer.apply_plan(obj, plan)
    if plan.memory is not None:
        ctx.memory.put(key, plan.memory)
    if plan.delete_self:
        ctx.forget(key)
        return None
    if refusal is None:
        ctx.refusals.forget(key)
        namespace = obj["metadata"]["namespace"]
        for pod in plan.recheck:
            ctx.enqueue_check((namespace, pod))
        return plan.requeue_after
    delay = ctx.refusals.next_delay(key)
    return delay if plan.requeue_after is None else min(delay, plan.requeue_after)


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as one line a user can act on: 'spec.workers: Input should be ...'."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in ("spec", *item["loc"]))
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def refuse_invalid_spec(ctx: Context, obj: dict[str, Any], error: ValidationError) -> None:
    """Mark a resource the operator cannot act on (Stalled, not Ready) and say why once, in an Event.
    Nothing is created or deleted."""
    refusal = Refusal("InvalidSpec", describe_validation_error(error))
    ctx.writer.apply_plan(obj, refusal_plan(obj.get("status") or {}, refusal, now=rfc3339(),
                                            generation=obj["metadata"].get("generation")))


def report_failure(ctx: Context, kind: str, failure: Failure) -> None:
    """After repeated failed passes, say so on the resource (best effort: the API may be what fails)."""
    if failure.failures < FAILURES_BEFORE_REPORT:
        return
    _, namespace, name = failure.key
    obj = ctx.caches.store(kind).get(namespace, name)
    if obj is None:
        return
    message = f"{failure.failures} passes failed in a row, retrying in {failure.retry_in:.0f}s: {failure.error}"[:1000]
    plan = failure_plan(obj.get("status") or {}, message, str(failure.error), now=rfc3339(),
                        generation=obj["metadata"].get("generation"))
    if plan is None:
        return
    try:
        ctx.writer.apply_plan(obj, plan)
    except Exception as error:  # noqa: BLE001 - reporting must never add a failure of its own
        log.debug("could not report the failure of %s/%s: %s", namespace, name, error)


def claimants(ctx: Context, child_kinds: list[ChildKind], kind: str, namespace: str, name: str) -> list[Obj]:
    """The unowned children of ours that claim the resource `kind` `name` (of this or an earlier UID)."""
    key = Claim(kind, name, "").key(namespace)
    return [obj for child in child_kinds if "claims" in child.indexes and ctx.serves(child.api_version, child.kind)
            for obj in ctx.caches.store(child.kind).by_index("claims", key)]


def end_orphans(ctx: Context, child_kinds: list[ChildKind], kind: str, namespace: str, name: str) -> None:
    """The resource is gone (or going) from the caches: its unowned children are ended, unless the API server
    shows it alive with the UID they claim (kopf, which feeds our kinds, may lag at a start): then its own
    pass adopts them. Children with owner references are the garbage collector's."""
    claims = claimants(ctx, child_kinds, kind, namespace, name)
    if not claims:
        return
    live = ctx.writer.kube.get(API_VERSION, kind, namespace, name)
    live_uid = live["metadata"].get("uid") if live and not live["metadata"].get("deletionTimestamp") else None
    ctx.writer.end_orphans(namespace, orphans_plan(claims, live_uid))
