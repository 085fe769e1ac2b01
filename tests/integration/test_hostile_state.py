"""Hostile state against the real API server and operator: our children hand-edited (labels overwritten,
owner references removed), serving pods that cannot start, a followed TrainingJob deleted. Each case: the
resource says what happened, nothing of ours is left running unowned, no two attempts' workers run at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import condition, eventually, get_json
from test_hostile import apply, still_reconciling
from test_modelservice import deployments, model_service, status as ms_status
from test_trainingjob import events, job, phase_is, report, running_pods

pytestmark = pytest.mark.cluster


def ready_because(kube, kind: str, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The resource once its Ready condition has `reason`."""
    def check() -> dict[str, Any] | None:
        found = get_json(kube, kind, name)
        return found if condition(found, "Ready").get("reason") == reason else None
    return eventually(check, timeout, f"Ready reason {reason} on {kind} {name}")


def warnings_of(kube, name: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = get_json(kube, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e["type"] == "Warning"]


# ---- serving pods that wait say why ---------------------------------------------------------------------


def test_model_service_replicas_no_node_can_hold_say_why_once(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, model_service("huge", resources={"gpus": 16}))
    found = ready_because(kube, "ms", "huge", "Unschedulable")
    ready = condition(found, "Ready")
    assert ready["status"] == "False" and "1/1 replicas of revision" in ready["message"]
    assert "Insufficient nvidia.com/gpu" in ready["message"], ready["message"]
    eventually(lambda: "Unschedulable" in events(kube, "huge"), what="an Unschedulable Event")
    assert "Insufficient nvidia.com/gpu" in kube.kubectl("describe", "ms", "huge")
    # passes go on (a spec edit is observed) without saying it again
    kube.kubectl("patch", "ms", "huge", "--type=merge", "-p", '{"spec": {"replicas": 2}}')
    generation = get_json(kube, "ms", "huge")["metadata"]["generation"]
    eventually(lambda: ms_status(kube, "huge").get("observedGeneration") == generation, what="the edit observed")
    eventually(lambda: "2/2 replicas" in condition(get_json(kube, "ms", "huge"), "Ready")["message"],
               what="both replicas said to wait")
    assert events(kube, "huge").count("Unschedulable") == 1


def test_model_service_pods_a_quota_refuses_say_so(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("create", "quota", "no-pods", "--hard=pods=0")
    apply(kube, model_service("refused"))
    found = ready_because(kube, "ms", "refused", "FailedCreate")
    assert "exceeded quota" in condition(found, "Ready")["message"]
    eventually(lambda: "FailedCreate" in events(kube, "refused"), what="a FailedCreate Event")


# ---- a followed TrainingJob that is gone ------------------------------------------------------------------


def finish(kube, pod: dict[str, Any], version: int) -> None:  # type: ignore[no-untyped-def]
    """The trainer's last report (version `version` published), and its pod exits 0."""
    signature = json.loads(model_service("x"))["spec"]["model"]["signature"]
    done = {"phase": "Succeeded", "model": {"name": "digits", "version": version,
                                            "uri": f"/models/digits/{version}", "signature": signature}}
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], f"modelops.dev/progress={json.dumps(done)}",
                 "e2e.modelops.dev/exit-code=0")


def test_a_model_service_whose_followed_job_is_deleted_keeps_serving_says_so_and_follows_it_again(  # type: ignore[no-untyped-def]
        kube, operator) -> None:
    apply(kube, job("source"))
    [pod] = running_pods(kube, "source", 1)
    finish(kube, pod, 4)
    follower = json.loads(model_service("follower"))
    follower["spec"]["model"] = {"name": "digits", "fromTrainingJob": "source"}
    apply(kube, follower)
    [revision] = eventually(lambda: list(deployments(kube, "follower")), 60, what="the revision of version 4")
    assert revision.startswith("follower-v4-")
    eventually(lambda: condition(get_json(kube, "ms", "follower"), "SourceAvailable").get("status") == "True",
               what="SourceAvailable=True")

    kube.kubectl("delete", "tj", "source", "--wait=true")
    gone = eventually(lambda: (c := condition(get_json(kube, "ms", "follower"), "SourceAvailable"))
                      .get("status") == "False" and c, 30, "SourceAvailable=False")
    assert gone["reason"] == "TrainingJobNotFound" and "TrainingJob source not found" in gone["message"]
    eventually(lambda: "TrainingJobNotFound" in [e["reason"] for e in warnings_of(kube, "follower")],
               what="a TrainingJobNotFound Warning")
    assert list(deployments(kube, "follower")) == [revision]  # still serving what it served
    assert ms_status(kube, "follower")["modelVersion"] == 4

    apply(kube, job("source"))
    eventually(lambda: condition(get_json(kube, "ms", "follower"), "SourceAvailable").get("status") == "True",
               what="followed again")
    [pod] = running_pods(kube, "source", 1)
    finish(kube, pod, 5)
    eventually(lambda: any(n.startswith("follower-v5-") for n in deployments(kube, "follower")), 60,
               what="version 5 rolled out from the new job")
    assert events(kube, "follower").count("TrainingJobNotFound") == 1


