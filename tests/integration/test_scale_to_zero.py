"""Scale to zero against the real API server (local cluster, kwok pods: no Triton, so no pod passes the model
check and the ModelService's Service stays on the activator): minReplicas 0 admitted (and refused with an
HPA), the operator reading the activator's addresses from its Service's EndpointSlices and writing the
activator's slice of the ModelService's Service and the activator-target slice. Zero after idle needs Triton's metrics in Prometheus: e2e, not here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelops.activator.routing import backend_from_slice
from support import OperatorProcess, eventually, get_json

pytestmark = pytest.mark.cluster

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def model_service(name: str, **autoscaling: Any) -> str:
    return json.dumps({"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
                       "spec": {"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                                "repository": {"hostPath": {"path": "/tmp/models"}},
                                "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "target": 1000,
                                                "scaleToZeroAfterSeconds": 10, **autoscaling}}})


ACTIVATOR = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: activator}
spec:
  replicas: 1
  selector: {matchLabels: {app: activator}}
  template:
    metadata: {labels: {app: activator}}
    spec: {containers: [{name: activator, image: modelops:test}]}
---
apiVersion: v1
kind: Service
metadata: {name: activator}
spec:
  selector: {app: activator}
  ports:
    - {name: http, port: 8000}
    - {name: grpc, port: 8001}
    - {name: admin, port: 9090}
"""


@pytest.fixture
def operator_with_activator(kube, crds_installed, tmp_path: Path) -> Iterator[OperatorProcess]:  # type: ignore[no-untyped-def]
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log",
                              extra_args=("--activator-service", f"{kube.namespace}/activator"))
    process.start()
    yield process
    process.stop()
    print(f"--- operator log ({process.log_path}) ---\n{process.log()[-6000:]}")


def service_spec(kube) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    found = kube.cluster.kubectl("-n", kube.namespace, "get", "service", "digits", "-o", "json", check=False)
    return json.loads(found.stdout)["spec"] if found.returncode == 0 else {}


def slices(kube, name: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = get_json(kube, "endpointslices", "-l", f"modelops.dev/model-service={name}")["items"]
    return {s["metadata"]["name"]: s for s in items}


def test_min_zero_is_admitted_but_not_with_an_hpa(kube, crds_installed) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "--dry-run=server", "-f", "-", stdin=model_service("zero"))
    refused = kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", check=False,
                                   stdin=model_service("zero", provider="hpa"))
    assert refused.returncode != 0 and "HorizontalPodAutoscaler cannot scale to zero" in refused.stderr
    short = kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", check=False,
                                 stdin=model_service("zero", scaleToZeroAfterSeconds=1))
    assert short.returncode != 0 and "scaleToZeroAfterSeconds" in short.stderr


def test_nothing_ready_routes_to_the_activator_which_is_told_the_pods_and_the_model(  # type: ignore[no-untyped-def]
        kube, operator_with_activator) -> None:
    kube.kubectl("apply", "-f", "-", stdin=ACTIVATOR)
    activator_ips = eventually(lambda: sorted(p["status"]["podIP"] for p in get_json(kube, "pods", "-l",
                                                                                      "app=activator")["items"]
                                              if (p.get("status") or {}).get("podIP")), what="activator pod IP")
    kube.kubectl("apply", "-f", "-", stdin=model_service("digits"))

    def routed() -> list[str]:
        found = slices(kube, "digits").get("digits-activator") or {}
        return sorted(a for e in found.get("endpoints") or [] for a in e["addresses"])
    eventually(lambda: routed() == activator_ips, timeout=60, what="the Service's slice listing the activator")
    found = slices(kube, "digits")["digits-activator"]
    assert found["metadata"]["labels"]["kubernetes.io/service-name"] == "digits"
    assert service_spec(kube)["selector"] == {"modelops.dev/model-service": "digits"}

    # a new ModelService at minReplicas 0 starts at one replica (its model checked once); its pod is a target
    serving = eventually(lambda: [p for p in get_json(kube, "pods", "-l", "modelops.dev/model-service=digits")["items"]
                                  if (p.get("status") or {}).get("podIP")], timeout=60, what="a serving pod IP")

    def targets() -> Any:
        found = slices(kube, "digits").get("digits-activator-targets")
        return backend_from_slice(found) if found else None
    backend = eventually(lambda: (b := targets()) and b.targets and b, timeout=60, what="the activator-target slice")
    assert (backend.namespace, backend.name, backend.model, backend.version) == (kube.namespace, "digits", "digits", 1)
    assert [t.host for t in backend.targets] == [serving[0]["status"]["podIP"]]
    assert "kubernetes.io/service-name" not in slices(kube, "digits")["digits-activator-targets"]["metadata"]["labels"]

    # back to minReplicas 1: the operator's slices go
    kube.kubectl("patch", "ms", "digits", "--type=merge", "-p", '{"spec": {"autoscaling": {"minReplicas": 1}}}')
    eventually(lambda: not {"digits-activator", "digits-activator-targets"} & set(slices(kube, "digits")),
               timeout=60, what="the operator's slices removed")



def test_a_service_that_loses_its_selector_keeps_the_endpointslice_controllers_slices(kube, crds_installed) -> None:  # type: ignore[no-untyped-def]
    """Why the ModelService's Service keeps its selector at minReplicas 0 (the activator gets a second slice):
    on this Kubernetes a Service that loses its selector keeps the slices the controller wrote for it, so
    kube-proxy would go on routing to pods that are gone."""
    kube.kubectl("apply", "-f", "-", stdin=ACTIVATOR)

    def controller_slices() -> list[str]:
        items = get_json(kube, "endpointslices", "-l", "kubernetes.io/service-name=activator,"
                         "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io")["items"]
        return [s["metadata"]["name"] for s in items if s.get("endpoints")]
    kept = eventually(controller_slices, timeout=60, what="the controller's slice of the selecting Service")
    kube.kubectl("patch", "service", "activator", "--type=merge", "-p", '{"spec": {"selector": null}}')
    time.sleep(5)
    assert controller_slices() == kept
