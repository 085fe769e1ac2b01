"""Condition bookkeeping shared by every kind: transition times and the Events transitions deserve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Cond:
    """A desired condition before bookkeeping (no times, no generation)."""

    type: str
    status: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the resource."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def merge_conditions(previous: list[dict[str, Any]], desired: list[Cond], *, now: str,
                     generation: int | None) -> list[dict[str, Any]]:
    """Wire-form conditions: lastTransitionTime moves only when a condition's status flips."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for cond in desired:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        merged.append({"type": cond.type, "status": status, "reason": cond.reason, "message": cond.message,
                       "lastTransitionTime": since or now, "observedGeneration": generation})
    return merged


def set_conditions(conditions: list[dict[str, Any]], replacing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`conditions` with each of `replacing` (wire form) in place of the one of its type; a replaced condition
    whose status does not change keeps its lastTransitionTime."""
    before = {c.get("type"): c for c in conditions}
    kept = []
    for cond in replacing:
        old = before.get(cond["type"])
        if old and old.get("status") == cond["status"] and old.get("lastTransitionTime"):
            cond = {**cond, "lastTransitionTime": old["lastTransitionTime"]}
        kept.append(cond)
    types = {c["type"] for c in replacing}
    return [c for c in conditions if c.get("type") not in types] + kept


def became_true(previous: list[dict[str, Any]], current: list[dict[str, Any]],
                cond_type: str) -> dict[str, Any] | None:
    """The condition if it is True now and was not before (a transition worth an Event)."""
    was = {c.get("type"): c for c in previous}.get(cond_type)
    now = {c.get("type"): c for c in current}.get(cond_type)
    if now and now["status"] == "True" and not (was and was.get("status") == "True"):
        return now
    return None
