"""The engine's pause: work runs only while nothing holds it (caches not synced yet, a peering pause)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Pause:
    """Running while no reason to hold is set. Work queues wait on it; listeners hear every flip."""

    def __init__(self) -> None:
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[bool], None]] = []

    def close(self, reason: str, detail: str = "") -> None:
        with self._lock:
            was_open = not self._reasons
            changed = self._reasons.get(reason) != detail
            self._reasons[reason] = detail
        if changed:
            log.info("engine paused: %s%s", reason, f" ({detail})" if detail else "")
        if was_open:
            self._notify(False)

    def open(self, reason: str) -> None:
        with self._lock:
            if reason not in self._reasons:
                return
            del self._reasons[reason]
            now_open = not self._reasons
        log.info("engine: %s cleared%s", reason, "; running" if now_open else "")
        if now_open:
            self._notify(True)

    @property
    def running(self) -> bool:
        with self._lock:
            return not self._reasons

    def reasons(self) -> dict[str, str]:
        with self._lock:
            return dict(self._reasons)

    def listen(self, listener: Callable[[bool], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, now_open: bool) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(now_open)
