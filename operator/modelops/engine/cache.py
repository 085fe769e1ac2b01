"""Watch-fed caches (client-go's informers in small): list, then watch from the list's resourceVersion;
re-list after the watch expires (410 Gone) and replace the store, so objects deleted meanwhile disappear too.
Passes read these stores, never the API server."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelops.engine.queue import Backoff
from modelops.kube import ApiError, Kube

log = logging.getLogger(__name__)
Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace, name)
IndexFn = Callable[[Obj], Iterable[str]]
Listener = Callable[[str, Obj | None, Obj | None], None]  # (event type, old, new)


def object_key(obj: Obj) -> ObjKey:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def by_controller_uid(obj: Obj) -> Iterable[str]:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("uid"):
            yield str(ref["uid"])


def by_label(label: str) -> IndexFn:
    """Index by (namespace, value of `label`)."""
    def index(obj: Obj) -> Iterable[str]:
        meta = obj.get("metadata") or {}
        value = (meta.get("labels") or {}).get(label)
        return [f"{meta.get('namespace', '')}/{value}"] if isinstance(value, str) else []
    return index


def trim(obj: Obj) -> Obj:
    """What a cache keeps: no managedFields and no kubectl last-applied copy (they dwarf the rest)."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and "kubectl.kubernetes.io/last-applied-configuration" in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items()
                               if k != "kubectl.kubernetes.io/last-applied-configuration"}
    return {**obj, "metadata": meta}


def trim_pod(obj: Obj) -> Obj:
    """Pods: the planners read metadata and status; of the spec only where it runs."""
    trimmed = trim(obj)
    spec = obj.get("spec") or {}
    trimmed["spec"] = {k: spec[k] for k in ("nodeName", "schedulerName", "priorityClassName") if k in spec}
    return trimmed


