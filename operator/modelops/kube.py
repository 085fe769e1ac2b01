"""The one module that talks to the Kubernetes API server: server-side apply, reads, deletes, status, events."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

from modelops.resources.conditions import Event
from modelops.clock import rfc3339

FIELD_MANAGER = "modelops"
COMPONENT = "modelops-operator"
log = logging.getLogger(__name__)


class Kube:
    """A thin, thread-safe wrapper over the dynamic client (handlers run in kopf's thread pool)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._api = api_client
        self._dynamic = DynamicClient(api_client)
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._missing: dict[tuple[str, str], float] = {}

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG)."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._lock:
            key = (api_version, kind)
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. a ServiceMonitor only when the Prometheus Operator runs).
        A miss is remembered for a minute: discovery is expensive and CRDs rarely appear."""
        missing_since = self._missing.get((api_version, kind))
        if missing_since is not None and time.monotonic() - missing_since < 60:
            return False
        try:
            self._resource(api_version, kind)
            return True
        except ResourceNotFoundError:
            self._missing[(api_version, kind)] = time.monotonic()
            return False

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with our field manager: creates or converges, never duplicates."""
        meta = obj["metadata"]
        result = self._resource(obj["apiVersion"], obj["kind"]).server_side_apply(
            body=obj, name=meta["name"], namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER, force_conflicts=True)
        return dict(result.to_dict())

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._resource(api_version, kind).get(name=name, namespace=namespace).to_dict())
        except NotFoundError:
            return None

    def list(self, api_version: str, kind: str, namespace: str, *, labels: str | None = None) -> list[dict[str, Any]]:
        result = self._resource(api_version, kind).get(namespace=namespace, label_selector=labels)
        return [dict(item) for item in result.to_dict()["items"]]

    def delete(self, api_version: str, kind: str, namespace: str, name: str, *, uid: str | None = None) -> bool:
        """Delete one object (only that exact object when `uid` is given); False when already gone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace, body=body)
            return True
        except NotFoundError:
            return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """JSON merge patch of the status subresource (None values remove fields)."""
        self._resource(api_version, kind).status.patch(
            body={"status": status}, name=name, namespace=namespace, content_type="application/merge-patch+json")

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """JSON merge patch of the object itself (e.g. the scale of a child)."""
        self._resource(api_version, kind).patch(
            body=patch, name=name, namespace=namespace, content_type="application/merge-patch+json")

    def patch_pod_condition(self, namespace: str, name: str, cond_type: str, status: bool, reason: str,
                            message: str) -> None:
        """Set one condition of a pod (a readiness gate); strategic merge keeps the kubelet's conditions."""
        now = rfc3339()
        condition = {"type": cond_type, "status": "True" if status else "False", "reason": reason,
                     "message": message[:1024], "lastTransitionTime": now}
        try:
            self._resource("v1", "Pod").status.patch(
                body={"status": {"conditions": [condition]}}, name=name, namespace=namespace,
                content_type="application/strategic-merge-patch+json")
        except NotFoundError:
            pass

    def post_event(self, involved: dict[str, Any], event: Event) -> None:
        """Record an Event on `involved` (a full object); failures are logged, never raised."""
        meta = involved["metadata"]
        now = rfc3339()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._resource("v1", "Event").create(body=body, namespace=meta["namespace"])
        except ApiException as error:
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"],
                        error.reason)


def status_patch(previous: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `previous` into `desired` at the top level (absent keys become null)."""
    patch: dict[str, Any] = {k: None for k in previous if k not in desired}
    patch.update({k: v for k, v in desired.items() if previous.get(k) != v})
    return patch


def controller_owner(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The controlling owner reference of the given kind, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return dict(ref)
    return None