# ---- a hand-edited worker is still ours: never two attempts alive, never left unowned ---------------------


def pod_named(kube, name: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    found = kube.cluster.kubectl("-n", kube.namespace, "get", "pod", name, "-o", "json", check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def gone_or_going(kube, name: str) -> bool:  # type: ignore[no-untyped-def]
    found = pod_named(kube, name)
    return found is None or bool(found["metadata"].get("deletionTimestamp"))


def job_pods(kube) -> list[str]:  # type: ignore[no-untyped-def]
    """Every pod in the namespace, whatever its labels say."""
    return sorted(p["metadata"]["name"] for p in get_json(kube, "pods")["items"])


@pytest.mark.parametrize("edit", [["modelops.dev/rank=x", "modelops.dev/attempt=minus-one"],
                                  ["app.kubernetes.io/managed-by-", "modelops.dev/training-job-"]])
def test_a_worker_whose_labels_were_overwritten_is_not_replaced_and_gets_them_back(kube, operator,  # type: ignore[no-untyped-def]
                                                                                   edit: list[str]) -> None:
    apply(kube, job("relabelled"))
    [pod] = running_pods(kube, "relabelled", 1)
    name = pod["metadata"]["name"]
    phase_is(kube, "relabelled", "Running")
    kube.kubectl("label", "pod", name, "--overwrite", *edit)

    def restored() -> bool:
        labels = (pod_named(kube, name) or {}).get("metadata", {}).get("labels") or {}
        return labels.get("modelops.dev/rank") == "0" and labels.get("modelops.dev/attempt") == "0" and \
            labels.get("app.kubernetes.io/managed-by") == "modelops" and \
            labels.get("modelops.dev/training-job") == "relabelled"
    eventually(restored, what="our labels put back")
    # the edit observed and nothing else happened: the same worker, attempt 0, no preemption
    kube.kubectl("patch", "tj", "relabelled", "--type=merge", "-p", '{"spec": {"ttlSecondsAfterFinished": 600}}')
    generation = get_json(kube, "tj", "relabelled")["metadata"]["generation"]
    status = eventually(lambda: (s := get_json(kube, "tj", "relabelled")["status"]).get("observedGeneration")
                        == generation and s, what="the edit observed")
    assert job_pods(kube) == [name] and not pod_named(kube, name)["metadata"].get("deletionTimestamp")
    assert status["phase"] == "Running" and status["attempt"] == 0 and status.get("preemptions", 0) == 0
    assert "WorkerPreempted" not in events(kube, "relabelled")


def test_a_worker_whose_owner_reference_was_removed_is_adopted_back_and_goes_with_its_job(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("disowned", workers=2))
    pods = running_pods(kube, "disowned", 2)
    uid = get_json(kube, "tj", "disowned")["metadata"]["uid"]
    name = pods[1]["metadata"]["name"]
    kube.kubectl("patch", "pod", name, "--type=json", "-p", '[{"op": "remove", "path": "/metadata/ownerReferences"}]')
    eventually(lambda: [r.get("uid") for r in (pod_named(kube, name) or {}).get("metadata", {})
                        .get("ownerReferences") or [] if r.get("controller")] == [uid], what="the worker adopted back")
    assert job_pods(kube) == sorted(p["metadata"]["name"] for p in pods)
    assert get_json(kube, "tj", "disowned")["status"].get("preemptions", 0) == 0
    # deleting the job takes the adopted worker with it (the garbage collector follows the owner reference)
    kube.kubectl("delete", "tj", "disowned", "--wait=true")
    eventually(lambda: gone_or_going(kube, name), what="the adopted worker deleted with its job")


def test_an_orphaned_worker_of_a_job_deleted_while_the_operator_was_down_is_ended(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("abandoned"))
    [pod] = running_pods(kube, "abandoned", 1)
    name = pod["metadata"]["name"]
    operator.stop()
    kube.kubectl("patch", "pod", name, "--type=json", "-p", '[{"op": "remove", "path": "/metadata/ownerReferences"}]')
    kube.kubectl("delete", "tj", "abandoned", "--wait=true")
    assert pod_named(kube, name) is not None  # nothing owns it: the garbage collector leaves it running
    operator.start()
    eventually(lambda: gone_or_going(kube, name), 60, "the orphan ended")
    still_reconciling(kube)


def test_an_orphaned_revision_is_adopted_back_by_its_model_service(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, model_service("keeper"))
    [revision] = eventually(lambda: list(deployments(kube, "keeper")), what="the revision")
    uid = get_json(kube, "ms", "keeper")["metadata"]["uid"]
    kube.kubectl("patch", "deployment", revision, "--type=json", "-p",
                 '[{"op": "remove", "path": "/metadata/ownerReferences"}]')
    kube.kubectl("label", "deployment", revision, "app.kubernetes.io/managed-by-")
    eventually(lambda: [r.get("uid") for r in get_json(kube, "deployment", revision)["metadata"]
                        .get("ownerReferences") or []] == [uid], what="the revision adopted back")
    assert get_json(kube, "deployment", revision)["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelops"
    assert condition(get_json(kube, "ms", "keeper"), "Stalled").get("status") != "True"


def test_a_worker_stripped_of_owner_and_claim_is_ended_and_replaced_never_alongside(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("stripped"))
    [pod] = running_pods(kube, "stripped", 1)
    name = pod["metadata"]["name"]
    phase_is(kube, "stripped", "Running")
    kube.kubectl("patch", "pod", name, "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/metadata/ownerReferences"},
        {"op": "remove", "path": "/metadata/annotations/modelops.dev~1owner"}]))
    together = []

    def replaced() -> bool:
        names = job_pods(kube)
        if name in names and len(names) > 1:
            together.append(names)
        return names == ["stripped-a1-w0"] and bool(running_pods(kube, "stripped", 1))
    eventually(replaced, 60, "the untrusted worker ended and attempt 1 started")
    assert together == [], f"two attempts' workers existed at once: {together}"
    status = phase_is(kube, "stripped", "Running")["status"]
    assert status["attempt"] == 1 and status["preemptions"] == 1


