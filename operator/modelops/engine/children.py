"""Writes a resource's children only when they differ from the cached ones, and only when they are its own.

A missing child is created with POST, which never touches an existing object: a same-named object that
is not ours surfaces as 409 and is refused (NameConflict), never taken over. An existing child of ours is
server-side-applied (forcing our fields back after a hand edit) only when a field we set differs."""

from __future__ import annotations

import threading
from typing import Any

from modelops.engine.cache import Caches, Obj
from modelops.kube import ApiError, Kube, controller_owner
from modelops.metrics import CHILD_WRITES
from modelops.resources.meta import controller_of, orphan_of
from modelops.quantities import quantity


class NameConflict(Exception):
    """An object with the child's name exists and belongs to someone else."""


class ChildRejected(Exception):
    """The API server refused the child itself (invalid, or forbidden by admission): the spec must change."""

    def __init__(self, obj: Obj, error: ApiError) -> None:
        meta = obj.get("metadata") or {}
        super().__init__(f"the API server refused {obj.get('kind')} {meta.get('name')}: {error.message}")
        self.error = error


def describe(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    owner = controller_owner(obj)
    whose = f"controlled by {owner.get('kind')} {owner.get('name')}" if owner else "not controlled by anything"
    return f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')} already exists and is {whose}"


def owned_by(obj: Obj, owner_uid: str) -> bool:
    return (controller_owner(obj) or {}).get("uid") == owner_uid


class Children:
    """Create, converge and delete children of one owner at a time, against the caches."""

    def __init__(self, kube: Kube, caches: Caches) -> None:
        self.kube, self.caches = kube, caches
        self._pass = threading.local()  # per worker thread: owner uids the API server showed alive in this pass

    def begin_pass(self) -> None:
        """A reconcile pass starts on this thread: owners confirmed by an earlier pass must be confirmed again."""
        self._pass.confirmed = set()

    def _check_owner(self, desired: Obj) -> None:
        """Raise OwnerGone unless the owner exists on the API server (once per pass, on its first creation).

        Creating is the one write that can outlive the owner: when an owner is deleted, the garbage collector
        removes its children at once, while the owner's own DELETED event may still be on its way; a pass
        run from the stale cache would create the children again (and, for pods, take GPUs from others).
        A confirmation is not carried over to the next pass, however recent: that pass may be the stale one."""
        owner = controller_owner(desired)
        if not owner:
            return
        uid = owner.get("uid", "")
        confirmed: set[str] | None = getattr(self._pass, "confirmed", None)
        if confirmed is not None and uid in confirmed:
            return
        live = self.kube.get(owner["apiVersion"], owner["kind"], desired["metadata"].get("namespace"),
                             owner["name"])
        if live is None or live["metadata"].get("uid") != uid or live["metadata"].get("deletionTimestamp"):
            raise OwnerGone(f"{owner['kind']} {owner['name']} is gone or going")
        if confirmed is not None:
            confirmed.add(uid)

    def ensure(self, owner_uid: str, desired: Obj, *, create_only: bool = False) -> str:
        """'created', 'updated' or 'unchanged'; raises NameConflict, ChildRejected or ApiError."""
        kind, meta = desired["kind"], desired["metadata"]
        observed = self.caches.store(kind).get(meta.get("namespace", ""), meta["name"])
        if observed is None:
            self._check_owner(desired)
            try:
                self.caches.remember(self.kube.create(desired))
                CHILD_WRITES.labels(kind, "create").inc()
                return "created"
            except ApiError as error:
                if not error.already_exists:
                    raise _classify(desired, error) from None
            # Not in the cache but there: not ours (no mark of ours), or the cache lags a moment.
            observed = self.kube.get(desired["apiVersion"], kind, meta.get("namespace"), meta["name"])
            if observed is None:
                raise ApiError(409, "Conflict", f"{kind} {meta['name']} existed a moment ago; retrying")
        if not owned_by(observed, owner_uid) and not orphan_of(observed, owner_uid):
            raise NameConflict(describe(observed))  # an orphan of ours is adopted back by the plan's patch
        if create_only or differences(desired, observed) is None:
            return "unchanged"
        try:
            self.caches.remember(self.kube.apply(desired))
        except ApiError as error:
            raise _classify(desired, error) from None
        CHILD_WRITES.labels(kind, "update").inc()
        return "updated"

    def delete(self, owner_uid: str, api_version: str, kind: str, namespace: str, name: str, *,
               orphan: bool = False) -> bool:
        """Delete the child if it is there and ours (that exact object; with `orphan`, one the plan found ours
        that no controller owns: never one another controller owns); False otherwise."""
        observed = self.caches.store(kind).get(namespace, name)
        if observed is None or observed["metadata"].get("deletionTimestamp") or \
                not (owned_by(observed, owner_uid) or (orphan and controller_of(observed) is None)):
            return False
        deleted = self.kube.delete(api_version, kind, namespace, name, uid=observed["metadata"].get("uid"))
        if deleted:
            CHILD_WRITES.labels(kind, "delete").inc()
        return deleted


class OwnerGone(Exception):
    """The owner was deleted (its cached copy is stale): its children must not be created again."""


class NamespaceTerminating(Exception):
    """The owner's namespace is being deleted: nothing can be created there, and the owner goes too."""


def _classify(obj: Obj, error: ApiError) -> Exception:
    """The spec's fault (refuse with a condition), a namespace on its way out (stop quietly) or the
    weather (retry with backoff)."""
    if error.namespace_terminating:
        return NamespaceTerminating(str(error))
    return ChildRejected(obj, error) if error.refused_for_content else error


# ---- comparing desired with observed ------------------------------------------------------------------


def differences(desired: Any, observed: Any, path: str = "") -> str | None:
    """The first field path where `observed` does not carry what `desired` sets, or None.

    Fields the server adds (defaults, status, other managers' fields) are ignored; an empty value we set
    matches an absent one (the server drops empty lists and maps); quantities compare by value ("0.5" is
    "500m")."""
    if isinstance(desired, dict):
        if not isinstance(observed, dict):
            return path or "."
        for key, value in desired.items():
            found = differences(value, observed.get(key), f"{path}.{key}")
            if found and not (_empty(value) and _empty(observed.get(key))):
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return path
        for i, (want, got) in enumerate(zip(desired, observed)):
            found = differences(want, got, f"{path}[{i}]")
            if found:
                return found
        return None
    if desired == observed or (_empty(desired) and _empty(observed)):
        return None
    if isinstance(desired, (str, int, float)) and isinstance(observed, (str, int, float)):
        a, b = quantity(desired), quantity(observed)
        if a is not None and a == b and not isinstance(desired, bool):
            return None
    return path or "."


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value == ""
