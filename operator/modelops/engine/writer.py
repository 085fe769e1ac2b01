"""The one writer: carries out a pass's plan against the API server, and keeps the caches in step with what
it wrote (each answer is remembered at once, so the next pass never sees the old copy). Controllers decide;
only this module writes for them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from modelops import API_VERSION
from modelops.clock import rfc3339
from modelops.engine.cache import Caches, Obj
from modelops.engine.children import ChildRejected, Children, NameConflict
from modelops.kube import ApiError, Kube, status_patch
from modelops.metrics import record_phase, record_status
from modelops.resources.conditions import Event
from modelops.resources.modelpool import ANNOTATION_LEDGER, HTTP_PORT
from modelops.resources.plan import ModelAction, ModelLoad, Plan, Refusal
from modelops.resources.pool_plan import Ledger, ledger_after
from modelops.triton.pool import TritonPoolError
from modelops.triton.pool_client import TritonPoolClient

PoolClients = Callable[[str], TritonPoolClient]
"""A Triton client for one pool server's base URL (tests inject an in-memory server)."""

log = logging.getLogger(__name__)


class Writer:
    def __init__(self, kube: Kube, caches: Caches, pool_client: PoolClients = TritonPoolClient) -> None:
        self.kube, self.caches = kube, caches
        self.children = Children(kube, caches)
        self.pool_client = pool_client

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
        if refusal is None:
            for action in plan.model_actions:
                self._run_model_action(owner, action)
        for notice in plan.notices:
            self.post_event(notice.involved, notice.event)
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

    def _run_model_action(self, pool: Obj, action: ModelAction) -> None:
        """One load or unload on a pool server, its result recorded in the server pod's ledger at once (the
        measured size and the counts outlive this process). Triton refusing a load is recorded (the planner
        then places that version elsewhere), never raised; the API failing to record it is raised."""
        namespace = pool["metadata"]["namespace"]
        pod = self.caches.store("Pod").get(namespace, action.server)
        address = ((pod or {}).get("status") or {}).get("podIP")
        if pod is None or not address:
            log.info("pool server %s/%s has no address yet: %s waits", namespace, action.server, action)
            return
        client = self.pool_client(f"http://{address}:{HTTP_PORT}")
        measured: int | None = None
        error: str | None = None
        try:
            measured = client.load(action.model) if isinstance(action, ModelLoad) else client.unload(action.name)
        except TritonPoolError as failure:
            error = str(failure)
            what = f"{action.model.name}:{action.model.version}" if isinstance(action, ModelLoad) else action.name
            verb = "load" if isinstance(action, ModelLoad) else "unload"
            self.post_event(pool, Event("Warning", f"{verb.capitalize()}Failed",
                                        f"{verb} of {what} on {action.server} failed: {error}"))
        annotations = pod["metadata"].get("annotations") or {}
        ledger = ledger_after(Ledger.parse(annotations.get(ANNOTATION_LEDGER)), action, measured, error)
        self.caches.remember(self.kube.patch("v1", "Pod", namespace, action.server,
                                             {"metadata": {"annotations": {ANNOTATION_LEDGER: ledger.wire()}}}))

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
