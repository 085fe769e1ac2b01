"""The ModelPool resource on the real API server: admission (CEL), printer columns, server pods created with
owner references, the scale subresource. No Triton here (kwok pods): which models a server holds is tested
with an in-memory Triton in tests/unit, and with real tritonserver pods by the Triton half of issue 24."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import condition, eventually, get_json

pytestmark = pytest.mark.cluster
API = "modelops.dev/v1alpha1"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [4]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [2]}]}


def pool(name: str = "shared", **spec: Any) -> str:
    body = {"repository": {"hostPath": {"path": "/tmp/models"}}, "capacity": "1Gi", "minServers": 1,
            "maxServers": 3, **spec}
    return json.dumps({"apiVersion": API, "kind": "ModelPool", "metadata": {"name": name}, "spec": body})


def pooled_service(**spec: Any) -> str:
    body = {"model": {"name": "digits", "version": 1, "signature": SIGNATURE}, "pool": "shared",
            "repository": {"hostPath": {"path": "/tmp/models"}}, **spec}
    return json.dumps({"apiVersion": API, "kind": "ModelService", "metadata": {"name": "probe"}, "spec": body})


def apply(kube, body: str):  # type: ignore[no-untyped-def]
    return kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", stdin=body, check=False)


@pytest.mark.parametrize(("body", "words"), [
    pytest.param(pool(minServers=4, maxServers=2), "minServers must not exceed maxServers", id="min-above-max"),
    pytest.param(pool(overcommit=1.5), "spec.overcommit", id="overcommit-above-one"),
    pytest.param(pool(capacity="8 GB"), "capacity must be a quantity such as 8Gi", id="capacity-words"),
    pytest.param(pool(repository={"hostPath": {"path": "/m"}, "persistentVolumeClaim": {"claimName": "m"}}),
                 "set exactly one of persistentVolumeClaim or hostPath", id="two-repositories"),
    pytest.param(pooled_service(repository={"uri": "s3://bucket/models"}), "not uri", id="pooled-uri"),
    pytest.param(pooled_service(resources={"gpus": 1}), "belong to the ModelPool", id="pooled-gpus"),
    pytest.param(pooled_service(triton={"extraArgs": ["--log-verbose=1"]}), "server-wide", id="pooled-extra-args"),
    pytest.param(pooled_service(autoscaling={"target": 5, "provider": "hpa"}), "provider builtin", id="pooled-hpa"),
    pytest.param(pooled_service(pool="a/b"), "pool must be the name of a ModelPool", id="pool-path"),
])
def test_invalid_pools_and_pooled_services_are_refused_at_admission(kube, crds_installed, body, words) -> None:  # type: ignore[no-untyped-def]
    result = apply(kube, body)
    assert result.returncode != 0 and words in result.stderr, result.stderr


def test_a_valid_pool_and_pooled_service_are_accepted(kube, crds_installed) -> None:  # type: ignore[no-untyped-def]
    for body in (pool(overcommit=0.25, minServers=0), pooled_service(resources={"memory": "300Mi"})):
        result = apply(kube, body)
        assert result.returncode == 0, result.stderr
    stored = get_json(kube, "mp", "shared")["spec"]
    assert stored["image"].startswith("nvcr.io/nvidia/tritonserver:") and stored["resources"]["gpus"] == 0


def test_server_pods_status_columns_and_the_scale_subresource(kube, operator) -> None:  # type: ignore[no-untyped-def]
    assert apply(kube, pool(minServers=2, resources={"cpu": "500m", "memory": "1Gi"})).returncode == 0

    def servers() -> dict[str, dict[str, Any]]:
        items = get_json(kube, "pods", "-l", "modelops.dev/model-pool=shared")["items"]
        return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}

    eventually(lambda: sorted(servers()) == ["shared-s0", "shared-s1"], what="two server pods")
    owner = get_json(kube, "mp", "shared")["metadata"]["uid"]
    for pod in servers().values():
        [ref] = pod["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ModelPool", "shared", owner, True)
        [container] = pod["spec"]["containers"]
        assert "--model-control-mode=explicit" in container["args"]
        assert not any(a.startswith("--load-model") for a in container["args"])
        assert container["volumeMounts"][0]["mountPath"] == "/repository" and container["volumeMounts"][0]["readOnly"]
        assert container["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    status = eventually(lambda: (s := get_json(kube, "mp", "shared").get("status", {})).get("selector") and s,
                        what="pool status")
    assert status["selector"] == "modelops.dev/model-pool=shared" and status["replicas"] == 2
    assert status["observedGeneration"] == 1 and condition(get_json(kube, "mp", "shared"), "Ready")
    table = kube.kubectl("get", "mp", "shared")
    assert table.splitlines()[0].split()[:6] == ["NAME", "SERVERS", "MODELS", "COPIES", "MEMORY", "PHASE"]
    assert "/2" in table.splitlines()[1]

    kube.kubectl("scale", "mp", "shared", "--replicas=3")
    eventually(lambda: sorted(servers()) == ["shared-s0", "shared-s1", "shared-s2"], what="scaled to 3 servers")
    scale = json.loads(kube.kubectl("get", "--raw", f"/apis/{API}/namespaces/{kube.namespace}/modelpools/shared/scale"))
    assert scale["spec"]["replicas"] == 3 and scale["status"]["selector"] == "modelops.dev/model-pool=shared"
    refused = kube.cluster.kubectl("-n", kube.namespace, "scale", "mp", "shared", "--replicas=9", check=False)
    assert refused.returncode != 0 and "minServers must not exceed maxServers" in refused.stderr

    kube.kubectl("scale", "mp", "shared", "--replicas=1")  # the floor goes down: the empty servers above it go
    eventually(lambda: sorted(servers()) == ["shared-s0"], timeout=60, what="scaled down to 1 server")


def test_a_pooled_model_service_gets_a_selector_less_service_and_its_endpoint_slice(kube, operator) -> None:  # type: ignore[no-untyped-def]
    assert apply(kube, pool(minServers=1)).returncode == 0
    assert apply(kube, pooled_service(resources={"memory": "300Mi"})).returncode == 0
    service = eventually(lambda: get_json(kube, "services", "-l", "modelops.dev/model-service=probe")["items"],
                         what="the Service")[0]
    assert "selector" not in service["spec"] and [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002]
    [endpoints] = eventually(lambda: get_json(kube, "endpointslices", "-l", "kubernetes.io/service-name=probe")
                             ["items"], what="the EndpointSlice")
    assert endpoints["metadata"]["ownerReferences"][0]["kind"] == "ModelService"
    assert not endpoints.get("endpoints")  # kwok runs no Triton: no server holds a ready copy
    status = eventually(lambda: (s := get_json(kube, "ms", "probe").get("status", {})).get("pool") and s,
                        what="pooled status")
    assert status["pool"]["name"] == "shared" and status["phase"] == "Pending"
    assert condition(get_json(kube, "ms", "probe"), "Ready")["reason"] == "Placing"
    assert get_json(kube, "deployments", "-l", "modelops.dev/model-service=probe")["items"] == []
