"""ProcessKubelet: runs the pods kwok made Running as local processes and reports exits and readiness back."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from .network import HostNetwork, PodNetwork, TcpRelay
from .pod import NETNS_PREFIX, Container, MountPoints, PodRuntime
from .spec import SetupError, dns_records, hosts_file

log = logging.getLogger(__name__)

EXIT_CODE = "e2e.modelops.dev/exit-code"
TERMINATION_MESSAGE = "e2e.modelops.dev/termination-message"
READY = "e2e.modelops.dev/ready"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SHIM_DIR = Path(__file__).resolve().parents[1] / "bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RETRY_SETUP_S = 3.0


class KubeApi:
    """The kubelet's API reads and writes (plain dicts, camelCase as on the wire)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.discovery = client.DiscoveryV1Api(self.client)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data)  # type: ignore[no-any-return]

    def read(self, call: Any, *args: Any) -> dict[str, Any] | None:
        try:
            return self._json(call(*args, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read(self.core.read_namespaced_config_map, name, namespace)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.read(self.core.read_namespaced_secret, name, namespace)

    def service_account_token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str:
        """A TokenRequest for the pod's ServiceAccount, bound to the pod (valid while the pod exists)."""
        meta = pod["metadata"]
        body = {"spec": {"audiences": [audience] if audience else [], "expirationSeconds": expiration,
                         "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}}}
        account = pod["spec"].get("serviceAccountName") or "default"
        try:
            response = self.core.create_namespaced_service_account_token(account, meta["namespace"], body,
                                                                         _preload_content=False)
        except ApiException as error:
            raise SetupError("FailedMount", f"token for ServiceAccount {account!r}: {error.reason}") from error
        return str(self._json(response)["status"]["token"])

    def claim_host_path(self, namespace: str, claim: str) -> str | None:
        pvc = self.read(self.core.read_namespaced_persistent_volume_claim, claim, namespace)
        volume = pvc and pvc["spec"].get("volumeName")
        pv = self.read(self.core.read_persistent_volume, volume) if volume else None
        source = pv and (pv["spec"].get("hostPath") or pv["spec"].get("local"))
        return source["path"] if source else None

    def items(self, call: Any, *args: Any) -> list[dict[str, Any]]:
        return list(self._json(call(*args, _preload_content=False))["items"])

    def annotate(self, pod: dict[str, Any], annotations: dict[str, str]) -> None:
        meta = pod["metadata"]
        self.core.patch_namespaced_pod(meta["name"], meta["namespace"], {"metadata": {"annotations": annotations}})

    def event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta, now = pod["metadata"], datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "source": {"component": "e2e-kubelet", "host": pod["spec"].get("nodeName", "")},
            "firstTimestamp": now, "lastTimestamp": now})


class ProcessKubelet:
    """Stands in for the kubelet's container runtime on every kwok node at once (the host plays all of them).

    start() sets up the host side of the pod network and a relay that makes the `kubernetes` Service reach
    the API server; then each Running pod on a kwok node (in `namespaces`, or all) runs as local processes
    with its own command, env, volumes, pod IP and /etc/hosts. Exits and probe results go back to the pod as
    annotations the kwok stages turn into status. stop() ends every pod and undoes the host changes.
    One per machine: pod IPs, the gateway and iptables rules are the host's.
    """

    def __init__(self, kubeconfig: str | Path, work_dir: str | Path, *, namespaces: tuple[str, ...] = (),
                 gateway_ip: str = "10.0.0.1", resync_s: float = 2.0) -> None:
        self.kubeconfig, self.work_dir = Path(kubeconfig), Path(work_dir)
        self.namespaces, self.resync_s = tuple(namespaces), resync_s
        self.host = HostNetwork(gateway_ip)
        self.mount_points = MountPoints()
        self.pods: dict[str, PodRuntime] = {}
        self.failures: dict[str, tuple[str, float]] = {}  # uid -> (last message, next try)
        self.api: KubeApi | None = None
        self.relay: TcpRelay | None = None
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._threads: list[threading.Thread] = []
        self._teardowns: list[threading.Thread] = []
        self._lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------

    def start(self) -> ProcessKubelet:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.api = KubeApi(self.kubeconfig)
        PodNetwork.remove_leftovers(NETNS_PREFIX)
        self.host.up()
        try:
            server = urllib.parse.urlsplit(self.api.client.configuration.host)
            self.relay = TcpRelay(self.host.gateway_ip, (server.hostname or "127.0.0.1", server.port or 443)).start()
            self._publish_apiserver_endpoints()
            watched = [(self.api.core.list_namespaced_pod, (ns,)) for ns in self.namespaces] or \
                [(self.api.core.list_pod_for_all_namespaces, ())]
            watched += [(self.api.core.list_service_for_all_namespaces, ()),
                        (self.api.discovery.list_endpoint_slice_for_all_namespaces, ())]
            self._threads = [threading.Thread(target=self._watch, args=w, daemon=True, name="watch") for w in watched]
            self._threads.append(threading.Thread(target=self._loop, daemon=True, name="kubelet-sync"))
            for thread in self._threads:
                thread.start()
        except BaseException:
            self.stop()
            raise
        log.info("kubelet stand-in started: gateway %s, apiserver relay %s:%d, work dir %s",
                 self.host.gateway_ip, *self.relay.address, self.work_dir)
        return self

    def stop(self) -> None:
        """End every pod's processes (SIGTERM, SIGKILL after its grace period), remove their network
        namespaces, the relay, the `kubernetes` endpoints it published and the host network changes."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        with self._lock:
            for runtime in list(self.pods.values()):
                self._teardown(runtime)
        for thread in self._teardowns:
            thread.join()
        if self.relay is not None:
            self._unpublish_apiserver_endpoints()
            self.relay.stop()
            self.relay = None
        self.host.down()
        self.mount_points.remove()

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output so far (the first container by default); '' when it never ran here."""
        for directory in sorted((self.work_dir / "pods").glob(f"{namespace}_{pod}_*")):
            files = [directory / f"{container}.log"] if container else sorted(directory.glob("*.log"))[:1]
            return "".join(f.read_text(errors="replace") for f in files if f.exists())
        return ""

    # ---- the sync loop -------------------------------------------------------

    def _watch(self, list_call: Any, args: tuple[str, ...]) -> None:
        """Wake the sync loop on any change; server-side timeouts let the thread notice stop()."""
        while not self._stopping.is_set():
            try:
                for _ in watch.Watch().stream(list_call, *args, timeout_seconds=2):
                    self._wake.set()
                    if self._stopping.is_set():
                        return
            except Exception as error:  # reconnect, as informers do
                log.debug("watch %s: %s", getattr(list_call, "__name__", list_call), error)
                self._stopping.wait(1)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.resync_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                with self._lock:
                    self._sync()
            except Exception:
                log.exception("kubelet sync failed; retrying")
                self._stopping.wait(1)

    def _sync(self) -> None:
        assert self.api is not None
        core = self.api.core
        nodes = {n["metadata"]["name"] for n in self.api.items(core.list_node)
                 if (n["metadata"].get("annotations") or {}).get(KWOK_NODE_ANNOTATION)}
        pods = [p for ns in self.namespaces for p in self.api.items(core.list_namespaced_pod, ns)] \
            if self.namespaces else self.api.items(core.list_pod_for_all_namespaces)
        records = dns_records(self.api.items(core.list_service_for_all_namespaces),
                              self.api.items(self.api.discovery.list_endpoint_slice_for_all_namespaces), pods)
        runnable = {p["metadata"]["uid"]: p for p in pods if _runnable(p, nodes)}
        for uid, runtime in list(self.pods.items()):
            if uid not in runnable:
                self._teardown(runtime)
            elif not runtime.exit_reported and runtime.main.exit_code is not None:
                self._report_exit(runtime)
        for uid, pod in runnable.items():
            if uid not in self.pods and self.failures.get(uid, ("", 0.0))[1] <= time.monotonic():
                self._start_pod(pod, records)
        self.failures = {uid: f for uid, f in self.failures.items() if uid in runnable}
        for runtime in self.pods.values():
            runtime.write_hosts(hosts_file(runtime.pod, records))

    def _start_pod(self, pod: dict[str, Any], records: list[Any]) -> None:
        assert self.api is not None
        runtime = PodRuntime(pod, self.work_dir, self.host.gateway_ip)
        try:
            if pod["spec"].get("hostNetwork"):
                raise SetupError("CreateContainerConfigError", "hostNetwork pods are not supported by the e2e kubelet stand-in")
            runtime.prepare(self.api, self._base_env(), hosts_file(pod, records))
            runtime.start(self.mount_points, self._on_exit, self._on_ready)
        except SetupError as error:
            previous = self.failures.get(runtime.uid, ("", 0.0))[0]
            self.failures[runtime.uid] = (error.message, time.monotonic() + RETRY_SETUP_S)
            if error.message != previous:  # one Event per distinct problem, as a kubelet does
                log.warning("%s: %s: %s", runtime.key, error.reason, error.message)
                self.api.event(pod, error.reason, error.message)
            return
        self.failures.pop(runtime.uid, None)
        self.pods[runtime.uid] = runtime
        log.info("%s: running (pod IP %s, netns %s)", runtime.key, runtime.network.pod_ip, runtime.network.netns)

    def _base_env(self) -> dict[str, str]:
        """What a kubelet adds to every container: PATH (the repo's venv, the e2e shims), the tests' PYTHONPATH
        if they have one (a worktree sharing another checkout's venv: its pods run the code under test, not the
        venv's editable install), and the `kubernetes` Service's variables so in-cluster clients find the API
        server."""
        env = {"PATH": f"{Path(sys.prefix) / 'bin'}:{SHIM_DIR}:{SYSTEM_PATH}", "HOME": "/root"}
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        service = self.api.read(self.api.core.read_namespaced_service, "kubernetes", "default") if self.api else None
        if service:
            host, port = service["spec"]["clusterIP"], str(service["spec"]["ports"][0]["port"])
            env |= {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                    "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://{host}:{port}",
                    f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}", f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
                    f"KUBERNETES_PORT_{port}_TCP_PORT": port, f"KUBERNETES_PORT_{port}_TCP_ADDR": host}
        return env

    def _on_exit(self, runtime: PodRuntime, container: Container) -> None:
        log.info("%s: container %s exited with %s", runtime.key, container.name, container.exit_code)
        self._wake.set()

    def _report_exit(self, runtime: PodRuntime) -> None:
        assert self.api is not None
        code, message = runtime.main.exit_code, runtime.main.termination_message()
        annotations = {EXIT_CODE: str(code)} | ({TERMINATION_MESSAGE: message} if message.strip() else {})
        try:
            self.api.annotate(runtime.pod, annotations)
        except ApiException as error:
            if error.status != 404:
                raise
        runtime.exit_reported = True

    def _on_ready(self, runtime: PodRuntime) -> None:
        """A probe flipped: write the pod's readiness annotation when the pod-level value changed."""
        ready = runtime.pod_ready
        if ready == runtime.reported_ready or runtime.exit_reported or self.api is None:
            return
        try:
            self.api.annotate(runtime.pod, {READY: str(ready).lower()})
            runtime.reported_ready = ready
        except ApiException as error:
            log.warning("%s: cannot report readiness: %s", runtime.key, error.reason)

    def _teardown(self, runtime: PodRuntime) -> None:
        """Stop a pod in the background with its grace period (a stuck pod must not stall the others)."""
        self.pods.pop(runtime.uid, None)
        grace = float(runtime.pod["spec"].get("terminationGracePeriodSeconds", 30))
        thread = threading.Thread(target=runtime.stop, args=(grace,), name=f"stop-{runtime.key}", daemon=True)
        thread.start()
        self._teardowns = [t for t in self._teardowns if t.is_alive()] + [thread]

    # ---- the `kubernetes` Service's endpoints ----------------------------------

    def _publish_apiserver_endpoints(self) -> None:
        """Point the `kubernetes` Service at the relay (the API server's endpoint reconciler is off:
        it listens on 127.0.0.1, which no endpoint may name); kube-proxy routes 10.96.0.1:443 there."""
        assert self.api is not None and self.relay is not None
        address, port = self.relay.address
        labels = {"kubernetes.io/service-name": "kubernetes"}
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
            "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
        endpoints = {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
        discovery, core = self.api.discovery, self.api.core
        _upsert(discovery.create_namespaced_endpoint_slice, discovery.replace_namespaced_endpoint_slice, endpoint_slice)
        _upsert(core.create_namespaced_endpoints, core.replace_namespaced_endpoints, endpoints)

    def _unpublish_apiserver_endpoints(self) -> None:
        assert self.api is not None
        for delete in (self.api.discovery.delete_namespaced_endpoint_slice, self.api.core.delete_namespaced_endpoints):
            try:
                delete("kubernetes", "default")
            except ApiException as error:
                if error.status != 404:
                    log.warning("cannot delete the kubernetes endpoints: %s", error.reason)


def _upsert(create: Any, replace: Any, body: dict[str, Any]) -> None:
    try:
        create("default", body)
    except ApiException as error:
        if error.status != 409:
            raise
        replace(body["metadata"]["name"], "default", body)


def _runnable(pod: dict[str, Any], kwok_nodes: set[str]) -> bool:
    """Running on a kwok node, with a pod IP, not terminating, its exit not yet reported."""
    meta, status = pod["metadata"], pod.get("status") or {}
    return (pod["spec"].get("nodeName") in kwok_nodes and status.get("phase") == "Running"
            and bool(status.get("podIP")) and not meta.get("deletionTimestamp")
            and EXIT_CODE not in (meta.get("annotations") or {}))
