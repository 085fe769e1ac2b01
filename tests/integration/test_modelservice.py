"""The ModelService controller on the real local cluster (kwok pods: no Triton answers, so no pod passes
the model check here; the real-Triton flow is in e2e/)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import condition, eventually, get_json

pytestmark = pytest.mark.cluster

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def model_service(name: str, version: int = 1, **spec: Any) -> str:
    body = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
            "spec": {"model": {"name": "digits", "version": version, "signature": SIGNATURE},
                     "repository": {"hostPath": {"path": "/tmp/models"}}, **spec}}
    return json.dumps(body)


def deployments(kube, name: str) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = get_json(kube, "deployments", "-l", f"modelops.dev/model-service={name}")["items"]
    return {d["metadata"]["name"]: d for d in items if not d["metadata"].get("deletionTimestamp")}


def replicas(kube, name: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {n: d["spec"]["replicas"] for n, d in deployments(kube, name).items()}


def status(kube, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return get_json(kube, "ms", name).get("status", {})


def test_serving_objects_status_and_kubectl_scale(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=model_service("digits", replicas=2))
    [revision] = eventually(lambda: list(replicas(kube, "digits")), what="revision deployment")
    assert revision.startswith("digits-v1-")
    dep = deployments(kube, "digits")[revision]
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["readinessGates"] == [{"conditionType": "modelops.dev/model-ready"}]
    config = get_json(kube, "configmap", revision)["data"]["config.pbtxt"]
    assert "versions: [ 1 ]" in config and 'platform: "pytorch_libtorch"' in config
    service = get_json(kube, "service", "digits")
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002]
    st = eventually(lambda: (s := status(kube, "digits")).get("stable") and s, what="status")
    assert st["phase"] == "Pending" and st["modelVersion"] == 1 and st["replicas"] == 2
    assert condition(get_json(kube, "ms", "digits"), "Ready")["status"] == "False"
    assert st["observedGeneration"] == get_json(kube, "ms", "digits")["metadata"]["generation"]
    table = kube.kubectl("get", "ms", "digits")
    assert "digits" in table and "0/2" in table and "Pending" in table

    # No pod can pass the model check on kwok: the gate says why.
    pods = eventually(lambda: [p for p in get_json(kube, "pods", "-l", "modelops.dev/model-service=digits")["items"]
                               if condition(p, "modelops.dev/model-ready")], timeout=60, what="gate condition")
    gate = condition(pods[0], "modelops.dev/model-ready")
    assert gate["status"] == "False" and gate["reason"] == "ModelCheckPending"

    kube.kubectl("scale", "ms", "digits", "--replicas=3")
    eventually(lambda: replicas(kube, "digits") == {revision: 3}, what="scaled to 3")
    eventually(lambda: status(kube, "digits")["replicas"] == 3, what="status.replicas")


def test_hand_edited_child_is_put_back(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=model_service("sturdy"))
    [revision] = eventually(lambda: list(replicas(kube, "sturdy")), what="revision")
    kube.kubectl("patch", "deployment", revision, "--type=json", "-p",
                 '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"evil:latest"}]')
    eventually(lambda: deployments(kube, "sturdy")[revision]["spec"]["template"]["spec"]["containers"][0]["image"]
               != "evil:latest", what="image restored")
    kube.kubectl("delete", "service", "sturdy")
    eventually(lambda: kube.cluster.kubectl("-n", kube.namespace, "get", "service", "sturdy", check=False)
               .returncode == 0, what="service recreated")


def test_canary_split_then_rollback_leaves_stable_untouched(kube, operator) -> None:  # type: ignore[no-untyped-def]
    rollout = {"steps": [{"weight": 50, "pauseSeconds": 5}], "progressDeadlineSeconds": 8}
    kube.kubectl("apply", "-f", "-", stdin=model_service("canary", replicas=2, rollout=rollout))
    [stable] = eventually(lambda: list(replicas(kube, "canary")), what="stable revision")
    before = deployments(kube, "canary")[stable]
    kube.kubectl("apply", "-f", "-", stdin=model_service("canary", version=2, replicas=2, rollout=rollout))

    def split() -> dict[str, int]:  # the canary pod never serves on kwok: the stable keeps both (surge)
        current = replicas(kube, "canary")
        return current if len(current) == 2 and current[stable] == 2 else {}

    current = eventually(split, what="2+1 replicas: the canary's surge")
    canary = next(n for n in current if n != stable)
    assert canary.startswith("canary-v2-") and current[canary] == 1
    progressing = status(kube, "canary")
    assert progressing["canary"]["weight"] == 50 and progressing["phase"] in ("Pending", "Progressing")

    rolled = eventually(lambda: (s := status(kube, "canary")).get("rejectedRevision") and s, timeout=40,
                        what="rollback after the progress deadline")
    assert rolled["phase"] == "Degraded" and "progressDeadlineSeconds" in \
        condition(get_json(kube, "ms", "canary"), "RolledBack")["message"]
    eventually(lambda: replicas(kube, "canary") == {stable: 2}, what="canary removed, stable back to 2")
    after = deployments(kube, "canary")[stable]
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["spec"]["template"] == before["spec"]["template"]
    events = [e["reason"] for e in get_json(kube, "events", "--field-selector",
                                            "involvedObject.name=canary")["items"]]
    assert "CanaryStarted" in events and "RolledBack" in events


def test_follows_the_model_a_training_job_published(kube, operator) -> None:  # type: ignore[no-untyped-def]
    job = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "trainer"},
           "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))
    ms = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "follower"},
          "spec": {"model": {"name": "digits", "fromTrainingJob": "trainer"},
                   "repository": {"hostPath": {"path": "/tmp/models"}}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(ms))
    waiting = eventually(lambda: condition(get_json(kube, "ms", "follower"), "Reconciling").get("message"),
                         what="waiting message")
    assert "waiting for TrainingJob trainer" in waiting
    pod = eventually(lambda: get_json(kube, "pods", "-l", "modelops.dev/training-job=trainer")["items"],
                     what="training pod")[0]
    report = {"phase": "Succeeded", "model": {"name": "digits", "version": 7, "uri": "/models/digits/7",
                                              "signature": SIGNATURE}}
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], f"modelops.dev/progress={json.dumps(report)}",
                 "e2e.modelops.dev/exit-code=0")
    revision = eventually(lambda: list(replicas(kube, "follower")), what="revision for version 7")[0]
    assert revision.startswith("follower-v7-")
    assert status(kube, "follower")["modelVersion"] == 7

    # The TrainingJob goes (a TTL, a cleanup): the service keeps serving version 7, and its Deployment,
    # deleted by hand, comes back from what the revision records it serves.
    kube.kubectl("delete", "tj", "trainer", "--wait=true")
    kube.kubectl("delete", "deployment", revision)
    eventually(lambda: revision in replicas(kube, "follower"), what="the revision re-created")
    assert status(kube, "follower")["modelVersion"] == 7


def test_hpa_provider_emits_a_native_autoscaler(kube, operator) -> None:  # type: ignore[no-untyped-def]
    scaling = {"minReplicas": 1, "maxReplicas": 5, "target": 200, "provider": "hpa"}
    kube.kubectl("apply", "-f", "-", stdin=model_service("native", autoscaling=scaling))
    hpa = eventually(lambda: kube.cluster.kubectl("-n", kube.namespace, "get", "hpa", "native", "-o", "json",
                                                  check=False).stdout, what="HPA")
    assert json.loads(hpa)["spec"]["scaleTargetRef"]["kind"] == "ModelService"
    kube.kubectl("patch", "ms", "native", "--type=merge", "-p", '{"spec":{"autoscaling":{"provider":"builtin"}}}')
    eventually(lambda: kube.cluster.kubectl("-n", kube.namespace, "get", "hpa", "native", check=False).returncode,
               what="HPA removed")
    scaled = eventually(lambda: (s := status(kube, "native")).get("autoscaling") and s, what="autoscaling status")
    assert scaled["autoscaling"]["desiredReplicas"] == 1
    assert condition(get_json(kube, "ms", "native"), "ScalingActive")["reason"] == "MetricUnavailable"


@pytest.mark.parametrize(("spec", "message"), [
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2, "target": 1}}, "minReplicas must not exceed maxReplicas"),
    ({"rollout": {"steps": [{"weight": 0}]}}, "spec.rollout.steps[0].weight"),
    ({"rollout": {"steps": [{"weight": 101}]}}, "spec.rollout.steps[0].weight"),
    ({"model": {"name": "digits", "version": 1, "fromTrainingJob": "t", "signature": SIGNATURE}},
     "set exactly one of version or fromTrainingJob"),
    ({"model": {"name": "digits", "version": 1}}, "a pinned version needs its signature"),
    ({"triton": {"maxBatchSize": 4, "dynamicBatching": {"preferredBatchSizes": [8]}}},
     "preferredBatchSizes must lie between 1 and maxBatchSize"),
    ({"repository": {"uri": "s3://b/m", "hostPath": {"path": "/m"}}}, "set exactly one of persistentVolumeClaim"),
])
def test_invalid_model_services_are_rejected_at_admission(kube, crds_installed, spec, message) -> None:  # type: ignore[no-untyped-def]
    body = json.loads(model_service("bad"))
    body["spec"].update(spec)
    result = kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
