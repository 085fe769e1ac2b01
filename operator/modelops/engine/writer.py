"""The one writer: carries out a pass's plan against the API server, and keeps the caches in step with what
it wrote (each answer is remembered at once, so the next pass never sees the old copy). Controllers decide;
only this module writes for them."""

from __future__ import annotations

import logging

from modelops import API_VERSION
from modelops.clock import rfc3339
from modelops.engine.cache import Caches, Obj
from modelops.engine.children import ChildRejected, Children, NameConflict
from modelops.kube import ApiError, Kube, status_patch
from modelops.metrics import record_phase, record_status
from modelops.resources.conditions import Event
from modelops.resources.plan import Plan, Refusal

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, kube: Kube, caches: Caches) -> None:
        self.kube, self.caches = kube, caches
        self.children = Children(kube, caches)

    def begin_pass(self) -> None:
        self.children.begin_pass()

    def apply_plan(self, owner: Obj, plan: Plan) -> Refusal | None:
        """Write what the plan says about `owner` (a cached resource); the refusal met, if any. API errors
        raise (the work queue retries the pass with backoff)."""
        meta = owner["metadata"]
        namespace, uid = meta["namespace"], meta["uid"]
        for warning in plan.warnings:
            log.warning("%s %s/%s: %s", owner["kind"], namespace, meta["name"], warning)
        refusal = self._converge(uid, plan)
        for patch in plan.patch:
            if refusal is None or patch.even_if_refused:
                self.caches.remember(
                    self.kube.patch_status(patch.api_version, patch.kind, namespace, patch.name, patch.patch,
                                           resource_version=patch.resource_version) if patch.status else
                    self.kube.patch(patch.api_version, patch.kind, namespace, patch.name, patch.patch))
        for delete in plan.delete:
            if refusal is None or delete.even_if_refused:
                self.children.delete(uid, delete.api_version, delete.kind, namespace, delete.name,
                                     orphan=delete.orphan)
        previous = owner.get("status") or {}
        status = plan.final_status(refusal, previous, now=rfc3339(), generation=meta.get("generation"))
        self.write_status(owner, status)
        for event in plan.final_events(refusal, previous):
            self.post_event(owner, event)
        if plan.own_patch:
            self.kube.patch(API_VERSION, owner["kind"], namespace, meta["name"], plan.own_patch)
        if plan.delete_self:
            log.info("deleting %s %s/%s", owner["kind"], namespace, meta["name"])
            self.kube.delete(API_VERSION, owner["kind"], namespace, meta["name"], uid=uid)
        record_phase(owner["kind"], namespace, meta["name"], None if plan.delete_self else status.get("phase"))
        return refusal

    def end_orphans(self, namespace: str, plan: Plan) -> None:
        """The plan of a resource that is gone: only its orphans' deletions."""
        for delete in plan.delete:
            if delete.orphan and self.children.delete("", delete.api_version, delete.kind, namespace, delete.name,
                                                      orphan=True):
                log.info("ended %s %s/%s: the resource it claims is gone", delete.kind, namespace, delete.name)

    def _converge(self, owner_uid: str, plan: Plan) -> Refusal | None:
        """Converge each child in order; the first one that cannot be written stops the rest."""
        for obj in plan.apply:
            try:
                self.children.ensure(owner_uid, obj, create_only=obj["kind"] in plan.create_only)
            except NameConflict as conflict:
                return Refusal("NameConflict", f"{conflict}: not modified. Rename this resource or remove that object")
            except ChildRejected as rejected:
                return Refusal("ChildRejected", str(rejected))
        return None

    def write_status(self, obj: Obj, status: Obj) -> bool:
        """Patch the status subresource with what changed (nothing when nothing did); True if written. The
        per-resource metrics mirror the status as published (unchanged: one cheap comparison)."""
        patch = status_patch(obj.get("status") or {}, status)
        meta = obj["metadata"]
        if patch:
            try:
                written = self.kube.patch_status(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"],
                                                 patch)
            except ApiError as error:
                if error.not_found:  # deleted meanwhile: its DELETED event will follow
                    return False
                raise
            self.caches.remember(written)
        record_status(obj["kind"], meta["namespace"], meta["name"], status)
        return bool(patch)

    def post_event(self, obj: Obj, event: Event) -> None:
        self.kube.post_event(obj, event)

    def set_pod_condition(self, namespace: str, name: str, cond_type: str, status: bool, reason: str,
                          message: str) -> None:
        """The model check's one write: a pod's readiness-gate condition."""
        written = self.kube.patch_pod_condition(namespace, name, cond_type, status, reason, message)
        if written:
            self.caches.remember(written)
