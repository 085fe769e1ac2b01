"""What both controllers do the same way: write status only when it changed, refuse invalid specs and
children that cannot be written, and make repeated failures visible on the resource."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from modelops.clock import rfc3339
from modelops.engine.children import ChildRejected, NameConflict
from modelops.engine.engine import Context
from modelops.engine.queue import Backoff, Failure
from modelops.kube import ApiError, status_patch
from modelops.metrics import record_status
from modelops.resources.conditions import Cond, Event, merge_conditions

log = logging.getLogger(__name__)
# After this many failed passes in a row the resource says so (a condition and an Event).
FAILURES_BEFORE_REPORT = 3
# A refused child is retried slowly (the spec must change first; its edit reconciles at once anyway).
refusal_backoff = Backoff(base=5.0, cap=600.0)


def write_status(ctx: Context, obj: dict[str, Any], status: dict[str, Any]) -> bool:
    """Patch the status subresource with what changed (nothing when nothing did); True if written. The
    per-resource metrics mirror the status as published (unchanged: one cheap comparison)."""
    previous = obj.get("status") or {}
    patch = status_patch(previous, status)
    meta = obj["metadata"]
    if patch:
        try:
            written = ctx.kube.patch_status(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], patch)
        except ApiError as error:
            if error.not_found:  # deleted meanwhile: its DELETED event will follow
                return False
            raise
        ctx.caches.remember(written)
    record_status(obj["kind"], meta["namespace"], meta["name"], status)
    return bool(patch)


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as one line a user can act on: 'spec.workers: Input should be ...'."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in ("spec", *item["loc"]))
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def refuse(ctx: Context, obj: dict[str, Any], reason: str, message: str) -> None:
    """Mark a resource the operator cannot act on (Stalled, not Ready) and say why once, in an Event.
    Nothing is created or deleted here."""
    meta = obj["metadata"]
    previous: dict[str, Any] = obj.get("status") or {}
    conditions = merge_conditions(previous.get("conditions", []), [
        Cond("Ready", False, reason, message),
        Cond("Stalled", True, reason, message),
        Cond("Reconciling", False, reason, message),
    ], now=rfc3339(), generation=meta.get("generation"))
    write_status(ctx, obj, {**previous, "observedGeneration": meta.get("generation"), "conditions": conditions})
    for event in refusal_event(previous, (reason, message)):
        ctx.kube.post_event(obj, event)


def refuse_invalid_spec(ctx: Context, obj: dict[str, Any], error: ValidationError) -> None:
    refuse(ctx, obj, "InvalidSpec", describe_validation_error(error))


def with_refusal(status: dict[str, Any], refusal: tuple[str, str], *, generation: int | None,
                 stored: list[dict[str, Any]]) -> dict[str, Any]:
    """The planner's status, overridden where a child could not be written: Ready=False, Stalled=True, and
    Reconciling=False (kstatus, Flux's reader, takes whichever of the two is True first). Transition times
    come from the `stored` conditions, so a refusal that persists writes nothing new."""
    reason, message = refusal
    return {**status, "conditions": _override(status.get("conditions", []), [
        Cond("Ready", False, reason, message), Cond("Reconciling", False, reason, message),
        Cond("Stalled", True, reason, message)], generation, stored)}


def _override(conditions: list[dict[str, Any]], replacing: list[Cond], generation: int | None,
              stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`conditions` with those of `replacing`'s types replaced (transition times kept where unchanged)."""
    types = {c.type for c in replacing}
    return [c for c in conditions if c.get("type") not in types] + \
        merge_conditions(stored, replacing, now=rfc3339(), generation=generation)


def write_children(ctx: Context, owner_uid: str, objects: list[dict[str, Any]], *,
                   create_only_kinds: frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """Converge each child; (reason, message) of the first one that cannot be written for a reason
    retrying will not fix (another owner's object, refused content), else None. API errors raise."""
    for obj in objects:
        try:
            ctx.children.ensure(owner_uid, obj, create_only=obj["kind"] in create_only_kinds)
        except NameConflict as conflict:
            return "NameConflict", f"{conflict}: not modified. Rename this resource or remove that object"
        except ChildRejected as rejected:
            return "ChildRejected", str(rejected)
    return None


def refusal_event(previous: dict[str, Any], refusal: tuple[str, str] | None) -> list[Event]:
    """A Warning for a refusal the previous status did not already state (one Event per distinct message)."""
    if refusal is None or any(c.get("type") == "Stalled" and (c.get("reason"), c.get("message")) == refusal
                              for c in previous.get("conditions", [])):
        return []
    return [Event("Warning", *refusal)]


def report_failure(ctx: Context, kind: str, failure: Failure) -> None:
    """After repeated failed passes, say so on the resource (best effort: the API may be what fails)."""
    if failure.failures < FAILURES_BEFORE_REPORT:
        return
    _, namespace, name = failure.key  # type: ignore[misc]
    obj = ctx.caches.store(kind).get(namespace, name)
    if obj is None:
        return
    message = f"{failure.failures} passes failed in a row, retrying in {failure.retry_in:.0f}s: {failure.error}"[:1000]
    previous: dict[str, Any] = obj.get("status") or {}
    old = next((c for c in previous.get("conditions", []) if c.get("type") == "Ready"), {})
    if old.get("reason") == "ReconcileError" and str(failure.error) in old.get("message", ""):
        return  # already said; do not rewrite it on every retry
    conditions = _override(previous.get("conditions", []), [Cond("Ready", False, "ReconcileError", message)],
                           obj["metadata"].get("generation"), previous.get("conditions", []))
    try:
        write_status(ctx, obj, {**previous, "conditions": conditions})
        ctx.kube.post_event(obj, Event("Warning", "ReconcileError", message))
    except Exception as error:  # noqa: BLE001 - reporting must never add a failure of its own
        log.debug("could not report the failure of %s/%s: %s", namespace, name, error)

