"""Hostile input and hostile state against the real API server and operator (admission cases are in
test_admission.py). Each case: the refusal is visible on the resource (a condition and an Event naming the
cause), no object of another resource is modified, and the operator keeps reconciling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from support import condition, eventually, get_json
from test_modelservice import deployments, model_service, status as ms_status
from test_trainingjob import events, job, pods_of, report, running_pods

pytestmark = pytest.mark.cluster


def apply(kube, manifest: dict[str, Any] | str) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=manifest if isinstance(manifest, str) else json.dumps(manifest))


def stalled(kube, kind: str, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The resource says it cannot proceed, and why: Stalled=True / Ready=False with `reason`, plus an Event."""
    cond = eventually(lambda: (c := condition(get_json(kube, kind, name), "Stalled")).get("reason") == reason and c,
                      timeout, f"{kind} {name} Stalled with reason {reason}")
    assert condition(get_json(kube, kind, name), "Ready")["status"] == "False"
    eventually(lambda: reason in events(kube, name), timeout, f"a {reason} Event on {name}")
    return cond


def still_reconciling(kube) -> None:  # type: ignore[no-untyped-def]
    """After any hostile case the operator is alive and still works: a valid job gets its worker."""
    apply(kube, job("canary-of-health"))
    running_pods(kube, "canary-of-health", 1)


# ---- objects of others are never taken over -------------------------------------------------------------


