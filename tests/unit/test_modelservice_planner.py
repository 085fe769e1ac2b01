"""ModelService builders and the per-pass plan: revisions, mounts, gates, splits, deletions, status."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from modelops.api.modelservice import ModelServiceSpec
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import (
    ANNOTATION_REJECTED, ANNOTATION_ROLE, ObservedRevision, PlanInputs, plan_revisions, rollout_state)
from modelops.rollout.canary import Decision, RolloutState
from modelops.triton.check import compare_metadata
from modelops.triton.config import python_model_source

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
MS = build.ServiceMeta("digits", "ml", "uid-9", 2)
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def spec(**overrides: Any) -> ModelServiceSpec:
    base = {"model": {"name": "digits", "version": 3, "signature": SIGNATURE},
            "repository": {"hostPath": {"path": "/srv/models"}}}
    return ModelServiceSpec.model_validate(base | overrides)


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


def test_revision_names_are_deterministic_and_track_serving_settings() -> None:
    target = build.Target(3, SIGNATURE)
    name = build.revision_name(MS, spec(), target)
    assert name.startswith("digits-v3-") and name == build.revision_name(MS, spec(), target)
    assert build.revision_name(MS, spec(triton={"maxBatchSize": 8}), target) != name
    assert build.revision_name(MS, spec(), build.Target(4, SIGNATURE)).startswith("digits-v4-")


def test_deployment_pins_the_version_and_gates_traffic_on_the_model_check() -> None:
    rev = "digits-v3-abcde"
    dep = build.deployment(MS, spec(resources={"gpus": 1}), rev, build.Target(3, SIGNATURE), replicas=2)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert dep["spec"]["replicas"] == 2
    assert "--model-control-mode=explicit" in container["args"] and "--load-model=digits" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert [p["containerPort"] for p in container["ports"]] == [8000, 8001, 8002]
    assert {"name": "model-repository", "mountPath": "/models/digits/3", "subPath": "digits/3",
            "readOnly": True} in container["volumeMounts"]
    assert {"name": "model-config", "mountPath": "/models/digits/config.pbtxt", "subPath": "config.pbtxt",
            "readOnly": True} in container["volumeMounts"]
    assert pod["readinessGates"] == [{"conditionType": "modelops.dev/model-ready"}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["modelops.dev/model-service"] == "digits" and labels["modelops.dev/revision"] == rev
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelService"


def test_config_map_renders_serving_settings_with_the_version_pinned() -> None:
    s = spec(triton={"backend": "python", "maxBatchSize": 32, "instanceCount": 2,
                     "dynamicBatching": {"preferredBatchSizes": [8, 16], "maxQueueDelayMicroseconds": 500}})
    text = build.config_map(MS, s, "digits-v3-abcde", build.Target(3, SIGNATURE))["data"]["config.pbtxt"]
    for line in ('backend: "python"', "max_batch_size: 32", "versions: [ 3 ]", "count: 2",
                 "preferred_batch_size: [ 8, 16 ]", "max_queue_delay_microseconds: 500", 'name: "INPUT__0"'):
        assert line in text


def test_python_backend_serves_every_version_with_the_operators_runtime() -> None:
    """The runtime is the ConfigMap's model.py, the only file Triton's repository (/serving) has besides
    config.pbtxt; the version folder is mounted apart, read-only, and named in config.pbtxt, so a model.py an
    older trainer left in it is never loaded, and no mount point lies inside another (read-only) mount."""
    target = build.Target(3, SIGNATURE)
    s = spec(triton={"backend": "python"})
    data = build.config_map(MS, s, "digits-v3-abcde", target)["data"]
    assert data["model.py"] == python_model_source() and "class TritonPythonModel" in data["model.py"]
    assert '"VERSION_DIRECTORY"\n  value: { string_value: "/models/digits/3" }' in data["config.pbtxt"]
    pod = build.deployment(MS, s, "digits-v3-abcde", target, 1)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "--model-repository=/serving"
    assert container["volumeMounts"] == [
        {"name": "model-repository", "mountPath": "/models/digits/3", "subPath": "digits/3", "readOnly": True},
        {"name": "model-config", "mountPath": "/serving/digits/config.pbtxt", "subPath": "config.pbtxt",
         "readOnly": True},
        {"name": "model-config", "mountPath": "/serving/digits/3/model.py", "subPath": "model.py", "readOnly": True}]
    assert {"name": "model-config", "configMap": {"name": "digits-v3-abcde"}} in pod["volumes"]
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert not [(p, q) for p in paths for q in paths if p.startswith(q + "/")]
    # pytorch: Triton loads model.pt from the version folder itself, and needs no runtime
    pytorch = build.config_map(MS, spec(), "r", target)["data"]
    assert list(pytorch) == ["config.pbtxt"] and "VERSION_DIRECTORY" not in pytorch["config.pbtxt"]
    args = build.deployment(MS, spec(), "r", target, 1)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "--model-repository=/models"


def test_a_new_runtime_rolls_the_python_backend_revisions_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The revision's hash covers the ConfigMap's data: an operator release with another runtime gives
    python-backend revisions new names (a canary, as any serving change), and leaves pytorch ones alone."""
    target = build.Target(3, SIGNATURE)
    python, pytorch = spec(triton={"backend": "python"}), spec()
    before = build.revision_name(MS, python, target), build.revision_name(MS, pytorch, target)
    monkeypatch.setattr(build, "python_model_source", lambda: python_model_source() + "# the next release\n")
    assert build.config_map(MS, python, "r", target)["data"]["model.py"].endswith("# the next release\n")
    assert build.revision_name(MS, python, target) != before[0]
    assert build.revision_name(MS, pytorch, target) == before[1]


