"""The control loop against the real API server: lists come in pages (and start over when etcd compacted
their snapshot), failed passes are retried until the object converges, a converged restart writes nothing, a
paused peering replica stays silent and takes over when the leader dies."""

from __future__ import annotations

import base64
import json
import re
import signal
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from modelops.autoscale.prometheus import Prometheus
from modelops.controllers.model_check import check_pod
from modelops.controllers.modelservice import ModelServiceController
from modelops.controllers.trainingjob import TrainingJobController
from modelops.dev.cluster import free_port
from modelops.engine.engine import Engine, EngineOptions
from modelops.kube import ApiError, Kube, WRITE_VERBS
from modelops.metrics import API_REQUESTS
from support import OperatorProcess, condition, eventually, get_json
from test_modelservice import deployments, model_service
from test_trainingjob import end_pod, job, phase_is, running_pods

pytestmark = pytest.mark.cluster

def metrics(port: int) -> str:
    """The operator's own /metrics ('' while it is still starting)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def api_writes(port: int) -> int:
    """Writes this operator made, from its own request counter (every request goes through kube.py)."""
    total = 0.0
    for line in metrics(port).splitlines():
        match = re.match(r'modelops_api_requests_total\{code="[^"]*",kind="[^"]*",verb="([^"]+)"\} (\S+)', line)
        if match and match.group(1) in WRITE_VERBS:
            total += float(match.group(2))
    return int(total)


def passes(port: int) -> int:
    return int(sum(float(line.split()[-1]) for line in metrics(port).splitlines()
                   if line.startswith("modelops_reconciles_total{")))


def operator(kube, tmp_path: Path, name: str, *args: str, env: dict[str, str] | None = None) \
        -> tuple[OperatorProcess, int]:  # type: ignore[no-untyped-def]
    port = free_port()
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / f"{name}.log",
                              ("--metrics-port", str(port), *args), env=env)
    process.start()
    return process, port


def converged_pair(kube) -> None:  # type: ignore[no-untyped-def]
    """A running 2-worker job and a served ModelService, both settled."""
    kube.kubectl("apply", "-f", "-", stdin=job("steady", workers=2))
    kube.kubectl("apply", "-f", "-", stdin=model_service("steady-ms"))
    running_pods(kube, "steady", 2)
    phase_is(kube, "steady", "Running")
    eventually(lambda: deployments(kube, "steady-ms"), what="the revision Deployment")
    eventually(lambda: condition(get_json(kube, "ms", "steady-ms"), "Ready").get("reason") == "NoReadyReplicas",
               what="the ModelService status")


def config_maps(kube, count: int, size: int = 0) -> list[str]:  # type: ignore[no-untyped-def]
    """`count` labelled ConfigMaps in the test's namespace, each with `size` bytes of data; their names."""
    names = [f"page-{i:03d}" for i in range(count)]
    kube.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"test": "paging"}},
         "data": {"blob": "x" * size}} for name in names]}))
    return names