def test_a_serving_pod_its_replicaset_let_go_of_after_a_relabel_is_ended(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, model_service("quarantine"))
    [revision] = eventually(lambda: list(deployments(kube, "quarantine")), what="the revision")
    [pod] = eventually(lambda: [p["metadata"]["name"] for p in get_json(kube, "pods")["items"]
                                if p["metadata"]["name"].startswith(revision)], 60, "the serving pod")
    kube.kubectl("label", "pod", pod, "--overwrite", "modelops.dev/revision=elsewhere",
                 "app.kubernetes.io/managed-by=someone")
    eventually(lambda: gone_or_going(kube, pod), 60, "the released serving pod ended")
    replacement = eventually(lambda: [p for p in get_json(kube, "pods")["items"] if p["metadata"]["name"] != pod
                                      and p["metadata"]["name"].startswith(revision)], 60, "its replacement")
    assert replacement[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"


def test_a_revision_whose_labels_were_overwritten_gets_them_back_and_keeps_its_version(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, model_service("labelled", version=3))
    [revision] = eventually(lambda: list(deployments(kube, "labelled")), what="the revision")
    eventually(lambda: ms_status(kube, "labelled").get("stable", {}).get("version") == 3, what="version 3 recorded")
    kube.kubectl("label", "deployment", revision, "--overwrite", "modelops.dev/model-version=x",
                 "modelops.dev/revision=elsewhere")
    eventually(lambda: (get_json(kube, "deployment", revision)["metadata"]["labels"].get("modelops.dev/revision")
                        == revision), what="the labels put back")
    labels = get_json(kube, "deployment", revision)["metadata"]["labels"]
    assert labels["modelops.dev/model-version"] == "3"
    assert ms_status(kube, "labelled")["stable"]["version"] == 3