def test_object_store_repository_is_passed_to_triton() -> None:
    s = spec(repository={"uri": "s3://bucket/models"})
    container = build.deployment(MS, s, "r", build.Target(3, SIGNATURE), 1)["spec"]["template"]["spec"]
    assert container["containers"][0]["args"][0] == "--model-repository=s3://bucket/models"
    assert container["volumes"] == []


@pytest.mark.parametrize(("total", "weight", "split"), [
    (1, 0, (1, 0)), (1, 20, (1, 1)), (4, 20, (3, 1)), (4, 50, (2, 2)), (10, 20, (8, 2)), (4, 100, (0, 4)),
    (0, 20, (0, 0)), (2, 90, (1, 1)),
])
def test_replica_split(total: int, weight: int, split: tuple[int, int]) -> None:
    assert build.split_replicas(total, weight) == split


def test_hpa_targets_the_scale_subresource() -> None:
    s = spec(autoscaling={"minReplicas": 1, "maxReplicas": 5, "target": 0.5, "provider": "hpa"})
    hpa = build.horizontal_pod_autoscaler(MS, s)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService",
                                             "name": "digits"}
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "500m"
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def inputs(decision: Decision | None, observed: dict[str, ObservedRevision], total: int = 4,
           **kw: Any) -> PlanInputs:
    s = spec()
    target = build.Target(3, SIGNATURE)
    return PlanInputs(meta=MS, spec=s, desired=build.revision_name(MS, s, target), target=target,
                      decision=decision, waiting="", observed=observed, total=total,
                      previous=kw.pop("previous", {}), now=NOW, **kw)


def test_canary_pass_applies_desired_and_scales_the_old_stable() -> None:
    desired = build.revision_name(MS, spec(), build.Target(3, SIGNATURE))
    state = RolloutState(stable="digits-v2-old00", stable_version=2, canary=desired, canary_version=3,
                         step_started_at=NOW, started_at=NOW)
    observed = {"digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 4, 4),
                desired: ObservedRevision(desired, 3, 1, 0)}
    plan = plan_revisions(inputs(Decision(state, "Waiting", "pausing", weight=20), observed))
    assert kinds(plan.apply) == ["Service/digits", f"ConfigMap/{desired}", f"Deployment/{desired}"]
    assert plan.apply[2]["spec"]["replicas"] == 1
    assert plan.apply[2]["metadata"]["annotations"][ANNOTATION_ROLE] == "canary"
    # surge: while the canary pod does not serve, the stable keeps all 4 replicas
    assert plan.patch == {"digits-v2-old00": {"metadata": {"annotations": {ANNOTATION_ROLE: "stable"}}}}
    assert plan.delete == []
    status = plan.status
    assert status["phase"] == "Progressing" and status["canarySummary"] == "v3 20% (step 1/2)"
    assert status["stable"]["version"] == 2 and status["modelVersion"] == 2
    assert status["selector"] == "modelops.dev/model-service=digits" and status["replicas"] == 5
    # once it serves, the stable gives up one replica for it
    observed[desired] = ObservedRevision(desired, 3, 1, 1)
    plan = plan_revisions(inputs(Decision(state, "Waiting", "pausing", weight=20), observed))
    assert plan.patch["digits-v2-old00"]["spec"] == {"replicas": 3} and plan.status["replicas"] == 4


