"""Plumbing shared by the controllers: per-object locks, delayed re-reconciles, refusing invalid specs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from modelops.kube import Kube, status_patch
from modelops.resources.conditions import Cond, Event, became_true, merge_conditions
from modelops.clock import rfc3339

log = logging.getLogger(__name__)


class KeyedLocks:
    """One lock per key, created on demand."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class Requeuer:
    """Runs a callback once after a delay; a newer request for the same key replaces the older one."""

    def __init__(self) -> None:
        self._timers: dict[Hashable, threading.Timer] = {}
        self._guard = threading.Lock()

    def after(self, key: Hashable, delay: float, callback: Callable[[], None]) -> None:
        def fire() -> None:
            with self._guard:
                if self._timers.get(key) is timer:
                    del self._timers[key]
            try:
                callback()
            except Exception:  # a failed requeue must not kill the timer thread silently
                log.exception("requeued reconcile of %s failed", key)

        timer = threading.Timer(max(delay, 0.0) + 0.2, fire)
        timer.daemon = True
        with self._guard:
            old = self._timers.pop(key, None)
            if old:
                old.cancel()
            self._timers[key] = timer
        timer.start()

    def cancel(self, key: Hashable) -> None:
        with self._guard:
            timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as one line a user can act on: 'spec.workers: Input should be ...'."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in ("spec", *item["loc"]))
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def refuse_invalid_spec(kube: Kube, obj: dict[str, Any], error: ValidationError) -> None:
    """Mark an object the operator cannot accept (Stalled, not Ready) and say why once, in an Event.
    Nothing is created or deleted: an invalid spec never leaves a half-built set of children."""
    meta = obj["metadata"]
    previous: dict[str, Any] = obj.get("status") or {}
    message = describe_validation_error(error)
    now = rfc3339()
    conditions = merge_conditions(previous.get("conditions", []), [
        Cond("Ready", False, "InvalidSpec", message),
        Cond("Stalled", True, "InvalidSpec", message),
        Cond("Reconciling", False, "InvalidSpec", message),
    ], now=now, generation=meta.get("generation"))
    status = {**previous, "observedGeneration": meta.get("generation"), "conditions": conditions}
    patch = status_patch(previous, status)
    if patch:
        kube.patch_status(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"], patch)
    if became_true(previous.get("conditions", []), conditions, "Stalled"):
        kube.post_event(obj, Event("Warning", "InvalidSpec", message))
