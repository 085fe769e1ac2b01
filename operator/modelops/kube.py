"""The one module that talks to the Kubernetes API server: creates, server-side apply, reads, list+watch
streams for the caches, deletes, status, events. Every request is counted by verb, kind and code."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from modelops.clock import rfc3339
from modelops.metrics import API_REQUESTS
from modelops.resources.conditions import Event

FIELD_MANAGER = "modelops"
COMPONENT = "modelops-operator"
USER_AGENT = "modelops-operator/0.1"
WRITE_VERBS = frozenset({"create", "apply", "patch", "delete"})
# A DNS-1123 subdomain (what object names are; namespaces are the stricter labels, which match too).
OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Objects per list page, kopf's lists of our custom resources too. A page is parsed whole, into dicts many
# times its JSON (client-go's 500 per page are Go structs). Measured on restarts at 2000 resources in 10
# namespaces: our lists peaked ~20 MB higher at 500 than at 100 or 50; kopf's ~30 MB higher at 100 than at 50.
LIST_PAGE = 50
log = logging.getLogger(__name__)
# The client's errors that callers outside this module handle themselves (the kubectl plugin: a kubeconfig it
# cannot load; ResourceNotFoundError, imported above: a kind the cluster does not serve), taken from here so
# that no other operator module imports the client (the `one-api-client` import contract).
ConfigException = config.ConfigException


class ApiError(Exception):
    """A request the API server answered with an error (or that did not reach it: status 0)."""

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None,
                 causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after
        self.causes = causes

    @property
    def namespace_terminating(self) -> bool:
        """Creation refused because the namespace is being deleted (with everything in it)."""
        return self.status == 403 and "NamespaceTerminating" in self.causes

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def refused_for_content(self) -> bool:
        """The server refused the object itself (invalid, forbidden by admission, a missing reference):
        retrying the same object cannot help, the spec that produced it must change."""
        return self.status in (400, 403, 422) or (self.status == 404 and self.reason != "NotFound")

    @classmethod
    def from_exception(cls, error: ApiException) -> ApiError:
        reason, message = error.reason or "", str(error.body or error.reason or "")
        causes: tuple[str, ...] = ()
        try:
            body = json.loads(error.body) if error.body else {}
            reason, message = body.get("reason") or reason, body.get("message") or message
            causes = tuple(str(c.get("reason", "")) for c in (body.get("details") or {}).get("causes") or [])
        except (ValueError, TypeError, AttributeError):
            pass
        retry_after = None
        headers = error.headers or {}
        if headers.get("Retry-After"):
            try:
                retry_after = float(headers["Retry-After"])
            except ValueError:
                pass
        return cls(int(error.status or 0), reason, message, retry_after=retry_after, causes=causes)


class Kube:
    """A thin, thread-safe client (the engine's workers and informers share it)."""

    def __init__(self, api_client: client.ApiClient, user_agent: str = USER_AGENT) -> None:
        api_client.user_agent = user_agent  # tells our requests apart in audit logs
        self._api = api_client
        self._dynamic = DynamicClient(api_client)
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # One list page parsed (and transformed) at a time: that holds the GIL anyway, so parsing several
        # at once would only add memory. The requests themselves go in parallel.
        self._listing = threading.Lock()

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG)."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        # Workers, model checks and every informer's open watch share one pool: a pool too small for them
        # discards connections and pays a new TLS handshake per request.
        configuration.connection_pool_maxsize = 128
        return cls(client.ApiClient(configuration))

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None, *,
                        user_agent: str = USER_AGENT) -> Kube:
        """A client for a kubeconfig context, as kubectl picks it: `path`, else $KUBECONFIG (a list of files
        merged), else ~/.kube/config; `context`, else the current one. Never the in-cluster account."""
        configuration = client.Configuration()
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
        return cls(client.ApiClient(configuration), user_agent=user_agent)

    # ---- discovery ---------------------------------------------------------

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._lock:
            key = (api_version, kind)
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(api_version=api_version, kind=kind)
            return self._resources[key]

    def has_kind(self, api_version: str, kind: str) -> bool:
        """Whether the cluster serves this kind (e.g. a ServiceMonitor only when the Prometheus Operator runs)."""
        try:
            self._resource(api_version, kind)
            return True
        except ResourceNotFoundError:
            return False

    def path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None,
             subresource: str = "") -> str:
        """The URL path of a collection or an object. Names become path segments: anything that is not an
        object name ("../other-ns/...", "a/b") is refused here, so no field can steer a request elsewhere."""
        for value, what in ((namespace, "namespace"), (name, f"{kind} name")):
            if value is not None and not (len(value) <= 253 and OBJECT_NAME.fullmatch(value)):
                raise ValueError(f"refusing {value!r} as a {what}: not a Kubernetes object name")
        resource = self._resource(api_version, kind)
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        where = f"/namespaces/{namespace}" if resource.namespaced and namespace else ""
        return f"{prefix}{where}/{resource.name}" + (f"/{name}" if name else "") + \
            (f"/{subresource}" if subresource else "")

    # ---- the one request function ---------------------------------------------

    def _call(self, verb: str, kind: str, method: str, path: str, *, query: list[tuple[str, Any]] | None = None,
              body: Any = None, content_type: str = "application/json", stream: bool = False, parse: bool = True,
              timeout: float | tuple[float, float | None] = 30.0) -> Any:
        """One request, JSON in and out; raises ApiError. A streamed response is returned unread, and without
        `parse` the response's bytes."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if body is not None and content_type.endswith("yaml"):
            # UTF-8 JSON text is valid YAML and keeps every character; the client's own encoding would
            # escape emoji as surrogate pairs, which the server's YAML decoder refuses.
            body = json.dumps(body, ensure_ascii=False).encode()
        code = "0"
        try:
            request = self._api.param_serialize(method, path, query_params=query or [], header_params=headers,
                                                body=body, auth_settings=["BearerToken"])
            response = self._api.call_api(*request, _request_timeout=timeout)
            code = str(response.status)
            if not 200 <= response.status <= 299:
                body = response.read()
                raise ApiException.from_response(http_resp=response, body=body.decode(errors="replace"), data=None)
            if stream:
                return response.response
            raw = response.read()
            if not parse:
                return raw
            return json.loads(raw) if raw else {}
        except ApiException as error:
            code = str(error.status or 0)
            raise ApiError.from_exception(error) from None
        except Exception as error:  # refused, reset, timed out: urllib3's errors (not all are OSErrors)
            if isinstance(error, OSError) or type(error).__module__.startswith("urllib3"):
                raise ApiError(0, "Unreachable", f"{method} {path}: {error}") from None
            raise
        finally:
            API_REQUESTS.labels(verb, kind, code).inc()

    # ---- reads -------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("get", kind, "GET", self.path(api_version, kind, namespace, name)))
        except ApiError as error:
            if error.not_found:
                return None
            raise

    def list_objects(self, api_version: str, kind: str, namespace: str | None, *, labels: str | None = None,
                     fields: str | None = None, transform: Callable[[dict[str, Any]], Any] | None = None,
                     page: int = LIST_PAGE) -> tuple[list[Any], str]:
        """Every matching object, through `transform`, and the list's resourceVersion (where a watch
        continues from).

        Lists in pages of `page` objects with continue tokens, as client-go's pager does, and transforms each
        page as it arrives, one page at a time across threads: only what `transform` keeps piles up (one
        response per kind, parsed whole with its managedFields, set a peak that CPython keeps for good). A
        continue token that expired (410: etcd compacted its snapshot, kept at least 5 minutes, while we
        paged) starts over with one unpaged list, client-go's fallback: a paged list slower than compaction
        would never end."""
        query = [("labelSelector", labels)] if labels else []
        query += [("fieldSelector", fields)] if fields else []
        path = self.path(api_version, kind, namespace)
        out: list[Any] = []
        token = ""
        while True:
            paging = ([("limit", page)] if page else []) + ([("continue", token)] if token else [])
            try:
                raw = self._call("list", kind, "GET", path, query=query + paging, parse=False, timeout=120)
            except ApiError as error:
                if not (token and error.gone):
                    raise
                log.info("listing %s: the continue token expired (%s); listing again, unpaged", kind, error)
                out, token, page = [], "", 0
                continue
            with self._listing:  # one page parsed at a time, not one per informer
                result = json.loads(raw) if raw else {}
                del raw
                for item in result.get("items") or []:  # list items come without apiVersion/kind
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                    out.append(transform(item) if transform else item)
                metadata = result.get("metadata") or {}
                del result  # the raw page goes before another one comes
            token = str(metadata.get("continue") or "")
            if not token:
                return out, str(metadata.get("resourceVersion", ""))

    def watch_objects(self, api_version: str, kind: str, namespace: str | None, resource_version: str, *,
                      labels: str | None = None, fields: str | None = None,
                      timeout_seconds: int = 300) -> Iterator[dict[str, Any]]:
        """Raw watch events ({type, object}) from `resource_version`, bookmarks included, until the server
        ends the stream (after about `timeout_seconds`)."""
        query: list[tuple[str, Any]] = [("watch", "true"), ("resourceVersion", resource_version),
                                        ("allowWatchBookmarks", "true"), ("timeoutSeconds", timeout_seconds)]
        query += [("labelSelector", labels)] if labels else []
        query += [("fieldSelector", fields)] if fields else []
        response = self._call("watch", kind, "GET", self.path(api_version, kind, namespace), query=query,
                              stream=True, timeout=(10, timeout_seconds + 30))
        try:
            buffer = b""
            for chunk in response.stream(amt=None, decode_content=False):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except Exception as error:
            if type(error).__module__.startswith("urllib3") or isinstance(error, OSError):
                raise ApiError(0, "Unreachable", f"watch of {kind}: {error}") from None
            raise
        finally:
            response.release_conn()

    def pod_log(self, namespace: str, name: str, *, container: str | None = None,
                follow: bool = False) -> Iterator[bytes]:
        """A container's log as raw chunks; with `follow`, until the container ends. Raises ApiError (e.g.
        a pod that has not started, or a node whose kubelet cannot be reached) at the first chunk."""
        query: list[tuple[str, Any]] = [("container", container)] if container else []
        query += [("follow", "true")] if follow else []
        response = self._call("get", "Pod", "GET", self.path("v1", "Pod", namespace, name, "log"), query=query,
                              stream=True, timeout=(10, None if follow else 60))
        try:
            yield from response.stream(amt=None, decode_content=True)
        except Exception as error:
            if type(error).__module__.startswith("urllib3") or isinstance(error, OSError):
                raise ApiError(0, "Unreachable", f"log of pod {namespace}/{name}: {error}") from None
            raise
        finally:
            response.release_conn()

    # ---- writes ------------------------------------------------------------

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST: creates, or fails with 409 AlreadyExists; never touches an existing object."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return dict(self._call("create", obj["kind"], "POST", path, body=obj,
                               query=[("fieldManager", FIELD_MANAGER)]))

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with our field manager, forcing our fields back (callers check ownership)."""
        meta = obj["metadata"]
        path = self.path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return dict(self._call("apply", obj["kind"], "PATCH", path, body=obj,
                               content_type="application/apply-patch+yaml",
                               query=[("fieldManager", FIELD_MANAGER), ("force", "true")]))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *,
               uid: str | None = None) -> bool:
        """Delete one object (only that exact object when `uid` is given); False when already gone."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("delete", kind, "DELETE", self.path(api_version, kind, namespace, name), body=body)
            return True
        except ApiError as error:
            if error.not_found:
                return False
            raise

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                     status: dict[str, Any], *, resource_version: str | None = None) -> dict[str, Any]:
        """JSON merge patch of the status subresource (None values remove fields); the patched object. With
        `resource_version` only that version is patched (409 Conflict otherwise): for a status that another
        controller writes too (a Kueue Workload's conditions are replaced whole)."""
        path = self.path(api_version, kind, namespace, name, "status")
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return dict(self._call("patch", kind, "PATCH", path, body=body, content_type="application/merge-patch+json"))

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge patch of the object itself (e.g. the scale of a child, an annotation)."""
        return dict(self._call("patch", kind, "PATCH", self.path(api_version, kind, namespace, name), body=patch,
                               content_type="application/merge-patch+json"))

    def patch_pod_condition(self, namespace: str, name: str, cond_type: str, status: bool, reason: str,
                            message: str) -> dict[str, Any] | None:
        """Set one condition of a pod (a readiness gate); strategic merge keeps the kubelet's conditions."""
        condition = {"type": cond_type, "status": "True" if status else "False", "reason": reason,
                     "message": message[:1024], "lastTransitionTime": rfc3339()}
        try:
            return dict(self._call("patch", "Pod", "PATCH", self.path("v1", "Pod", namespace, name, "status"),
                                   body={"status": {"conditions": [condition]}},
                                   content_type="application/strategic-merge-patch+json"))
        except ApiError as error:
            if error.not_found:
                return None
            raise

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
            self._call("create", "Event", "POST", self.path("v1", "Event", meta["namespace"]), body=body)
        except ApiError as error:
            if error.namespace_terminating:  # it goes with everything in it: nobody will read the Event
                log.debug("no event %s on %s/%s: its namespace is being deleted", event.reason, meta["namespace"],
                          meta["name"])
                return
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], error)


def status_patch(previous: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `previous` into `desired`: what changed, and null for each key `desired` lacks, in
    nested objects too (a merge patch merges objects: a field a report dropped, e.g. progress.checkpointError,
    would otherwise stay)."""
    patch: dict[str, Any] = {k: None for k in previous if k not in desired}
    for key, value in desired.items():
        old = previous.get(key)
        if old != value:
            patch[key] = status_patch(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return patch


def controller_owner(obj: dict[str, Any], kind: str | None = None) -> dict[str, Any] | None:
    """The controlling owner reference (of the given kind, if given), if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and (kind is None or ref.get("kind") == kind):
            return dict(ref)
    return None


def kubeconfig_namespace(path: str | None = None, context: str | None = None) -> str:
    """The namespace a kubeconfig context names (kubectl's default for -n), else "default"."""
    contexts, current = config.list_kube_config_contexts(config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")