def test_rollback_deletes_the_canary_and_leaves_stable_serving() -> None:
    state = RolloutState(stable="digits-v2-old00", stable_version=2, rejected="digits-v3-bad00")
    observed = {"digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 3, 3),
                "digits-v3-bad00": ObservedRevision("digits-v3-bad00", 3, 1, 0, "failed to load")}
    plan = plan_revisions(inputs(Decision(state, "RolledBack", "model check failed"), observed))
    assert ("apps/v1", "Deployment", "digits-v3-bad00") in plan.delete
    assert ("apps/v1", "Deployment", "digits-v2-old00") not in plan.delete
    assert plan.patch == {"digits-v2-old00": {"spec": {"replicas": 4}, "metadata": {"annotations": {
        ANNOTATION_ROLE: "stable", ANNOTATION_REJECTED: "digits-v3-bad00"}}}}
    assert plan.status["phase"] == "Degraded"
    conditions = {c["type"]: c for c in plan.status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["RolledBack"]["status"] == "True"
    assert conditions["Stalled"]["status"] == "True"
    assert [(e.type, e.reason) for e in plan.events][0] == ("Warning", "RolledBack")


def test_old_stable_is_kept_until_the_new_one_serves_in_full() -> None:
    desired = build.revision_name(MS, spec(), build.Target(3, SIGNATURE))
    promoted = RolloutState(stable=desired, stable_version=3)
    half = {desired: ObservedRevision(desired, 3, 4, 2), "digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 3, 3)}
    assert plan_revisions(inputs(Decision(promoted, "Promoted", "ok"), half)).delete == []
    full = {**half, desired: ObservedRevision(desired, 3, 4, 4)}
    deleted = plan_revisions(inputs(Decision(promoted, "Steady", "ok"), full)).delete
    assert ("apps/v1", "Deployment", "digits-v2-old00") in deleted
    assert plan_revisions(inputs(Decision(promoted, "Steady", "ok"), full)).status["phase"] == "Ready"


def test_metadata_comparison() -> None:
    served = {"name": "digits", "versions": ["3"], "inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                                                 "shape": [-1, 1, 8, 8]}],
              "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 10]}]}
    assert compare_metadata(served, SIGNATURE, version=3) is None
    wrong = {**served, "outputs": [{"name": "OUTPUT__0", "datatype": "FP16", "shape": [-1, 9]}]}
    problems = compare_metadata(wrong, SIGNATURE, version=3)
    assert problems and "datatype FP16 != FP32" in problems and "shape [-1, 9] != [-1, 10]" in problems
    assert "version 3 not among" in (compare_metadata({**served, "versions": ["4"]}, SIGNATURE, version=3) or "")


# ---- the rollout is rebuilt from the Deployments, not from status -------------------------------------------


def revision(name: str, version: int, role: str | None = None, **annotations: str) -> ObservedRevision:
    recorded = {**({ANNOTATION_ROLE: role} if role else {}), **annotations}
    return ObservedRevision(name, version, 1, 1, annotations=recorded, created=f"2026-01-01T00:00:0{version}Z")


def test_a_wiped_or_forged_status_does_not_change_the_rollout_the_deployments_record() -> None:
    observed = {"digits-v2-a": revision("digits-v2-a", 2, "stable"),
                "digits-v3-b": revision("digits-v3-b", 3, "canary", **{"modelops.dev/canary-step": "1"})}
    for status in ({}, {"stable": {"name": "digits-v3-b", "version": 3}},
                   {"stable": "garbage", "canary": ["x"]}):
        state, warning = rollout_state(observed, status)
        assert (state.stable, state.canary, state.step) == ("digits-v2-a", "digits-v3-b", 1)
        assert state.stable_version == 2 and state.canary_version == 3
    assert "following the Deployments" in rollout_state(observed, {"stable": {"name": "digits-v3-b"}})[1]


def test_status_is_only_a_fallback_for_deployments_that_record_nothing_and_only_for_names_that_exist() -> None:
    observed = {"digits-v2-a": revision("digits-v2-a", 2)}
    state, _ = rollout_state(observed, {"stable": {"name": "digits-v2-a", "version": 2}})
    assert state.stable == "digits-v2-a"
    state, _ = rollout_state(observed, {"stable": {"name": "someone-elses", "version": 9}})
    assert state.stable is None


def test_the_rejected_revision_is_recorded_on_the_stable_deployment() -> None:
    observed = {"digits-v2-a": revision("digits-v2-a", 2, "stable", **{ANNOTATION_REJECTED: "digits-v3-bad"})}
    assert rollout_state(observed, {})[0].rejected == "digits-v3-bad"


def test_the_revision_name_follows_what_shapes_the_pods_not_the_spec_fields() -> None:
    target = build.Target(3, SIGNATURE)
    base = build.revision_name(MS, spec(), target)
    # Fields that do not render into the pods (replicas, the rollout, autoscaling, a defaulted field spelled
    # out) keep the name: an operator upgrade that adds such a field rolls nothing.
    for same in (spec(replicas=5), spec(rollout={"steps": [{"weight": 10}]}),
                 spec(resources={"gpus": 0})):
        assert build.revision_name(MS, same, target) == base
    # What changes the pods or their config.pbtxt changes the name: a new revision, a canary.
    for different in (spec(triton={"image": "triton:other"}), spec(triton={"maxBatchSize": 8}),
                      spec(resources={"cpu": "2"})):
        assert build.revision_name(MS, different, target) != base
    assert build.revision_name(MS, spec(), build.Target(4, SIGNATURE)).startswith("digits-v4-")


def test_serving_pods_carry_their_priority_class_to_preempt_training() -> None:
    pod_spec = build.deployment(MS, spec(priorityClassName="modelops-serving"), "r", build.Target(3, SIGNATURE),
                                1)["spec"]["template"]["spec"]
    assert pod_spec["priorityClassName"] == "modelops-serving"
    # unset: no field, so revisions rendered before the field existed keep their names
    assert "priorityClassName" not in build.deployment(MS, spec(), "r", build.Target(3, SIGNATURE), 1)["spec"]["template"]["spec"]


# ---- why replicas wait: the scheduler's or kubelet's words, one Event per change ---------------------------

UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def test_replicas_that_cannot_start_say_why_once_like_a_trainingjobs_workers() -> None:
    from modelops.resources.pods import Wait

    desired = build.revision_name(MS, spec(), build.Target(3, SIGNATURE))
    state = RolloutState(stable=desired, stable_version=3)
    stuck = {desired: ObservedRevision(desired, 3, 1, 0, wait=Wait("Unschedulable", UNSCHEDULABLE),
                                       wait_pod=f"{desired}-abc", waiting=1)}
    first = plan_revisions(inputs(Decision(state, "Steady", ""), stuck))
    ready = next(c for c in first.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"
    assert ready["message"] == f"1/1 replicas of revision {desired} cannot start: pod {desired}-abc " \
                               f"Unschedulable: {UNSCHEDULABLE}"
    assert [(e.type, e.reason, e.message) for e in first.events] == [("Warning", "Unschedulable", ready["message"])]
    # the next pass finds it said: no new Event, also when another pod waits for the same reason
    again = {desired: ObservedRevision(desired, 3, 1, 0, wait=Wait("Unschedulable", UNSCHEDULABLE),
                                       wait_pod=f"{desired}-xyz", waiting=1)}
    assert plan_revisions(inputs(Decision(state, "Steady", ""), again, previous=first.status)).events == []
    # the kubelet's words instead: a new Event
    crash = {desired: ObservedRevision(desired, 3, 1, 0, wait=Wait("CrashLoopBackOff", "back-off 5m0s restarting"),
                                       wait_pod=f"{desired}-abc", waiting=1)}
    third = plan_revisions(inputs(Decision(state, "Steady", ""), crash, previous=first.status))
    assert [(e.type, e.reason) for e in third.events] == [("Warning", "CrashLoopBackOff")]
    # once it serves, the wait is gone from Ready
    fine = plan_revisions(inputs(Decision(state, "Steady", ""), {desired: ObservedRevision(desired, 3, 1, 1)},
                                 previous=third.status))
    assert next(c for c in fine.status["conditions"] if c["type"] == "Ready")["reason"] == "Serving"


def test_pods_the_replicaset_cannot_create_say_so_and_a_serving_revision_says_what_the_rest_wait_for() -> None:
    from modelops.resources.pods import Wait

    desired = build.revision_name(MS, spec(), build.Target(3, SIGNATURE))
    state = RolloutState(stable=desired, stable_version=3)
    quota = Wait("FailedCreate", 'pods "x" is forbidden: exceeded quota: gpus, requested: nvidia.com/gpu=16')
    plan = plan_revisions(inputs(Decision(state, "Steady", ""), {desired: ObservedRevision(desired, 3, 2, 1, wait=quota)},
                                 total=2))
    ready = next(c for c in plan.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Serving"
    assert ready["message"] == f"1/2 replicas serving version 3; revision {desired} cannot create its pods: " \
                               f"FailedCreate: {quota.message}"
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Serving"), ("Warning", "FailedCreate")]


def test_a_pods_wait_is_read_as_the_scheduler_or_kubelet_wrote_it() -> None:
    from modelops.resources.pods import Wait, pod_wait

    assert pod_wait({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                         "reason": "Unschedulable", "message": UNSCHEDULABLE}]}) \
        == Wait("Unschedulable", UNSCHEDULABLE)
    # a serving pod crash-looping is Running, and stuck
    assert pod_wait({"phase": "Running", "containerStatuses": [{"name": "triton", "state": {"waiting": {
        "reason": "CrashLoopBackOff", "message": "back-off"}}}]}) == Wait("CrashLoopBackOff", "back-off")
    assert pod_wait({"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}) \
        is None
    assert pod_wait({"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "False"}]}) is None


# ---- a revision is known by its name, not by its labels -------------------------------------------------


def test_a_revisions_version_comes_from_its_name_and_its_labels_are_put_back() -> None:
    desired = build.revision_name(MS, spec(), build.Target(3, SIGNATURE))
    assert build.revision_version(MS, desired) == 3
    assert build.revision_version(MS, "digits-v3-zzzzz") is None  # not a name the builder gives
    assert build.revision_version(build.ServiceMeta("other", "ml", "u"), desired) is None
    old = build.revision_name(MS, spec(triton={"maxBatchSize": 4}), build.Target(2, SIGNATURE))
    state = RolloutState(stable=old, stable_version=2, canary=desired, canary_version=3, step_started_at=NOW,
                         started_at=NOW)
    garbled = {build.LABEL_SERVICE: "digits", build.LABEL_REVISION: "x", build.LABEL_VERSION: "two"}
    observed = {old: ObservedRevision(old, 2, 4, 4, labels=garbled), desired: ObservedRevision(desired, 3, 1, 0)}
    plan = plan_revisions(inputs(Decision(state, "Waiting", "pausing", weight=20), observed))
    assert plan.patch[old]["metadata"]["labels"] == {build.LABEL_REVISION: old, build.LABEL_VERSION: "2",
                                                     "app.kubernetes.io/managed-by": "modelops"}
    intact = {**garbled, build.LABEL_REVISION: old, build.LABEL_VERSION: "2", "app.kubernetes.io/managed-by": "modelops"}
    observed[old] = ObservedRevision(old, 2, 4, 4, labels=intact)
    plan = plan_revisions(inputs(Decision(state, "Waiting", "pausing", weight=20), observed))
    assert "labels" not in plan.patch.get(old, {}).get("metadata", {})
