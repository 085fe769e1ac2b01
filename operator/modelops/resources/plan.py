"""The shape of every pass's plan: what one reconcile pass will write, decided whole by a pure planner.

A plan is data. The engine's writer (engine/writer.py) is the only code that carries it out, in the order
the fields are listed: children applied, patched and deleted, then a pool's model loads and unloads, the
status, the Events, the resource's own metadata, and the resource itself. A child that cannot be written (another owner's object, content the
API server refuses) is a refusal: the status says so (Stalled) and the pass's other child writes are held
back, except those marked `even_if_refused` (bookkeeping that must not wait, e.g. handing Kueue quota back)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modelops.resources.conditions import Cond, Event, merge_conditions, set_conditions
from modelops.triton.pool import ModelToLoad
from modelops.resources.meta import Claim, OwnerMeta, controller_of, orphan_of

Obj = dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why a child could not be written in a way retrying cannot fix (the spec or that object must change)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Patch:
    """A JSON merge patch of one child, or with `status` of its status (the patch is then the status's
    fields); with `resource_version` only that version is patched (for objects another controller writes)."""

    api_version: str
    kind: str
    name: str
    patch: Obj
    status: bool = False
    resource_version: str | None = None
    even_if_refused: bool = False


@dataclass(frozen=True)
class Delete:
    """One child to delete (only while it is ours; with `orphan`, also while it is an unowned object of ours)."""

    api_version: str
    kind: str
    name: str
    even_if_refused: bool = False
    orphan: bool = False


@dataclass(frozen=True)
class ModelLoad:
    """Load one model version into one pool server (its pod's name) through Triton's repository API."""

    server: str
    model: ModelToLoad


@dataclass(frozen=True)
class ModelUnload:
    """Unload one model from one pool server; `expected_bytes` (its measured size) tells whether the memory
    came back; `eviction` counts it as an eviction (room made for another model)."""

    server: str
    name: str
    version: int
    expected_bytes: int | None = None
    eviction: bool = False


ModelAction = ModelLoad | ModelUnload


@dataclass(frozen=True)
class Notice:
    """An Event on another resource than the pass's own (a ModelService its pool could not place)."""

    involved: Obj
    event: Event


@dataclass
class Plan:
    apply: list[Obj] = field(default_factory=list)
    """Children to converge: created when missing, server-side applied when a field we set differs."""
    create_only: frozenset[str] = frozenset()
    """Kinds created once and never updated (a worker pod, a Kueue Workload)."""
    patch: list[Patch] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    status: Obj = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    own_patch: Obj | None = None
    """A merge patch of the resource's own metadata (e.g. removing an annotation the pass acted on)."""
    delete_self: bool = False
    """The resource itself is deleted (ttlSecondsAfterFinished)."""
    keep_on_refusal: Obj = field(default_factory=dict)
    """Status fields that stay as they were when a child is refused (None: absent)."""
    requeue_after: float | None = None
    memory: Any = None
    """What the next pass of this key must remember (a scaling window); the engine holds it, None keeps it."""
    recheck: list[str] = field(default_factory=list)
    """Pods (names) whose model check runs again once this plan is written."""
    warnings: list[str] = field(default_factory=list)
    """What the world said that made no sense (ignored); logged."""
    model_actions: list[ModelAction] = field(default_factory=list)
    """Loads and unloads on pool servers, at most one per server (the planner serializes them), carried out
    after the children and before the status; each result is recorded on the server's pod."""
    notices: list[Notice] = field(default_factory=list)

    def final_status(self, refusal: Refusal | None, previous: Obj, *, now: str, generation: int | None) -> Obj:
        """The status to write: the plan's, or, after a refusal, the plan's with the refusal stated."""
        if refusal is None:
            return self.status
        status = with_refusal(self.status, refusal, previous.get("conditions", []), now=now, generation=generation)
        for key, value in self.keep_on_refusal.items():
            status.pop(key, None)
            if value is not None:
                status[key] = value
        return status

    def final_events(self, refusal: Refusal | None, previous: Obj) -> list[Event]:
        return self.events + refusal_events(previous, refusal)


def with_refusal(status: Obj, refusal: Refusal, stored: list[dict[str, Any]], *, now: str,
                 generation: int | None) -> Obj:
    """`status` with a refusal stated: Ready=False, Stalled=True and Reconciling=False (kstatus, Flux's reader,
    takes whichever of the two is True first). Transition times come from the `stored` conditions, so a
    refusal that persists writes nothing new."""
    stated = merge_conditions(stored, _refusal_conditions(refusal), now=now, generation=generation)
    return {**status, "conditions": set_conditions(status.get("conditions", []), stated)}


def _refusal_conditions(refusal: Refusal) -> list[Cond]:
    return [Cond(kind, value, refusal.reason, refusal.message)
            for kind, value in (("Ready", False), ("Reconciling", False), ("Stalled", True))]


def refusal_events(previous: Obj, refusal: Refusal | None) -> list[Event]:
    """A Warning for a refusal the previous status did not already state (one Event per distinct message)."""
    if refusal is None or any(c.get("type") == "Stalled" and (c.get("reason"), c.get("message")) ==
                              (refusal.reason, refusal.message) for c in previous.get("conditions", [])):
        return []
    return [Event("Warning", refusal.reason, refusal.message)]


def refusal_plan(previous: Obj, refusal: Refusal, *, now: str, generation: int | None) -> Plan:
    """The whole plan for a resource the operator cannot act on (an invalid spec): say why, touch nothing."""
    conditions = merge_conditions(previous.get("conditions", []), _refusal_conditions(refusal), now=now,
                                  generation=generation)  # only these: the other conditions no longer hold
    return Plan(status={**previous, "observedGeneration": generation, "conditions": conditions},
                events=refusal_events(previous, refusal))


def failure_plan(previous: Obj, message: str, cause: str, *, now: str, generation: int | None) -> Plan | None:
    """After repeated failed passes: Ready=False ReconcileError on the resource, said once per distinct cause."""
    old: dict[str, Any] = next((c for c in previous.get("conditions", []) if c.get("type") == "Ready"), {})
    if old.get("reason") == "ReconcileError" and cause in old.get("message", ""):
        return None  # already said; do not rewrite it on every retry
    stated = merge_conditions(previous.get("conditions", []), [Cond("Ready", False, "ReconcileError", message)],
                              now=now, generation=generation)
    return Plan(status={**previous, "conditions": set_conditions(previous.get("conditions", []), stated)},
                events=[Event("Warning", "ReconcileError", message)])


def with_orphans(plan: Plan, owner: OwnerMeta, claimants: list[Obj]) -> Plan:
    """`plan` plus what becomes of the unowned objects claiming this owner's name: those claiming its UID are
    adopted back (owner reference, managed-by label and claim put back; by the plan's own apply where it
    applies that object), those claiming an earlier resource of the same name are ended. Neither waits for
    a refusal: nothing of ours is left running unowned."""
    applied = {(o["kind"], o["metadata"]["name"]) for o in plan.apply if o["kind"] not in plan.create_only}
    adopt, end = [], []
    for orphan in claimants:
        meta = orphan["metadata"]
        if controller_of(orphan) is not None:
            continue  # owned meanwhile
        if not orphan_of(orphan, owner.uid):
            end.append(Delete(orphan["apiVersion"], orphan["kind"], meta["name"], even_if_refused=True, orphan=True))
        elif (orphan["kind"], meta["name"]) not in applied:
            adopt.append(Patch(orphan["apiVersion"], orphan["kind"], meta["name"], owner.adoption(orphan),
                               even_if_refused=True))
    return replace(plan, patch=[*plan.patch, *adopt], delete=[*plan.delete, *end])


def orphans_plan(claimants: list[Obj], live_uid: str | None) -> Plan:
    """The plan for a name whose resource is gone (or is a newer one, `live_uid`): every unowned object that
    claims an owner by that name and is not the live one's is ended."""
    return Plan(delete=[Delete(o["apiVersion"], o["kind"], o["metadata"]["name"], orphan=True) for o in claimants
                        if controller_of(o) is None and (Claim.of(o) or Claim("", "", "")).uid != live_uid])
