"""Who owns a child and how a child says so: the one definition of owner references and child metadata.

Every child carries our managed-by label (the operator's caches list and watch only objects with it) and a
controller owner reference to its resource (garbage collection, and how a pass recognises its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from typing_extensions import Self

from modelops import API_VERSION

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelops"
MANAGED_BY_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
"""The label selector of the caches: a child without this label is invisible to the operator."""


@dataclass(frozen=True)
class OwnerMeta:
    """The identity of one of our resources, as its children point back at it."""

    kind: ClassVar[str]
    name: str
    namespace: str
    uid: str
    generation: int | None = None
    created: str | None = None
    """The resource's creationTimestamp: nothing it records can have happened earlier."""

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Self:
        meta = obj["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"],
                   generation=meta.get("generation"), created=meta.get("creationTimestamp"))

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def child_metadata(self, name: str, labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """A child's metadata: in the owner's namespace, controlled by the owner, carrying the managed-by
        label (set last: no caller's label can remove it)."""
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace,
                                "labels": {**(labels or {}), MANAGED_BY_LABEL: MANAGED_BY},
                                "ownerReferences": [self.owner_reference()]}
        if annotations:
            meta["annotations"] = annotations
        return meta