def test_a_model_service_named_like_a_jobs_rendezvous_service_does_not_take_it_over(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("ddp", workers=2))
    running_pods(kube, "ddp", 2)
    before = get_json(kube, "service", "ddp-workers")
    apply(kube, model_service("ddp-workers"))
    cond = stalled(kube, "ms", "ddp-workers", "NameConflict")
    assert "Service" in cond["message"] and "TrainingJob ddp" in cond["message"]
    after = get_json(kube, "service", "ddp-workers")
    assert after["spec"]["selector"] == before["spec"]["selector"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    still_reconciling(kube)


def revision_of(name: str) -> str:
    """The revision (Deployment and ConfigMap) name the operator gives a ModelService from model_service()."""
    from modelops.api.modelservice import ModelServiceSpec
    from modelops.resources import modelservice as build

    spec = ModelServiceSpec.model_validate(json.loads(model_service(name))["spec"])
    signature = spec.model.signature.wire() if spec.model.signature else None
    return build.revision_name(build.ServiceMeta(name, "", ""), spec, build.Target(spec.model.version or 1, signature))


@pytest.mark.parametrize("kind", ["configmap", "service"])
def test_a_foreign_object_with_a_childs_name_is_refused_not_modified(kube, operator, kind: str) -> None:  # type: ignore[no-untyped-def]
    name = "squatted" if kind == "service" else revision_of("squatted")
    if kind == "service":
        kube.kubectl("create", "service", "clusterip", name, "--tcp=80:80")
    else:
        kube.kubectl("create", "configmap", name, "--from-literal=owner=someone-else")
    before = get_json(kube, kind, name)
    apply(kube, model_service("squatted"))
    stalled(kube, "ms", "squatted", "NameConflict")
    after = get_json(kube, kind, name)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert not after["metadata"].get("ownerReferences")


def test_a_foreign_pod_with_a_workers_name_is_refused_not_adopted(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("run", "squat-a0-w0", "--image=busybox", "--restart=Never")
    before = get_json(kube, "pod", "squat-a0-w0")
    apply(kube, job("squat"))
    stalled(kube, "tj", "squat", "NameConflict")
    after = get_json(kube, "pod", "squat-a0-w0")
    assert not after["metadata"].get("ownerReferences")
    assert after["metadata"].get("labels") == before["metadata"].get("labels")


def test_model_services_whose_names_normalise_alike_get_services_of_their_own(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, model_service("7even"))
    first = eventually(lambda: [s for s in get_json(kube, "services")["items"]
                                if (s["metadata"].get("ownerReferences") or [{}])[0].get("name") == "7even"],
                       what="a Service")
    squatter = first[0]["metadata"]["name"]
    apply(kube, model_service(squatter))  # named exactly like the first one's Service
    stalled(kube, "ms", squatter, "NameConflict")
    assert get_json(kube, "service", squatter)["metadata"]["ownerReferences"][0]["name"] == "7even"


# ---- refusals from the API server are visible on the resource ----------------------------------------------


@pytest.mark.parametrize(("spec", "setup", "needle"), [
    ({"priorityClassName": "no-such-class"}, None, "no-such-class"),
    ({"serviceAccountName": "no-such-account"}, None, "no-such-account"),
    ({}, ["create", "quota", "no-pods", "--hard=pods=0"], "exceeded quota"),
])
def test_a_child_the_api_server_refuses_lands_on_the_job(kube, operator, spec: dict[str, Any],  # type: ignore[no-untyped-def]
                                                         setup: list[str] | None, needle: str) -> None:
    if setup:
        kube.kubectl(*setup)
    apply(kube, job("refused", **spec))
    cond = stalled(kube, "tj", "refused", "ChildRejected")
    assert needle in cond["message"], cond["message"]
    job_now = get_json(kube, "tj", "refused")
    assert job_now["status"]["observedGeneration"] == job_now["metadata"]["generation"]
    assert pods_of(kube, "refused") == []
    if setup:
        kube.kubectl("delete", "quota", "no-pods")
    kube.kubectl("delete", "tj", "refused")
    still_reconciling(kube)


# ---- status is an observation --------------------------------------------------------------------------


def forge_status(kube, kind: str, name: str, status: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("patch", kind, name, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))


def test_a_forged_succeeded_phase_does_not_stop_a_running_job(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("forged"))
    [pod] = running_pods(kube, "forged", 1)
    eventually(lambda: get_json(kube, "tj", "forged").get("status", {}).get("phase") == "Running", what="Running")
    forge_status(kube, "tj", "forged", {"phase": "Succeeded", "completionTime": "2001-01-01T00:00:00Z"})
    eventually(lambda: get_json(kube, "tj", "forged")["status"]["phase"] == "Running", what="the phase corrected")
    assert [p["metadata"]["name"] for p in pods_of(kube, "forged")] == [pod["metadata"]["name"]]
    assert not get_json(kube, "pod", pod["metadata"]["name"])["metadata"].get("deletionTimestamp")


def test_a_wiped_stable_revision_does_not_promote_the_canary(kube, operator) -> None:  # type: ignore[no-untyped-def]
    rollout = {"steps": [{"weight": 50, "pauseSeconds": 600}], "progressDeadlineSeconds": 600}
    apply(kube, model_service("steady", replicas=2, rollout=rollout))
    [stable] = eventually(lambda: list(deployments(kube, "steady")), what="the stable revision")
    apply(kube, model_service("steady", version=2, replicas=2, rollout=rollout))
    eventually(lambda: len(deployments(kube, "steady")) == 2, what="the canary revision")
    for forged in ({"stable": None}, {"stable": {"name": "not-a-revision", "version": 9}, "canary": None}):
        forge_status(kube, "ms", "steady", forged)
        eventually(lambda: (ms_status(kube, "steady").get("stable") or {}).get("name") == stable,
                   what="status.stable rebuilt from the Deployments")
        current = deployments(kube, "steady")
        assert set(current) >= {stable} and len(current) == 2
        # still a canary (kwok: its pod never serves, so the stable keeps both replicas): not promoted
        assert current[stable]["spec"]["replicas"] == 2 and len(current) == 2


# ---- garbage on our own children never stops the loop ----------------------------------------------------


def test_garbage_labels_and_annotations_on_workers_do_not_stop_the_loop(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("garbage", workers=2))
    pods = running_pods(kube, "garbage", 2)
    kube.kubectl("label", "pod", pods[1]["metadata"]["name"], "--overwrite", "modelops.dev/rank=two")
    kube.kubectl("annotate", "pod", pods[0]["metadata"]["name"], "--overwrite", 'modelops.dev/pod-spec=["x"]')
    report(kube, pods[0], {"epoch": "many", "loss": "low", "model": {"name": "../../x", "version": -4}})
    # A spec edit afterwards is still observed (the pass did not die on the garbage).
    kube.kubectl("patch", "tj", "garbage", "--type=merge", "-p", '{"spec": {"ttlSecondsAfterFinished": 600}}')
    generation = get_json(kube, "tj", "garbage")["metadata"]["generation"]
    eventually(lambda: get_json(kube, "tj", "garbage")["status"].get("observedGeneration") == generation,
               what="the edit observed")
    assert "model" not in get_json(kube, "tj", "garbage")["status"]


def test_a_hand_deleted_rendezvous_service_comes_back(kube, operator) -> None:  # type: ignore[no-untyped-def]
    apply(kube, job("rdv", workers=2))
    running_pods(kube, "rdv", 2)
    kube.kubectl("delete", "service", "rdv-workers")
    eventually(lambda: kube.cluster.kubectl("-n", kube.namespace, "get", "service", "rdv-workers", check=False)
               .returncode == 0, what="the Service re-created")


# ---- Unicode survives every write --------------------------------------------------------------------------


def test_characters_outside_the_bmp_reach_the_pods_intact(kube, operator) -> None:  # type: ignore[no-untyped-def]
    value = "train 🚀 on ∑ data — ok"
    apply(kube, job("unicode", env=[{"name": "GREETING", "value": value}]))
    [pod] = running_pods(kube, "unicode", 1)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["GREETING"] == value


def test_characters_outside_the_bmp_survive_a_server_side_apply(kube, operator) -> None:  # type: ignore[no-untyped-def]
    arg = "--log-info-tag=🚀"
    apply(kube, model_service("emoji", triton={"extraArgs": [arg]}))
    [revision] = eventually(lambda: list(deployments(kube, "emoji")), what="the revision")
    # A hand edit makes the operator put its Deployment back with server-side apply: the body carries the emoji.
    kube.kubectl("patch", "deployment", revision, "--type=json", "-p",
                 '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"evil:latest"}]')
    restored = eventually(lambda: (d := deployments(kube, "emoji")[revision])["spec"]["template"]["spec"][
        "containers"][0]["image"] != "evil:latest" and d, what="the image put back")
    assert arg in restored["spec"]["template"]["spec"]["containers"][0]["args"]
    assert condition(get_json(kube, "ms", "emoji"), "Stalled")["status"] == "False"


# ---- no namespace is crossed -------------------------------------------------------------------------------


def test_a_followed_job_is_looked_up_only_in_the_model_services_namespace(kube, operator) -> None:  # type: ignore[no-untyped-def]
    other = f"{kube.namespace}-other"
    kube.cluster.kubectl("create", "namespace", other)
    try:
        body = json.loads(job("elsewhere"))
        body["metadata"]["namespace"] = other
        kube.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body))
        follow = json.loads(model_service("follower"))
        follow["spec"]["model"] = {"name": "digits", "fromTrainingJob": "elsewhere"}
        apply(kube, follow)
        eventually(lambda: "TrainingJob elsewhere not found" in
                   condition(get_json(kube, "ms", "follower"), "Reconciling").get("message", ""),
                   what="the job in another namespace is not found")
        assert deployments(kube, "follower") == {}
    finally:
        kube.cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
