"""Follows kopf's peering object so the engine is silent exactly while kopf pauses this replica.

kopf pauses its own handlers, but our work queues run outside them. The peering object is kopf's public
protocol (status: {identity: {priority, lifetime, lastseen}}); we read it with kopf's rule: pause while
any other live peer has a higher or the same priority, and while the object has not been seen yet."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

from modelops.engine.cache import Informer, Store
from modelops.engine.pause import Pause
from modelops.kube import Kube

log = logging.getLogger(__name__)
PAUSE_REASON = "peering"


def pause_reason(status: dict[str, Any] | None, identity: str, priority: int, now: datetime) -> tuple[str, float]:
    """('' or why this replica must pause, seconds until the verdict can change by a peer expiring)."""
    blockers, next_expiry = [], float("inf")
    for peer, info in (status or {}).items():
        if peer == identity or not isinstance(info, dict):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info["lastseen"])) if info.get("lastseen") else now  # kopf: isoformat()
            if lastseen.tzinfo is None:
                lastseen = lastseen.replace(tzinfo=timezone.utc)
            deadline = lastseen + timedelta(seconds=int(info.get("lifetime", 60)))
            peer_priority = int(info.get("priority", 0))
        except (ValueError, TypeError):
            continue
        if deadline <= now or peer_priority < priority:
            continue
        relation = "higher" if peer_priority > priority else "the same"
        blockers.append(f"{peer} (priority {peer_priority}, {relation})")
        next_expiry = min(next_expiry, (deadline - now).total_seconds())
    return (f"paused in favour of {', '.join(sorted(blockers))}" if blockers else ""), next_expiry


class PeeringFollower:
    """Keeps the pause's 'peering' reason in step with the peering object(s) of this operator."""

    def __init__(self, kube: Kube, pause: Pause, *, name: str, identity: str, priority: int,
                 namespaces: list[str] | None) -> None:
        self.pause, self.name, self.identity, self.priority = pause, name, identity, priority
        self.store = Store()
        self._changed = threading.Event()
        self._stop = threading.Event()
        kind = "ClusterKopfPeering" if not namespaces else "KopfPeering"
        self.informers = [
            Informer(kube, "kopf.dev/v1", kind, ns, self.store, lambda *_: self._changed.set(),
                     fields=f"metadata.name={name}", watch_seconds=60)
            for ns in ([*namespaces] if namespaces else [None])]
        self._expected = len(self.informers)
        pause.close(PAUSE_REASON, "the peering object has not been seen yet")

    def start(self) -> None:
        for informer in self.informers:
            informer.start()
        threading.Thread(target=self._run, name="peering follower", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        for informer in self.informers:
            informer.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.evaluate(datetime.now(timezone.utc))
            self._changed.wait(min(wait, 10.0))
            self._changed.clear()

    def evaluate(self, now: datetime) -> float:
        objects = self.store.items()
        if len(objects) < self._expected:
            self.pause.close(PAUSE_REASON, f"waiting for the peering object {self.name}")
            return 10.0
        reasons, wait = [], float("inf")
        for obj in objects:
            reason, expiry = pause_reason(obj.get("status"), self.identity, self.priority, now)
            if reason:
                reasons.append(reason)
            wait = min(wait, expiry)
        if reasons:
            self.pause.close(PAUSE_REASON, "; ".join(reasons))
        else:
            self.pause.open(PAUSE_REASON)
        return wait + 0.5
