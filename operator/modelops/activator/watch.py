"""The activator's routing table from the API server: a read-only list+watch of the EndpointSlices the operator
labels `modelops.dev/activator-targets` (get/list/watch on EndpointSlices is all the RBAC it needs). The
watch runs in a thread (kube.py's client is blocking) and hands each change to the asyncio loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from modelops.activator.routing import TARGETS_LABEL, backend_from_slice
from modelops.activator.server import Activator
from modelops.kube import ApiError, Kube

log = logging.getLogger(__name__)


def watch_targets(kube: Kube, activator: Activator, loop: asyncio.AbstractEventLoop,
                  namespace: str | None = None, stop: threading.Event | None = None) -> threading.Thread:
    """Start the watch thread (a daemon: it ends with the process, or soon after `stop` is set)."""
    stop = stop or threading.Event()
    seen: set[str] = set()  # the keys this watch put in the table (fixed --backend entries are not its own)

    def apply(obj: dict[str, Any], deleted: bool) -> None:
        backend = backend_from_slice(obj)
        if backend is not None and deleted:
            seen.discard(backend.key)
            loop.call_soon_threadsafe(activator.remove_backend, backend.key)
        elif backend is not None:
            seen.add(backend.key)
            loop.call_soon_threadsafe(activator.set_backend, backend)

    def run() -> None:
        while not stop.is_set():
            try:
                items, version = kube.list_objects("discovery.k8s.io/v1", "EndpointSlice", namespace,
                                                   labels=TARGETS_LABEL)
                known = {b.key for b in map(backend_from_slice, items) if b}
                for key in seen - known:  # gone while the watch was down
                    seen.discard(key)
                    loop.call_soon_threadsafe(activator.remove_backend, key)
                for item in items:
                    apply(item, deleted=False)
                while not stop.is_set():
                    for event in kube.watch_objects("discovery.k8s.io/v1", "EndpointSlice", namespace, version,
                                                    labels=TARGETS_LABEL, timeout_seconds=30):
                        if stop.is_set():
                            return
                        obj = event.get("object") or {}
                        version = (obj.get("metadata") or {}).get("resourceVersion", version)
                        if event.get("type") == "ERROR":
                            raise ApiError(int(obj.get("code") or 0), str(obj.get("reason")), str(obj))
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            apply(obj, deleted=event["type"] == "DELETED")
            except ApiError as error:
                if not stop.is_set():
                    log.warning("watching activator targets: %s; listing again", error)
                stop.wait(1)

    thread = threading.Thread(target=run, name="activator-targets", daemon=True)
    thread.start()
    return thread
