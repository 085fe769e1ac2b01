"""Hostile state against the real API server and operator: our children hand-edited (labels overwritten,
owner references removed), serving pods that cannot start, a followed TrainingJob deleted. Each case: the
resource says what happened, nothing of ours is left running unowned, no two attempts' workers run at once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import condition, eventually, get_json
from test_hostile import apply
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
