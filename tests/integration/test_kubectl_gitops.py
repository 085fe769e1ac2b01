"""What kubectl users and GitOps health checks see: kstatus readings of TrainingJobs, the category, printer
columns, `kubectl explain`, and the examples accepted by the API server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import REPO, eventually, get_json

EXIT = "e2e.modelops.dev/exit-code"


def kstatus(obj: dict[str, Any]) -> str:
    """The generic kstatus rules (sigs.k8s.io/cli-utils, used by Flux's health checks, `kubectl wait`-style
    tooling and Argo CD-like readers) for a custom resource: InProgress, Failed or Current."""
    meta, status = obj.get("metadata", {}), obj.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"  # the controller has not seen the latest spec yet
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


def test_kstatus_rules() -> None:
    def obj(generation: int, observed: int | None, **conditions: str) -> dict[str, Any]:
        status: dict[str, Any] = {"conditions": [{"type": t, "status": s} for t, s in conditions.items()]}
        if observed is not None:
            status["observedGeneration"] = observed
        return {"metadata": {"generation": generation}, "status": status}

    assert kstatus(obj(2, 1, Ready="True")) == "InProgress"
    assert kstatus(obj(1, 1, Reconciling="True", Ready="False")) == "InProgress"
    assert kstatus(obj(1, 1, Stalled="True", Ready="False")) == "Failed"
    assert kstatus(obj(1, 1, Ready="True", Reconciling="False", Stalled="False")) == "Current"


def trainingjob(name: str, **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}},
                 "trainer": {"epochs": 2}, **spec},
    })


def running_pod(kube: Any, job: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pods = get_json(kube, "pods", "-l", f"modelops.dev/training-job={job}")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)
    return eventually(check, 30, f"a running pod of {job}")


def reads(kube: Any, job: str, expected: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj: dict[str, Any] = get_json(kube, "tj", job)
        return obj if kstatus(obj) == expected else None
    return eventually(check, timeout, f"{job} read as {expected} by kstatus")


@pytest.mark.cluster
def test_gitops_health_reads_trainingjob_status(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=trainingjob("good"))
    kube.kubectl("apply", "-f", "-", stdin=trainingjob("bad", backoffLimit=0))
    good, bad = running_pod(kube, "good"), running_pod(kube, "bad")

    in_progress = reads(kube, "good", "InProgress")
    conditions = {c["type"]: c["status"] for c in in_progress["status"]["conditions"]}
    assert conditions["Reconciling"] == "True" and conditions["Ready"] == "False"

    kube.kubectl("annotate", "pod", good["metadata"]["name"], "--overwrite", "modelops.dev/progress=" + json.dumps(
        {"phase": "Succeeded", "model": {"name": "digits", "version": 1, "uri": "/models/digits/1"}}))
    kube.kubectl("annotate", "pod", good["metadata"]["name"], f"{EXIT}=0")
    current = reads(kube, "good", "Current")
    assert current["status"]["phase"] == "Succeeded"
    assert current["status"]["observedGeneration"] == current["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in current["status"]["conditions"]}["Ready"] == "True"
    # What scripts and CI use: returns at once for a Ready job.
    kube.kubectl("wait", "--for=condition=Ready", "tj/good", "--timeout=10s")

    kube.kubectl("annotate", "pod", bad["metadata"]["name"], f"{EXIT}=2")
    failed = reads(kube, "bad", "Failed")
    assert failed["status"]["phase"] == "Failed"
    never_ready = kube.cluster.kubectl("-n", kube.namespace, "wait", "--for=condition=Ready", "tj/bad", "--timeout=2s",
                                       check=False)
    assert never_ready.returncode != 0 and "timed out" in never_ready.stderr
    kube.kubectl("wait", "--for=condition=Stalled", "tj/bad", "--timeout=10s")

    # A spec edit is InProgress until the operator has observed the new generation.
    kube.kubectl("patch", "tj", "good", "--type=merge", "-p", '{"spec": {"ttlSecondsAfterFinished": 3600}}')
    edited = reads(kube, "good", "Current")
    assert edited["metadata"]["generation"] == current["metadata"]["generation"] + 1
    assert edited["status"]["observedGeneration"] == edited["metadata"]["generation"]


@pytest.mark.cluster
def test_kubectl_category_columns_and_explain(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=trainingjob("digits"))
    pod = running_pod(kube, "digits")
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], "--overwrite", "modelops.dev/progress=" + json.dumps(
        {"phase": "Training", "epoch": 1, "epochs": 2, "loss": 0.5, "valAccuracy": 0.8}))
    eventually(lambda: "epoch 1/2" in kube.kubectl("get", "tj", "digits"), 30, "progress in the table")

    # The category: `kubectl get modelops` lists every modelops kind.
    assert "trainingjob.modelops.dev/digits" in kube.kubectl("get", "modelops", "-o", "name")
    assert "digits" in kube.kubectl("get", "modelops")

    header, row = kube.kubectl("get", "tj").splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "WORKERS", "PROGRESS", "MODEL", "VERSION", "AGE"]
    assert row.split()[:3] == ["digits", "Running", "1/1"] and "epoch 1/2 loss 0.500 acc 0.800" in row

    kube.kubectl("annotate", "pod", pod["metadata"]["name"], "--overwrite", "modelops.dev/progress=" + json.dumps(
        {"phase": "Succeeded", "model": {"name": "digits", "version": 3, "uri": "/models/digits/3"}}))
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], f"{EXIT}=0")
    eventually(lambda: "Succeeded" in kube.kubectl("get", "tj", "digits"), 30, "Succeeded in the table")
    row = kube.kubectl("get", "tj", "digits").splitlines()[1].split()
    assert row[1] == "Succeeded" and row[-3:-1] == ["digits", "3"]

    explained = kube.kubectl("explain", "trainingjob.spec.workers")
    assert "FIELD: workers <integer>" in explained
    assert "Pods in the group (torchrun's nnodes): 1 = single pod; more = DDP" in " ".join(explained.split())


@pytest.mark.cluster
def test_examples_pass_server_side_validation(kube, crds_installed) -> None:  # type: ignore[no-untyped-def]
    """What Argo CD / Flux would apply from examples/, dry-run on the API server (schema and CEL rules)."""
    examples = REPO / "examples"
    files = ["model-repository-pvc.yaml", "trainingjob.yaml"]
    if kube.cluster.kubectl("get", "crd", "modelservices.modelops.dev", check=False).returncode == 0:
        files.append("modelservice.yaml")
    for name in files:
        out = kube.kubectl("apply", "--dry-run=server", "--server-side", "-f", str(examples / name))
        assert "serverside-applied (server dry run)" in out, out
