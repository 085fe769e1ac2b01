"""The engine of one operator process: caches, queues and pause wired together, controllers plugged in.

kopf feeds the custom resources' bodies (its watch events) into `observe_resource`; informers feed the
children; both only enqueue keys. Workers run passes from memory. Nothing runs while the pause holds:
before the caches have listed once, and while kopf's peering pauses this replica."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelops.autoscale.prometheus import Prometheus
from modelops.engine.cache import Caches, Informer, Obj, Store, object_key, trim
from modelops.engine.children import NamespaceTerminating, OwnerGone
from modelops.engine.demand import ActivatorDemand
from modelops.engine.pause import Pause
from modelops.engine.peering import PeeringFollower
from modelops.engine.queue import Backoff, Failure, Key, WorkQueue
from modelops.engine.writer import Writer
from modelops import API_VERSION
from modelops.kube import ApiError, Kube
from modelops.resources.meta import MANAGED_BY_SELECTOR

log = logging.getLogger(__name__)
CACHES_PAUSE = "caches"


class Memory:
    """What a controller remembers about one key between its passes (a scaling window): held by the engine,
    forgotten with the object, never in module globals."""

    def __init__(self) -> None:
        self._values: dict[Key, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Key, default: Any = None) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def put(self, key: Key, value: Any) -> None:
        with self._lock:
            self._values[key] = value

    def forget(self, key: Key) -> None:
        with self._lock:
            self._values.pop(key, None)


@dataclass
class Context:
    """What a pass may use: the caches to read (and Prometheus), the one writer, the per-key memory and
    backoffs, and a way to wake keys."""

    caches: Caches
    writer: Writer
    prometheus: Prometheus
    enqueue: Callable[[Key], None]
    enqueue_check: Callable[[Key], None]
    serves: Callable[[str, str], bool] = lambda api_version, kind: True
    memory: Memory = field(default_factory=Memory)
    refusals: Backoff = field(default_factory=lambda: Backoff(base=5.0, cap=600.0))
    """A refused child is retried slowly (the spec must change first; its edit reconciles at once anyway)."""
    checks: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0, jitter=0.2))
    """Rechecks of a serving pod whose Triton is not ready yet: 1 s doubling to 30 s, per pod."""
    demand: ActivatorDemand | None = None
    """The activators' held requests and addresses (None: no activator configured, nothing scales to zero)."""

    def absent(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Whether the object is not there: the caches say so and the API server confirms it (one GET, only
        when the caches miss it: kopf feeds our own kinds, and at a start it may not have yet)."""
        return self.caches.store(kind).get(namespace, name) is None and \
            self.writer.kube.get(api_version, kind, namespace, name) is None

    def forget(self, key: Key) -> None:
        """The object of `key` is gone: drop everything remembered about it."""
        self.memory.forget(key)
        self.refusals.forget(key)


@dataclass(frozen=True)
class ChildKind:
    """A kind of child to cache (the objects carrying our managed-by label, or with labels=None and `keep`
    the ones `keep` says are ours), and how to trim it. A kind the controllers only read (a Kueue
    ResourceFlavor, a PriorityClass) is cached whole: labels=None, no `keep`."""

    api_version: str
    kind: str
    transform: Callable[[Obj], Obj] = trim
    indexes: dict[str, Callable[[Obj], Iterable[str]]] = field(default_factory=dict)
    optional: bool = False  # a CRD that may not be installed (ServiceMonitor)
    labels: str | None = MANAGED_BY_SELECTOR
    cluster_scoped: bool = False  # watched cluster-wide even when the operator watches some namespaces
    keep: Callable[[Obj], bool] | None = None
    """Which objects the cache keeps, for a kind watched without a label selector (labels=None)."""


class Controller(Protocol):
    """One resource kind's plug-in: its passes and how child events map to its keys."""

    kind: str
    child_kinds: list[ChildKind]
    resource_indexes: dict[str, Callable[[Obj], Iterable[str]]]

    def reconcile(self, ctx: Context, namespace: str, name: str) -> float | None: ...

    def keys_for_child(self, ctx: Context, kind: str, change: str, old: Obj | None, new: Obj | None) -> Iterable[Key]: ...

    def keys_for_resource(self, ctx: Context, kind: str, obj: Obj) -> Iterable[Key]: ...

    def failed(self, ctx: Context, failure: Failure) -> None: ...


@dataclass(frozen=True)
class EngineOptions:
    namespaces: list[str] = field(default_factory=list)  # [] = the whole cluster
    workers: int = 16
    check_workers: int = 4
    peering: str | None = None
    identity: str = ""
    priority: int = 0
    activator: str = ""
    """"namespace/name" of the activator's Service, whose pods' /demand the engine long-polls ('' : none)."""


def merged_child_kinds(controllers: Iterable[Controller]) -> dict[str, ChildKind]:
    """Each child kind once, with the indexes every controller asked for (one cache per kind); watched without
    a label selector when one controller asks for that (its `keep` then says what is ours)."""
    kinds: dict[str, ChildKind] = {}
    for controller in controllers:
        for child in controller.child_kinds:
            merged = kinds.get(child.kind)
            kinds[child.kind] = child if merged is None else \
                ChildKind(child.api_version, child.kind, child.transform, {**merged.indexes, **child.indexes},
                          child.optional, child.labels if child.labels == merged.labels else None,
                          child.cluster_scoped, _either(merged.keep, child.keep))
    return kinds


def _either(first: Callable[[Obj], bool] | None, second: Callable[[Obj], bool] | None) -> Callable[[Obj], bool] | None:
    """What one cache keeps for two controllers: what either keeps."""
    if first is None or second is None or first is second:
        return first or second
    return lambda obj: first(obj) or second(obj)


class Engine:
    """Owns the caches, the queues and the pause; the controllers own the logic."""

    def __init__(self, kube: Kube, prometheus: Prometheus, controllers: list[Controller], options: EngineOptions,
                 *, checker: Callable[[Context, Key], float | None] | None = None) -> None:
        self.kube, self.options = kube, options
        self.controllers = {c.kind: c for c in controllers}
        self.pause = Pause()
        self.pause.close(CACHES_PAUSE, "listing the children")
        self.caches = Caches()
        self.queue = WorkQueue("reconcile", self._reconcile, workers=options.workers, pause=self.pause,
                               on_failure=self._failed)
        self.checks = WorkQueue("model-check", lambda key: checker(self.ctx, key) if checker else None,
                                workers=options.check_workers, pause=self.pause)
        self.ctx = Context(caches=self.caches, writer=Writer(kube, self.caches), prometheus=prometheus,
                           enqueue=self.queue.add, enqueue_check=self.checks.add, serves=self._serves,
                           demand=ActivatorDemand(kube, options.activator, self.queue.add) if options.activator
                           else None)
        self._served: set[tuple[str, str]] = set()
        for controller in controllers:
            self.caches.stores[controller.kind] = Store(controller.resource_indexes)
        self._add_informers(controllers)
        self.peering = PeeringFollower(kube, self.pause, name=options.peering, identity=options.identity,
                                       priority=options.priority, namespaces=options.namespaces or None) \
            if options.peering else None
        # On every opening (synced, or resumed after a peering pause) look at everything once more.
        self.pause.listen(self._pause_changed)

    def _add_informers(self, controllers: list[Controller]) -> None:
        for child in merged_child_kinds(controllers).values():
            if child.optional and not self.kube.has_kind(child.api_version, child.kind):
                log.info("%s is not served by this cluster: not watched", child.kind)
                continue
            self._served.add((child.api_version, child.kind))
            store = Store(child.indexes)
            for namespace in [None] if child.cluster_scoped else self._scopes():
                self.caches.add(Informer(self.kube, child.api_version, child.kind, namespace, store,
                                         self._child_listener(child.kind), labels=child.labels,
                                         transform=child.transform, keep=child.keep))

    def _scopes(self) -> list[str | None]:
        """The namespaces watched (None: the whole cluster)."""
        return [*self.options.namespaces] if self.options.namespaces else [None]

    def _pause_changed(self, running: bool) -> None:
        if running:
            self.resync()

    def _serves(self, api_version: str, kind: str) -> bool:
        return (api_version, kind) in self._served

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self.caches.start()
        self.queue.start()
        self.checks.start()
        if self.peering:
            self.peering.start()
        if self.ctx.demand:
            self.ctx.demand.start()
        threading.Thread(target=self._open_when_synced, name="cache sync", daemon=True).start()

    def stop(self) -> None:
        self.pause.close("stopping")
        if self.peering:
            self.peering.stop()
        if self.ctx.demand:
            self.ctx.demand.stop()
        self.caches.stop()
        self.queue.stop()
        self.checks.stop()

    def _open_when_synced(self) -> None:
        while not self.caches.wait_synced(timeout=30):
            log.warning("caches not synced after 30s: %s",
                        ", ".join(sorted({i.kind for i in self.caches.informers if not i.synced.is_set()})))
        self.pause.open(CACHES_PAUSE)

    def resync(self) -> None:
        """Look at every resource once more (the pause lifted: caches synced, or a peering pause ended).
        First drop resources deleted while kopf's watch was away (a pause): its re-list only adds."""
        for kind in self.controllers:
            store = self.caches.store(kind)
            for namespace in self._scopes():
                try:
                    present, version = self.kube.list_objects(API_VERSION, kind, namespace, transform=object_key)
                except ApiError as error:
                    log.warning("could not list %s to resync: %s", kind, error)
                    continue
                for gone in store.prune(set(present), namespace, version):
                    log.info("%s %s/%s was deleted meanwhile", kind, gone["metadata"].get("namespace"),
                             gone["metadata"].get("name"))
                    # its pass finds it gone and forgets it (backoffs, the by-phase count, its series)
                    self.queue.add((kind, gone["metadata"].get("namespace", ""), gone["metadata"]["name"]))
            for namespace, name in store.keys():
                self.queue.add((kind, namespace, name))

    # ---- events ------------------------------------------------------------

    def observe_resource(self, kind: str, event_type: str | None, body: Obj) -> None:
        """A watch event of one of our custom resources (from kopf): cache it, wake whoever cares."""
        store = self.caches.store(kind)
        meta = body.get("metadata") or {}
        if event_type == "DELETED":
            store.remove(meta.get("namespace", ""), meta.get("name", ""))
        else:
            store.upsert(trim(body))
        self.queue.add((kind, meta.get("namespace", ""), meta.get("name", "")))
        for controller in self.controllers.values():
            for key in controller.keys_for_resource(self.ctx, kind, body):
                self.queue.add(key)

    def _child_listener(self, kind: str) -> Callable[[str, Obj | None, Obj | None], None]:
        def listen(change: str, old: Obj | None, new: Obj | None) -> None:
            for controller in self.controllers.values():
                for key in controller.keys_for_child(self.ctx, kind, change, old, new):
                    self.queue.add(key)
        return listen

    # ---- passes ------------------------------------------------------------

    def _reconcile(self, key: Key) -> float | None:
        kind, namespace, name = key
        self.ctx.writer.begin_pass()
        try:
            return self.controllers[kind].reconcile(self.ctx, namespace, name)
        except NamespaceTerminating:
            log.debug("%s %s/%s: its namespace is being deleted; nothing more to do", kind, namespace, name)
            return None
        except OwnerGone:
            log.debug("%s %s/%s was deleted; its DELETED event is on its way", kind, namespace, name)
            return None

    def _failed(self, failure: Failure) -> None:
        kind = failure.key[0]
        self.controllers[kind].failed(self.ctx, failure)