def compact_etcd(cluster) -> None:  # type: ignore[no-untyped-def]
    """Compact etcd up to its current revision, as the API server does every 5 minutes: a continue token
    from before now has lost its snapshot (etcd's gRPC gateway, on the cluster's loopback port)."""
    base = f"http://127.0.0.1:{cluster.status()['ports']['etcd']}/v3/kv"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    revision = post("/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    post("/compaction", {"revision": revision, "physical": True})


def lists(code: str) -> float:
    return API_REQUESTS.labels("list", "ConfigMap", code)._value.get()


def test_a_list_comes_in_pages_and_starts_over_unpaged_when_its_continue_token_expired(kube) -> None:  # type: ignore[no-untyped-def]
    from kubernetes import config

    client = Kube(config.new_client_from_config(str(kube.kubeconfig)))
    names = config_maps(kube, 7)
    ok = lists("200")
    found, version = client.list_objects("v1", "ConfigMap", kube.namespace, labels="test=paging", page=3,
                                         transform=lambda o: (o["kind"], o["metadata"]["name"]))
    assert found == [("ConfigMap", name) for name in names] and int(version) > 0
    assert lists("200") - ok == 3  # 3 + 3 + 1

    # Between the first page and the next, an object changes and etcd compacts past the list's snapshot:
    # the continue token expires (410), and the list starts over, whole, with the change in it.
    compacted: list[str] = []

    def after_first_page(obj: dict[str, Any]) -> str:
        if not compacted:
            compacted.append(obj["metadata"]["name"])
            kube.kubectl("label", "configmap", names[-1], "changed=yes")
            compact_etcd(kube.cluster)
        return f"{obj['metadata']['name']}{'*' if 'changed' in obj['metadata']['labels'] else ''}"

    ok, gone = lists("200"), lists("410")
    found, later = client.list_objects("v1", "ConfigMap", kube.namespace, labels="test=paging", page=3,
                                       transform=after_first_page)
    assert found == names[:-1] + [names[-1] + "*"] and int(later) > int(version)
    assert (lists("200") - ok, lists("410") - gone) == (2, 1)  # the first page, the unpaged list; one 410


def test_a_paged_list_holds_one_page_of_raw_objects_at_a_time(kube) -> None:  # type: ignore[no-untyped-def]
    """What a restarted operator's informers rely on: trimmed page by page, the raw objects never pile up."""
    from kubernetes import config

    client = Kube(config.new_client_from_config(str(kube.kubeconfig)))
    names = config_maps(kube, 60, size=20_000)  # 1.2 MB of data, which the transform drops
    peaks = {}
    for page in (0, 10):
        tracemalloc.start()
        try:
            found, _ = client.list_objects("v1", "ConfigMap", kube.namespace, labels="test=paging", page=page,
                                           transform=lambda o: o["metadata"]["name"])
            peaks[page] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert found == names
    assert peaks[10] < peaks[0] / 3, peaks


def test_converged_restart_makes_zero_writes(kube, crds_installed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, _ = operator(kube, tmp_path, "first")
    try:
        converged_pair(kube)
        time.sleep(3)  # let the pod model checks settle on "pending"
    finally:
        first.stop(signal.SIGKILL)
    second, port = operator(kube, tmp_path, "second")
    try:
        eventually(lambda: passes(port) >= 2, 30, "the restarted operator's first passes")
        time.sleep(5)
        assert api_writes(port) == 0, second.log()[-3000:]
    finally:
        second.stop()


class FlakyKube(Kube):
    """The real client with injected failures: the first creates fail with 500, the first status patch
    with a 409 conflict (faults the real API server does not produce on demand)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.create_failures, self.status_failures, self.injected = 3, 1, 0

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Pod" and self.create_failures > 0:
            self.create_failures -= 1
            self.injected += 1
            raise ApiError(500, "InternalError", "injected: etcdserver: request timed out")
        return super().create(obj)

    def patch_status(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.status_failures > 0:
            self.status_failures -= 1
            self.injected += 1
            raise ApiError(409, "Conflict", "injected: the object has been modified")
        return super().patch_status(*args, **kwargs)


def test_a_pass_failing_on_api_errors_is_retried_until_the_job_converges(kube, crds_installed) -> None:  # type: ignore[no-untyped-def]
    from kubernetes import config

    kube.kubectl("apply", "-f", "-", stdin=job("flaky"))
    body = get_json(kube, "tj", "flaky")
    client = FlakyKube(config.new_client_from_config(str(kube.kubeconfig)))
    engine = Engine(client, Prometheus(""), [TrainingJobController(), ModelServiceController()],
                    EngineOptions(namespaces=[kube.namespace]), checker=check_pod)
    engine.start()
    try:
        engine.observe_resource("TrainingJob", "ADDED", body)  # what kopf's watch event would hand over
        running_pods(kube, "flaky", 1)
        eventually(lambda: get_json(kube, "tj", "flaky").get("status", {}).get("observedGeneration"), 30,
                   "the status written after the injected conflict")
        assert client.injected == 4 and engine.queue.backoff.failures(("TrainingJob", kube.namespace, "flaky")) == 0
    finally:
        engine.stop()


def test_paused_replica_stays_silent_then_takes_over_when_the_leader_dies(kube, crds_installed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    install_peering(kube)
    flags = ("--peering", "modelops", "--peering-lifetime", "6")
    leader, leader_port = operator(kube, tmp_path, "leader", *flags, "--priority", "2", env={"POD_ID": "leader"})
    peers = lambda: set(get_json(kube, "kopfpeering", "modelops").get("status") or {})  # noqa: E731
    eventually(lambda: "leader" in peers(), 30, "the leader in the peering object")
    standby, standby_port = operator(kube, tmp_path, "standby", *flags, "--priority", "1", env={"POD_ID": "standby"})
    try:
        eventually(lambda: "standby" in peers(), 30, "the standby in the peering object")
        # The leader works for a minute (a job runs and finishes, another starts) while the standby watches.
        kube.kubectl("apply", "-f", "-", stdin=job("led"))
        [pod] = running_pods(kube, "led", 1)
        window_end = time.monotonic() + 60
        end_pod(kube, pod, 0)
        phase_is(kube, "led", "Succeeded")
        kube.kubectl("apply", "-f", "-", stdin=job("led-later"))
        running_pods(kube, "led-later", 1)
        time.sleep(max(0.0, window_end - time.monotonic()))
        assert api_writes(leader_port) > 0
        assert api_writes(standby_port) == 0 and passes(standby_port) == 0, standby.log()[-3000:]

        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        kube.kubectl("apply", "-f", "-", stdin=job("after"))
        running_pods(kube, "after", 1, timeout=30)
        took = time.monotonic() - killed
        assert took <= 10, f"the standby took {took:.1f}s to take over"
        assert api_writes(standby_port) > 0
    finally:
        standby.stop()
        leader.stop()


def install_peering(kube) -> None:  # type: ignore[no-untyped-def]
    """kopf's KopfPeering CRD (as the chart ships it) and the peering object in the test's namespace."""
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "kopfpeerings.kopf.dev"},
           "spec": {"group": "kopf.dev", "scope": "Namespaced",
                    "names": {"kind": "KopfPeering", "listKind": "KopfPeeringList", "plural": "kopfpeerings",
                              "singular": "kopfpeering"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"status": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}
    if kube.cluster.kubectl("get", "crd", "kopfpeerings.kopf.dev", check=False).returncode:
        kube.cluster.kubectl("create", "-f", "-", stdin=json.dumps(crd), check=False)
        kube.cluster.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "modelops"}}))

