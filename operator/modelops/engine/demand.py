"""The activators' demand, as the operator hears it (docs/scale-to-zero.md, "Demand").

One long poll (`GET /demand?since=<seq>&wait=<s>`) per activator pod, on a thread of its own; the pods'
addresses come from the activator Service's EndpointSlices, listed again every few seconds. A ModelService
whose held requests go above zero gets its pass enqueued at once. Passes read `snapshot()`: an observe input
like the caches, never written to from a plan."""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from typing import Any, Callable

from modelops.kube import ApiError, Kube
from modelops.resources.scale_to_zero import Demand

log = logging.getLogger(__name__)

KIND = "ModelService"
ADMIN_PORT = 9090
WAIT_SECONDS = 30.0
LIST_SECONDS = 5.0


def merge(per_activator: dict[str, dict[str, Any]], key: str) -> Demand:
    """One ModelService's demand over every activator's last answer: held summed, the oldest `since`."""
    held, since = 0, None
    for answer in per_activator.values():
        entry = (answer.get("demand") or {}).get(key) or {}
        count = entry.get("held")
        if isinstance(count, int) and count > 0:
            held += count
            first = entry.get("since")
            if isinstance(first, (int, float)):
                since = first if since is None else min(since, first)
    return Demand(held, since)


def woken(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The ModelServices ("namespace/name") whose held count rose between two answers of one activator."""
    old = before.get("demand") or {}
    return [key for key, entry in (after.get("demand") or {}).items()
            if (entry or {}).get("held", 0) > ((old.get(key) or {}).get("held") or 0)]


def admin_port(slices: list[dict[str, Any]]) -> int:
    """The port named admin on the activator Service's slices (its /demand), else the chart's 9090."""
    return next((int(p["port"]) for s in slices for p in s.get("ports") or []
                 if p.get("name") == "admin" and isinstance(p.get("port"), int)), ADMIN_PORT)


def ready_addresses(slices: list[dict[str, Any]]) -> tuple[str, ...]:
    """The ready endpoints' addresses of a Service's EndpointSlices."""
    return tuple(sorted({address for s in slices for e in s.get("endpoints") or []
                         if (e.get("conditions") or {}).get("ready", True) for address in e.get("addresses") or []}))


class ActivatorDemand:
    """Long polls of every activator pod; `service` is "namespace/name" of the activator's Service."""

    def __init__(self, kube: Kube, service: str, enqueue: Callable[[tuple[str, str, str]], None], *,
                 wait: float = WAIT_SECONDS) -> None:
        self.kube, self.enqueue, self.port, self.wait = kube, enqueue, ADMIN_PORT, wait
        self.namespace, _, self.name = service.partition("/")
        self._lock = threading.Lock()
        self._answers: dict[str, dict[str, Any]] = {}
        self._pollers: dict[str, threading.Event] = {}
        self._addresses: tuple[str, ...] = ()
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._follow, name="activator endpoints", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for stop in self._pollers.values():
                stop.set()

    def snapshot(self, namespace: str, name: str) -> Demand:
        with self._lock:
            return merge(self._answers, f"{namespace}/{name}")

    def addresses(self) -> tuple[str, ...]:
        with self._lock:
            return self._addresses

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                slices, _ = self.kube.list_objects("discovery.k8s.io/v1", "EndpointSlice", self.namespace,
                                                   labels=f"kubernetes.io/service-name={self.name}")
                self.set_addresses(ready_addresses(slices), admin_port(slices))
            except ApiError as error:
                log.warning("could not list the activator's endpoints %s/%s: %s", self.namespace, self.name, error)
            self._stop.wait(LIST_SECONDS)

    def set_addresses(self, addresses: tuple[str, ...], port: int = ADMIN_PORT) -> None:
        """Poll these activator pods (their admin port): new ones start a long poll, gone ones stop theirs."""
        with self._lock:
            self._addresses, self.port = addresses, port
            for gone in set(self._pollers) - set(addresses):
                self._pollers.pop(gone).set()
                self._answers.pop(gone, None)
            for address in addresses:
                if address not in self._pollers:
                    stop = self._pollers[address] = threading.Event()
                    threading.Thread(target=self._poll, args=(address, stop), name=f"demand {address}",
                                     daemon=True).start()

    def _poll(self, address: str, stop: threading.Event) -> None:
        seq = -1  # a (re)started poll starts from the full snapshot
        while not stop.is_set():
            url = f"http://{address}:{self.port}/demand?since={seq}&wait={self.wait:g}"
            try:
                with urllib.request.urlopen(url, timeout=self.wait + 10) as response:
                    answer = json.load(response)
            except (OSError, ValueError) as error:
                log.info("activator %s: /demand: %s", address, error)
                with self._lock:
                    self._answers.pop(address, None)
                stop.wait(1.0)
                seq = -1
                continue
            with self._lock:
                if stop.is_set():
                    return
                before = self._answers.get(address, {})
                self._answers[address] = answer
            seq = int(answer.get("seq", -1))
            for key in woken(before, answer):
                namespace, _, name = key.partition("/")
                self.enqueue((KIND, namespace, name))
