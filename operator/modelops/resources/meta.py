"""Who owns a child and how a child says so: the one definition of owner references, child metadata and
what makes an object one of ours.

Every child carries three marks: a controller owner reference to its resource (garbage collection, and how a
pass recognises its own), our managed-by label (what `kubectl get -l` and the label-selected caches find) and
an annotation naming its owner with the owner's UID (the claim). A label is a hint anyone can overwrite; the
owner reference and the claim are identity: an object that lost its owner reference but still claims a live
resource's UID is that resource's orphan (adopted back), one claiming an owner that is gone is ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from typing_extensions import Self

from modelops import API_VERSION

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelops"
MANAGED_BY_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
"""The label selector of the caches that select by label: a child there without it is invisible to them."""
ANNOTATION_OWNER = "modelops.dev/owner"
"""The claim: '<kind>/<name>/<uid>' of the resource a child belongs to (outlives a removed owner reference)."""
API_GROUP = API_VERSION.split("/")[0]


@dataclass(frozen=True)
class Claim:
    """The owner a child names in its claim annotation."""

    kind: str
    name: str
    uid: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Claim | None:
        """The child's claim, or None when it has none or it was edited into something else."""
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_OWNER)
        parts = text.split("/") if isinstance(text, str) else []
        return cls(*parts) if len(parts) == 3 and all(parts) else None

    def key(self, namespace: str) -> str:
        return f"{namespace}/{self.kind}/{self.name}"


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in (obj.get("metadata") or {}).get("ownerReferences") or [] if r.get("controller")), None)


def is_ours(obj: dict[str, Any]) -> bool:
    """Whether an object is one the caches keep: controlled by one of our resources, claiming one, or
    labelled managed by us (an unowned object with only the label is ours to end, never to adopt)."""
    owner = controller_of(obj) or {}
    meta = obj.get("metadata") or {}
    return str(owner.get("apiVersion", "")).split("/")[0] == API_GROUP or Claim.of(obj) is not None \
        or (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


def unowned(obj: dict[str, Any]) -> bool:
    """Ours (see is_ours) but controlled by nothing: an orphan, adopted back or ended, never left alone."""
    return controller_of(obj) is None and is_ours(obj)


def orphan_of(obj: dict[str, Any], owner_uid: str) -> bool:
    """Controlled by nothing and claiming exactly this owner: adoptable by it (controller-runtime's rule:
    never an object another controller owns)."""
    claim = Claim.of(obj)
    return controller_of(obj) is None and claim is not None and claim.uid == owner_uid


def by_claim(obj: dict[str, Any]) -> list[str]:
    """Cache index of unowned objects by the owner they claim ('<namespace>/<kind>/<name>')."""
    claim = Claim.of(obj)
    return [claim.key((obj.get("metadata") or {}).get("namespace", ""))] if claim and controller_of(obj) is None else []


def by_unowned(obj: dict[str, Any]) -> list[str]:
    """Cache index of the unowned objects of ours, by namespace."""
    return [(obj.get("metadata") or {}).get("namespace", "")] if unowned(obj) else []


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

    def claim(self) -> str:
        return f"{self.kind}/{self.name}/{self.uid}"

    def child_metadata(self, name: str, labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """A child's metadata: in the owner's namespace, controlled by the owner, carrying the managed-by
        label and the claim (set last: no caller's label or annotation can replace them)."""
        return {"name": name, "namespace": self.namespace,
                "labels": {**(labels or {}), MANAGED_BY_LABEL: MANAGED_BY},
                "annotations": {**(annotations or {}), ANNOTATION_OWNER: self.claim()},
                "ownerReferences": [self.owner_reference()]}

    def adoption(self, orphan: dict[str, Any]) -> dict[str, Any]:
        """The merge patch that adopts `orphan` back: our owner reference (other owners' references kept) and
        our marks put back; only that version of it (another writer meanwhile: the pass is retried)."""
        meta = orphan.get("metadata") or {}
        others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != self.uid]
        return {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                             "ownerReferences": [*others, self.owner_reference()],
                             "labels": {MANAGED_BY_LABEL: MANAGED_BY},
                             "annotations": {ANNOTATION_OWNER: self.claim()}}}