def _resource_version(obj: Obj | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion", ""))
    except ValueError:
        return None


class Store:
    """Objects of one kind by (namespace, name), with secondary indexes; safe across threads.

    Each object is kept as compact JSON (a quarter of the memory of Python dicts; 2000 resources and
    their children are ~15 MB instead of ~55 MB) and decoded on every read, so a pass gets its own copy
    and can never change the cache by accident."""

    def __init__(self, indexes: dict[str, IndexFn] | None = None) -> None:
        self._objects: dict[ObjKey, tuple[int | None, bytes]] = {}
        self._index_fns = dict(indexes or {})
        self._indexes: dict[str, dict[str, set[ObjKey]]] = {name: {} for name in self._index_fns}
        self._index_values: dict[ObjKey, list[tuple[str, str]]] = {}
        self._lock = threading.RLock()

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            entry = self._objects.get((namespace, name))
        return _decode(entry)

    def by_index(self, index: str, value: str) -> list[Obj]:
        with self._lock:
            entries = [self._objects[k] for k in sorted(self._indexes[index].get(value, ()))]
        return [_decode(e) for e in entries]  # type: ignore[misc]

    def items(self, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            entries = [e for (ns, _), e in self._objects.items() if namespace is None or ns == namespace]
        return [_decode(e) for e in entries]  # type: ignore[misc]

    def keys(self) -> list[ObjKey]:
        with self._lock:
            return list(self._objects)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def upsert(self, obj: Obj) -> tuple[Obj | None, bool]:
        """Store `obj` unless the stored copy is newer (our own write's answer can race its watch event).
        Returns (the previous object, whether `obj` was stored)."""
        key, version = object_key(obj), _resource_version(obj)
        encoded = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        with self._lock:
            old = self._objects.get(key)
            if old is not None and version is not None and old[0] is not None and version < old[0]:
                return _decode(old), False
            self._unindex(key)
            self._objects[key] = (version, encoded)
            self._index(key, obj)
        return _decode(old), True

    def remove(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            old = self._objects.pop((namespace, name), None)
            self._unindex((namespace, name))
        return _decode(old)

    def replace(self, objs: list[Obj], namespace: str | None) -> list[tuple[str, Obj | None, Obj | None]]:
        """Make the store (the part of it in `namespace`, or all) equal to `objs`; return what changed."""
        fresh = {object_key(o): o for o in objs}
        changes: list[tuple[str, Obj | None, Obj | None]] = []
        with self._lock:
            gone = [k for k in self._objects if (namespace is None or k[0] == namespace) and k not in fresh]
            for key in gone:
                changes.append(("DELETED", self.remove(*key), None))
            for key, obj in fresh.items():
                old = self._objects.get(key)
                if old is None or old[0] != _resource_version(obj):
                    previous, _ = self.upsert(obj)
                    changes.append(("ADDED" if old is None else "MODIFIED", previous, obj))
        return changes

    def prune(self, present: set[ObjKey], namespace: str | None, list_version: str) -> list[Obj]:
        """Remove what a list (at `list_version`) no longer has, but nothing stored from a newer event:
        the watch that feeds this store does not say what was deleted while it was away."""
        try:
            listed_at = int(list_version)
        except ValueError:
            return []
        removed = []
        with self._lock:
            for key, (version, _) in list(self._objects.items()):
                if (namespace is None or key[0] == namespace) and key not in present and \
                        (version is None or version <= listed_at):
                    removed.append(self.remove(*key))
        return [o for o in removed if o is not None]

    def _index(self, key: ObjKey, obj: Obj) -> None:
        values = [(name, value) for name, fn in self._index_fns.items() for value in fn(obj)]
        for name, value in values:
            self._indexes[name].setdefault(value, set()).add(key)
        if values:
            self._index_values[key] = values

    def _unindex(self, key: ObjKey) -> None:
        for name, value in self._index_values.pop(key, ()):
            keys = self._indexes[name].get(value)
            if keys:
                keys.discard(key)
                if not keys:
                    del self._indexes[name][value]


def _decode(entry: tuple[int | None, bytes] | None) -> Obj | None:
    return None if entry is None else json.loads(entry[1])


@dataclass
class Informer:
    """Keeps `store` equal to the API server's objects of one kind in one namespace (None: all) matching
    the selectors and `keep`, and tells `listener` about every change. An object `keep` refuses is never
    stored (nor decoded again); one that stops being kept reads as deleted, one that starts as added."""

    kube: Kube
    api_version: str
    kind: str
    namespace: str | None
    store: Store
    listener: Listener
    labels: str | None = None
    fields: str | None = None
    transform: Callable[[Obj], Obj] = trim
    keep: Callable[[Obj], bool] | None = None
    watch_seconds: int = 300
    synced: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Informer:
        where = self.namespace or "all namespaces"
        self._thread = threading.Thread(target=self._run, name=f"informer {self.kind} {where}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        backoff = Backoff(base=0.5, cap=30.0, jitter=0.2)  # list/watch failures in a row: 0.5 s doubling to 30 s
        while not self._stop.is_set():
            try:
                resume: str | None = self._list()
                backoff.forget(("list",))
                while resume is not None and not self._stop.is_set():
                    resume = self._watch(resume)  # None: expired, list again
            except ApiError as error:
                delay = backoff.next_delay(("list",))
                failures = backoff.failures(("list",))
                level = logging.WARNING if failures in (1, 5) or failures % 20 == 0 else logging.DEBUG
                log.log(level, "cache of %s in %s: %s; again in %.1fs", self.kind, self.namespace or "all namespaces",
                        error, delay)
                self._stop.wait(delay)
            except Exception:
                log.exception("cache of %s failed; restarting it", self.kind)
                self._stop.wait(5.0)

    def _list(self) -> str:
        # trimmed page by page as the list comes: the raw objects never pile up
        keep = self.keep
        transform = self.transform if keep is None else \
            (lambda obj: self.transform(obj) if keep(obj) else None)
        items, version = self.kube.list_objects(self.api_version, self.kind, self.namespace, labels=self.labels,
                                                fields=self.fields, transform=transform)
        items = [o for o in items if o is not None]
        for change, old, new in self.store.replace(items, self.namespace):
            self._tell(change, old, new)
        if not self.synced.is_set():
            log.debug("cache of %s in %s synced: %d objects", self.kind, self.namespace or "all namespaces", len(items))
        self.synced.set()
        return version

    def _watch(self, version: str) -> str | None:
        """Follow the watch until the server ends it; the version to continue from, or None to re-list."""
        for event in self.kube.watch_objects(self.api_version, self.kind, self.namespace, version,
                                             labels=self.labels, fields=self.fields,
                                             timeout_seconds=self.watch_seconds + random.randint(0, 30)):
            if self._stop.is_set():
                return version
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    return None
                raise ApiError(int(obj.get("code") or 0), obj.get("reason", ""), obj.get("message", ""))
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind == "BOOKMARK":
                continue
            obj = self.transform({"apiVersion": self.api_version, "kind": self.kind, **obj})
            if self.keep is not None and not self.keep(obj):
                kind = "DELETED"  # no longer one of ours (or never was): not kept
                if self.store.get(*object_key(obj)) is None:
                    continue
            if kind == "DELETED":
                old = self.store.remove(*object_key(obj))
                self._tell("DELETED", old or obj, None)
            else:
                old, stored = self.store.upsert(obj)
                if stored:
                    self._tell(kind or "MODIFIED", old, obj)
        return version

    def _tell(self, change: str, old: Obj | None, new: Obj | None) -> None:
        try:
            self.listener(change, old, new)
        except Exception:
            log.exception("listener of the %s cache failed", self.kind)


class Caches:
    """The informers of one operator, per kind; `synced` once every informer has listed once."""

    def __init__(self) -> None:
        self.stores: dict[str, Store] = {}
        self.informers: list[Informer] = []
        self._transforms: dict[str, Callable[[Obj], Obj]] = {}

    def add(self, informer: Informer) -> None:
        self.stores[informer.kind] = informer.store
        self._transforms[informer.kind] = informer.transform
        self.informers.append(informer)

    def remember(self, obj: Obj) -> None:
        """Store the server's answer to our own write at once: the next pass must not see the old copy
        (its watch event follows, and an older one never overwrites a newer one)."""
        store = self.stores.get(obj.get("kind", ""))
        if store is not None:
            store.upsert(self._transforms.get(obj["kind"], trim)(obj))

    def store(self, kind: str) -> Store:
        return self.stores[kind]

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for informer in self.informers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not informer.synced.wait(left):
                return False
        return True
