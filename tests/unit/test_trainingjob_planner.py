"""The TrainingJob planner: pod specs, DDP env, restarts, deadlines, suspend, TTL and status from pod sets."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelops.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from modelops.kube import status_patch
from modelops.resources import trainingjob as tj
from modelops.resources.naming import dns1035_label, dns_label

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
JOB = tj.JobMeta(name="digits", namespace="ml", uid="uid-1", generation=3)


@pytest.fixture(autouse=True)
def statuses_fit_the_crd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every status any test here plans is valid against the model the CRD's status schema is generated from
    (api/trainingjob.TrainingJobStatus) and reads back through it unchanged: no field the API server would
    prune or refuse. (The planner builds plain dicts: building through the model would drop a condition's
    null observedGeneration and re-type carried-over values, so the wire output would change.)"""
    planned = tj.plan

    def checked(*args: Any, **kwargs: Any) -> tj.Plan:
        result = planned(*args, **kwargs)
        assert TrainingJobStatus.model_validate(result.status).wire() == result.status
        return result

    monkeypatch.setattr(tj, "plan", checked)


def spec(**overrides: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/srv/models"}}}}
    return TrainingJobSpec.model_validate(base | overrides)


def pod(rank: int, phase: str = "Running", attempt: int = 0, exit_code: int | None = None, **kw: Any) -> tj.ObservedPod:
    return tj.ObservedPod(name=tj.pod_name("digits", attempt, rank), rank=rank, attempt=attempt, phase=phase,
                          exit_code=exit_code, **kw)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(status: dict[str, Any], cond_type: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == cond_type)


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [f"{o['kind']}/{o['metadata']['name']}" for o in objects]


# ---- pods ------------------------------------------------------------------------


def test_single_worker_pod_runs_the_builtin_trainer() -> None:
    p = tj.worker_pod(JOB, spec(trainer={"epochs": 3, "model": "cnn"}), attempt=0, rank=0)
    container = p["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "modelops.trainer"]
    args = container["args"]
    assert args[args.index("--epochs") + 1] == "3"
    assert args[args.index("--dataset") + 1] == "digits"
    assert args[args.index("--repository") + 1] == "/models"
    assert args[args.index("--model-name") + 1] == "digits"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["WORLD_SIZE"] == "1" and env["RANK"] == "0" and "MASTER_ADDR" not in env
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert p["spec"]["restartPolicy"] == "Never"
    assert "hostname" not in p["spec"] and "tolerations" not in p["spec"]
    assert p["spec"]["volumes"] == [{"name": "model-repository",
                                     "hostPath": {"path": "/srv/models", "type": "DirectoryOrCreate"}}]
    owner = p["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "name": "digits",
                     "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}


def test_ddp_pods_get_rendezvous_env_gpus_and_toleration() -> None:
    s = spec(workers=2, resources={"gpus": 1, "cpu": "4", "memory": "8Gi"},
             tolerations=[{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
             nodeSelector={"pool": "a100"}, priorityClassName="training")
    pods = [tj.worker_pod(JOB, s, attempt=0, rank=r) for r in range(2)]
    for rank, p in enumerate(pods):
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        assert env["WORLD_SIZE"] == "2" and env["RANK"] == str(rank)
        assert env["MASTER_ADDR"] == "digits-w0.digits-workers" and env["MASTER_PORT"] == "29500"
        assert env["PET_NODE_RANK"] == str(rank)
        assert p["spec"]["hostname"] == f"digits-w{rank}" and p["spec"]["subdomain"] == "digits-workers"
        limits = p["spec"]["containers"][0]["resources"]["limits"]
        assert limits == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["spec"]["tolerations"]
        assert {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in p["spec"]["tolerations"]
        assert p["spec"]["nodeSelector"] == {"pool": "a100"}
        assert p["spec"]["priorityClassName"] == "training"
    service = tj.rendezvous_service(JOB)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]


def test_sequence_hyperparameters_reach_the_trainer() -> None:
    trainer = {"dataset": "synthetic-sequence", "model": "transformer", "embeddingDim": 24, "layers": 2,
               "heads": 3, "maxLength": 40, "vocabSize": 500, "hiddenSizes": [48, 16]}
    args = tj.worker_pod(JOB, spec(trainer=trainer), attempt=0, rank=0)["spec"]["containers"][0]["args"]
    flags = {flag: args[args.index(flag) + 1] for flag in ("--dataset", "--model", "--embedding-dim", "--layers",
                                                           "--heads", "--max-length", "--vocab-size", "--hidden-sizes")}
    assert flags == {"--dataset": "synthetic-sequence", "--model": "transformer", "--embedding-dim": "24",
                     "--layers": "2", "--heads": "3", "--max-length": "40", "--vocab-size": "500",
                     "--hidden-sizes": "48,16"}
    assert "--vocab-size" not in tj.worker_pod(JOB, spec(trainer={"model": "gru"}), attempt=0, rank=0)[
        "spec"]["containers"][0]["args"]
    with pytest.raises(ValueError, match="embeddingDim must be a multiple of heads"):
        spec(trainer={"model": "transformer", "embeddingDim": 10, "heads": 4})


def test_custom_command_keeps_rendezvous_and_drops_trainer_args() -> None:
    p = tj.worker_pod(JOB, spec(command=["torchrun", "train.py"], workers=2), attempt=0, rank=1)
    container = p["spec"]["containers"][0]
    assert container["command"] == ["torchrun", "train.py"] and container["args"] == []
    assert {"name": "PET_NNODES", "value": "2"} in container["env"]


def test_pvc_repository_is_mounted() -> None:
    s = spec(output={"modelName": "m", "repository": {"persistentVolumeClaim": {"claimName": "models"},
                                                      "mountPath": "/repo"}})
    p = tj.worker_pod(JOB, s, attempt=0, rank=0)
    assert p["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models"}
    assert p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/repo"


@pytest.mark.parametrize("name", ["a" * 253, "x.y.z", "9lives", "Mixed.Case-" + "b" * 80])
def test_long_or_dotted_names_stay_valid_and_distinct(name: str) -> None:
    names = {tj.pod_name(name, 12, 127), tj.service_name(name), tj.worker_hostname(name, 3), tj.job_label(name)}
    for n in names:
        assert len(n) <= 63 and n == n.lower() and n[0].isalnum() and n[-1].isalnum() and "." not in n
    assert tj.service_name(name)[0].isalpha()
    assert tj.pod_name(name, 0, 0) != tj.pod_name(name + "x", 0, 0)
    assert dns_label("short") == "short" and dns1035_label("short", "-s") == "short-s"


# ---- plans -----------------------------------------------------------------------


def test_new_job_creates_service_and_all_workers() -> None:
    result = tj.plan(JOB, spec(workers=2), [], {}, NOW)
    assert kinds(result.apply) == ["Service/digits-workers", "Pod/digits-a0-w0", "Pod/digits-a0-w1"]
    assert result.status["phase"] == "Pending"
    assert result.status["startTime"] == stamp(NOW)
    assert result.status["observedGeneration"] == 3
    assert condition(result.status, "Reconciling")["status"] == "True"
    assert condition(result.status, "Ready")["status"] == "False"


def test_partially_created_group_is_completed_without_duplicates() -> None:
    result = tj.plan(JOB, spec(workers=3), [pod(0, "Pending")], {}, NOW)
    assert kinds(result.apply) == ["Service/digits-workers", "Pod/digits-a0-w1", "Pod/digits-a0-w2"]


def test_running_group_reports_running_and_mirrors_progress() -> None:
    report = {"phase": "Training", "epoch": 3, "epochs": 10, "loss": 0.25, "valAccuracy": 0.9375, "step": 60}
    pods = [pod(0, progress=report), pod(1)]
    previous = {"phase": "Pending", "startTime": stamp(NOW), "conditions": []}
    result = tj.plan(JOB, spec(workers=2), pods, previous, NOW)
    # Only the rendezvous Service is desired (so a deleted one comes back); the controller writes it
    # only when it differs from the one that exists.
    assert kinds(result.apply) == ["Service/digits-workers"] and result.delete_pods == []
    assert result.status["phase"] == "Running"
    assert result.status["workersReady"] == "2/2"
    assert result.status["progress"]["epoch"] == 3
    assert result.status["progressSummary"] == "epoch 3/10 loss 0.250 acc 0.938"
    assert [e.reason for e in result.events] == ["WorkersRunning"]


def test_status_shows_the_epoch_in_progress_and_the_last_checkpointed_one() -> None:
    """What a preemption now would cost: epoch 3 is in progress, the last saved checkpoint is epoch 1 since
    saving epoch 2 failed; the report says so and status shows it."""
    report = {"phase": "Training", "epoch": 3, "epochs": 10, "checkpointedEpoch": 1, "loss": 0.25, "step": 60,
              "checkpointError": "epoch 2 not saved: [Errno 28] No space left on device"}
    result = tj.plan(JOB, spec(), [pod(0, progress=report)], {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    progress = result.status["progress"]
    assert (progress["epoch"], progress["checkpointedEpoch"]) == (3, 1)
    assert progress["checkpointError"] == report["checkpointError"]
    assert result.status["progressSummary"] == "epoch 3/10 checkpoint 1 (last save failed) loss 0.250"
    saved = {**report, "checkpointedEpoch": 3}
    del saved["checkpointError"]
    result = tj.plan(JOB, spec(), [pod(0, progress=saved)], result.status, NOW)
    assert "checkpointError" not in result.status["progress"]
    assert result.status["progressSummary"] == "epoch 3/10 checkpoint 3 loss 0.250"


def test_the_status_patch_removes_what_a_report_dropped() -> None:
    """A merge patch merges nested objects: a checkpointError the trainer no longer reports is nulled."""
    previous = {"phase": "Running", "restarts": 0,
                "progress": {"epoch": 2, "checkpointedEpoch": 1, "checkpointError": "epoch 2 not saved: disk full"}}
    desired = {"phase": "Running", "progress": {"epoch": 2, "checkpointedEpoch": 2}}
    assert status_patch(previous, desired) == {"restarts": None,
                                               "progress": {"checkpointedEpoch": 2, "checkpointError": None}}
    assert status_patch(desired, desired) == {}


def test_a_preempted_attempt_keeps_its_checkpointed_epoch_until_the_next_one_reports() -> None:
    report = {"phase": "Training", "epoch": 5, "epochs": 10, "checkpointedEpoch": 4}
    running = tj.plan(JOB, spec(), [pod(0, progress=report)], {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    evicted = pod(0, "Failed", exit_code=143, disruption="EvictionByEvictionAPI", progress=report)
    restarted = tj.plan(JOB, spec(), [evicted], running.status, NOW)
    assert restarted.status["preemptions"] == 1 and restarted.status["progress"]["checkpointedEpoch"] == 4
    resumed = {"phase": "Training", "epoch": 4, "epochs": 10, "checkpointedEpoch": 4, "step": 400}
    later = tj.plan(JOB, spec(), [pod(0, attempt=1, progress=resumed)], restarted.status, NOW)
    assert later.status["progressSummary"] == "epoch 4/10 checkpoint 4"


def test_success_records_the_published_model() -> None:
    final = {"phase": "Succeeded", "epoch": 10, "epochs": 10, "testAccuracy": 0.97,
             "model": {"name": "digits", "version": 4, "uri": "/models/digits/4"}}
    pods = [pod(0, "Succeeded", exit_code=0, progress=final), pod(1, "Succeeded", exit_code=0)]
    result = tj.plan(JOB, spec(workers=2), pods, {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    assert result.status["phase"] == "Succeeded"
    assert result.status["model"] == {"name": "digits", "version": 4, "uri": "/models/digits/4", "testAccuracy": 0.97}
    assert result.status["completionTime"] == stamp(NOW)
    ready = condition(result.status, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "ModelPublished"
    assert condition(result.status, "Reconciling")["status"] == "False"
    assert ("Normal", "ModelPublished") in [(e.type, e.reason) for e in result.events]


def test_worker_failure_restarts_the_whole_group() -> None:
    pods = [pod(0, "Running"), pod(1, "Failed", exit_code=3, reason="Error")]
    result = tj.plan(JOB, spec(workers=2, backoffLimit=2), pods, {"startTime": stamp(NOW)}, NOW)
    assert result.delete_pods == ["digits-a0-w0"] and result.apply == []
    assert result.status["phase"] == "Pending"
    # once the survivor is gone, the next attempt starts
    pods = [pod(1, "Failed", exit_code=3, reason="Error")]
    result = tj.plan(JOB, spec(workers=2, backoffLimit=2), pods, {"startTime": stamp(NOW)}, NOW)
    assert kinds(result.apply) == ["Service/digits-workers", "Pod/digits-a1-w0", "Pod/digits-a1-w1"]
    assert result.status["restarts"] == 1
    assert [e.reason for e in result.events if e.type == "Warning"] == ["WorkerFailed"]
    assert "exit code 3" in result.events[0].message


def test_backoff_limit_exceeded_fails_the_job() -> None:
    pods = [pod(0, "Failed", attempt=0, exit_code=1), pod(0, "Failed", attempt=1, exit_code=1),
            pod(1, "Running", attempt=1)]
    result = tj.plan(JOB, spec(workers=2, backoffLimit=1), pods, {"startTime": stamp(NOW)}, NOW)
    assert result.status["phase"] == "Failed"
    failed = condition(result.status, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "exit code 1" in failed["message"]
    assert condition(result.status, "Stalled")["status"] == "True"
    assert result.delete_pods == ["digits-a1-w1"] and result.apply == []
    assert result.status["restarts"] == 1


def test_deadline_fails_the_job_and_otherwise_requeues() -> None:
    start = NOW - timedelta(seconds=100)
    previous = {"phase": "Running", "startTime": stamp(start)}
    running = [pod(0)]
    early = tj.plan(JOB, spec(activeDeadlineSeconds=300), running, previous, NOW)
    assert early.status["phase"] == "Running" and early.requeue_after == pytest.approx(200)
    late = tj.plan(JOB, spec(activeDeadlineSeconds=60), running, previous, NOW)
    assert late.status["phase"] == "Failed"
    assert condition(late.status, "Failed")["reason"] == "DeadlineExceeded"
    assert late.delete_pods == ["digits-a0-w0"]


def test_suspend_removes_workers_and_resume_starts_fresh() -> None:
    previous = {"phase": "Running", "startTime": stamp(NOW)}
    suspended = tj.plan(JOB, spec(workers=2, suspend=True), [pod(0), pod(1)], previous, NOW)
    assert suspended.delete_pods == ["digits-a0-w0", "digits-a0-w1"]
    assert suspended.status["phase"] == "Suspended" and "startTime" not in suspended.status
    assert condition(suspended.status, "Suspended")["status"] == "True"
    assert suspended.status["endedAttempts"] == {"0": "Suspended"}
    resumed = tj.plan(JOB, spec(workers=2), [], suspended.status, NOW)
    # a fresh attempt (never the names of the pods still terminating), and neither a failure nor a preemption
    assert kinds(resumed.apply)[1:] == ["Pod/digits-a1-w0", "Pod/digits-a1-w1"]
    assert "Resumed" in [e.reason for e in resumed.events]
    assert (resumed.status["restarts"], resumed.status["preemptions"]) == (0, 0)


def test_finished_job_is_final_and_ttl_deletes_it() -> None:
    done = NOW - timedelta(seconds=30)
    previous = {"phase": "Succeeded", "completionTime": stamp(done), "startTime": stamp(done),
                "model": {"name": "digits", "version": 1, "uri": "/models/digits/1"},
                "conditions": [{"type": "Succeeded", "status": "True", "reason": "ModelPublished", "message": "m"}]}
    pods = [pod(0, "Succeeded", exit_code=0)]
    waiting = tj.plan(JOB, spec(ttlSecondsAfterFinished=60), pods, previous, NOW)
    assert not waiting.delete_job and waiting.requeue_after == pytest.approx(30)
    assert waiting.apply == [] and waiting.status["phase"] == "Succeeded" and waiting.events == []
    assert waiting.status["model"]["version"] == 1
    expired = tj.plan(JOB, spec(ttlSecondsAfterFinished=10), pods, previous, NOW)
    assert expired.delete_job


def test_edit_of_running_group_is_refused_with_a_condition() -> None:
    original = spec(workers=2)
    pod_spec = json.dumps(tj.pod_shaping_spec(original), sort_keys=True)
    pods = [pod(0, pod_spec=pod_spec), pod(1, pod_spec=pod_spec)]
    result = tj.plan(JOB, spec(workers=3), pods, {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    assert result.apply == [] and result.delete_pods == []
    refused = condition(result.status, "UpdateRefused")
    assert refused["status"] == "True" and "workers 2 -> 3" in refused["message"]
    assert ("Warning", "ImmutableWhileRunning") in [(e.type, e.reason) for e in result.events]
    # control fields are not pod-shaping: changing them is fine
    ok = tj.plan(JOB, spec(workers=2, backoffLimit=9), pods, {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    assert condition(ok.status, "UpdateRefused")["status"] == "False"


def test_condition_transition_time_moves_only_on_flip() -> None:
    first = tj.plan(JOB, spec(), [pod(0)], {"startTime": stamp(NOW)}, NOW)
    later = NOW + timedelta(minutes=5)
    second = tj.plan(JOB, spec(), [pod(0)], first.status, later)
    assert condition(second.status, "Running")["lastTransitionTime"] == stamp(NOW)
    assert second.events == []


def test_observed_pod_from_a_kubernetes_pod() -> None:
    raw = {
        "metadata": {"name": "digits-a1-w0", "labels": {tj.LABEL_RANK: "0", tj.LABEL_ATTEMPT: "1"},
                     "annotations": {tj.ANNOTATION_PROGRESS: json.dumps({"epoch": 2})}},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]},
    }
    observed = tj.ObservedPod.from_pod(raw)
    assert (observed.rank, observed.attempt, observed.phase, observed.exit_code, observed.reason) == \
        (0, 1, "Failed", 137, "OOMKilled")
    assert observed.progress == {"epoch": 2} and not observed.active


def test_final_report_falls_back_to_the_termination_message() -> None:
    final = {"phase": "Succeeded", "model": {"name": "digits", "version": 2, "uri": "/models/digits/2"}}
    raw = {"metadata": {"name": "digits-a0-w0", "labels": {}},
           "status": {"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
               "exitCode": 0, "reason": "Completed", "message": json.dumps(final)}}}]}}
    observed = tj.ObservedPod.from_pod(raw)
    assert observed.progress == final
    result = tj.plan(JOB, spec(), [observed], {"phase": "Running", "startTime": stamp(NOW)}, NOW)
    assert result.status["model"]["version"] == 2


# ---- status is an observation; garbage from the cluster never breaks a pass -------------------------------

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def test_a_forged_terminal_phase_does_not_stop_a_running_group() -> None:
    forged = {"phase": "Succeeded", "startTime": stamp(NOW), "completionTime": stamp(NOW), "conditions": []}
    result = tj.plan(JOB, spec(workers=2), [pod(0), pod(1)], forged, NOW)
    assert result.delete_pods == [] and result.status["phase"] == "Running"
    assert "completionTime" not in result.status and "ignored" in result.warnings[0]


def test_a_forged_old_completion_time_does_not_expire_the_ttl_early() -> None:
    finished = stamp(NOW - timedelta(seconds=30))
    pods = [pod(0, phase="Succeeded", exit_code=0, finished=finished)]
    forged = {"phase": "Succeeded", "completionTime": "2001-01-01T00:00:00Z", "conditions": []}
    result = tj.plan(JOB, spec(ttlSecondsAfterFinished=3600), pods, forged, NOW)
    assert not result.delete_job and result.status["completionTime"] == finished
    assert result.requeue_after == pytest.approx(3600 - 30)


def test_a_forged_start_time_cannot_predate_the_job() -> None:
    job = tj.JobMeta(name="digits", namespace="ml", uid="uid-1", generation=1, created=stamp(NOW))
    forged = {"phase": "Running", "startTime": "2001-01-01T00:00:00Z", "conditions": []}
    result = tj.plan(job, spec(activeDeadlineSeconds=600), [pod(0)], forged, NOW + timedelta(seconds=60))
    assert result.status["phase"] == "Running" and result.status["startTime"] == stamp(NOW)


@pytest.mark.parametrize("report", [
    {"epoch": "three", "loss": 0.5},
    {"epoch": 1, "loss": float("nan")},
    {"epoch": [1], "valAccuracy": {"x": 1}},
])
def test_a_progress_report_with_wrong_types_is_ignored(report: dict[str, Any]) -> None:
    previous = {"phase": "Running", "progress": {"epoch": 1, "epochs": 3}, "conditions": []}
    result = tj.plan(JOB, spec(), [pod(0, progress=report)], previous, NOW)
    assert result.status["progress"] == {"epoch": 1, "epochs": 3} and result.warnings


@pytest.mark.parametrize("model", [
    {"name": "digits", "version": 0, "uri": "/models/digits/0", "signature": SIGNATURE},
    {"name": "digits", "version": "latest", "uri": "/models/digits/x"},
    {"name": "../etc", "version": 2, "uri": "/models/x"},
    {"name": "digits", "version": 2, "uri": "/m", "signature": {"inputs": "yes"}},
])
def test_an_impossible_published_model_is_never_published(model: dict[str, Any]) -> None:
    pods = [pod(0, phase="Succeeded", exit_code=0, progress={"phase": "Done", "model": model})]
    result = tj.plan(JOB, spec(), pods, {"phase": "Running", "conditions": []}, NOW)
    assert result.status["phase"] == "Succeeded" and "model" not in result.status and result.warnings


def test_a_valid_published_model_is_reported_with_its_signature() -> None:
    model = {"name": "digits", "version": 2, "uri": "/models/digits/2", "signature": SIGNATURE}
    pods = [pod(0, phase="Succeeded", exit_code=0, progress={"model": model, "testAccuracy": 0.96})]
    result = tj.plan(JOB, spec(), pods, {"phase": "Running", "conditions": []}, NOW)
    assert result.status["model"] == {**model, "testAccuracy": 0.96}


def test_a_garbage_pod_spec_annotation_refuses_nothing_and_raises_nothing() -> None:
    result = tj.plan(JOB, spec(workers=1), [pod(0, pod_spec='["not", "an", "object"]')],
                     {"phase": "Running", "conditions": []}, NOW)
    assert condition(result.status, "UpdateRefused")["status"] == "False"


def test_garbage_rank_labels_read_as_no_group() -> None:
    raw = {"metadata": {"name": "digits-a0-w0", "labels": {tj.LABEL_RANK: "zero", tj.LABEL_ATTEMPT: "-3"}},
           "status": {"phase": "Running"}}
    observed = tj.ObservedPod.from_pod(raw)
    assert observed.rank == -1 and observed.attempt == -1


def test_service_names_of_different_bases_never_collide() -> None:
    assert dns1035_label("1abc") != dns1035_label("s1abc") and dns1035_label("1abc")[0].isalpha()
    assert dns1035_label("1abc") == dns1035_label("1abc")


# ---- ranks per pod (torchrun semantics) ----------------------------------------------------------------------


def env_of(p: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}


def test_two_pods_of_two_ranks_make_a_world_of_four() -> None:
    s = spec(workers=2, nprocPerNode=2)
    for rank in range(2):
        env = env_of(tj.worker_pod(JOB, s, attempt=0, rank=rank))
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"], env["RANK"], env["LOCAL_RANK"]) == \
            ("4", "2", str(rank), str(2 * rank), "0")
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"]) == ("2", "2", str(rank))
        assert env["PET_MASTER_ADDR"] == env["MASTER_ADDR"] == "digits-w0.digits-workers"
        assert env["PET_MASTER_PORT"] == env["MASTER_PORT"] == "29500"


def test_auto_runs_one_rank_per_gpu_and_one_without_gpus() -> None:
    assert spec().ranks_per_pod() == 1 and spec(resources={"gpus": 8}).ranks_per_pod() == 8
    assert spec(resources={"gpus": 8}, nprocPerNode=2).ranks_per_pod() == 2
    env = env_of(tj.worker_pod(JOB, spec(resources={"gpus": 4}), attempt=0, rank=0))
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["PET_NPROC_PER_NODE"], env["PET_NNODES"]) == \
        ("4", "4", "4", "1")
    # one pod: the group meets on the pod's loopback, no Service needed
    assert env["MASTER_ADDR"] == "127.0.0.1"
    assert tj.plan(JOB, spec(resources={"gpus": 4}), [], {}, NOW).apply[0]["kind"] == "Pod"
    single = env_of(tj.worker_pod(JOB, spec(), attempt=0, rank=0))
    assert single["WORLD_SIZE"] == "1" and "MASTER_ADDR" not in single and "PET_NNODES" not in single


def test_a_torchrun_command_gets_consistent_pet_variables() -> None:
    s = spec(command=["torchrun", "--standalone=false", "train.py"], workers=3, nprocPerNode=4)
    envs = [env_of(tj.worker_pod(JOB, s, attempt=0, rank=r)) for r in range(3)]
    assert {e["PET_NNODES"] for e in envs} == {"3"} and {e["PET_NPROC_PER_NODE"] for e in envs} == {"4"}
    assert [e["PET_NODE_RANK"] for e in envs] == ["0", "1", "2"]
    assert {int(e["WORLD_SIZE"]) for e in envs} == {int(envs[0]["PET_NNODES"]) * int(envs[0]["PET_NPROC_PER_NODE"])}


@pytest.mark.parametrize("bad", ["2", 0, 65, "all", True])
def test_nproc_per_node_is_auto_or_a_small_integer(bad: Any) -> None:
    with pytest.raises(ValueError, match="nprocPerNode must be 'auto' or an integer from 1 to 64"):
        spec(nprocPerNode=bad)


# ---- scheduling pass-through ---------------------------------------------------------------------------------


def test_scheduling_fields_reach_the_pods() -> None:
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100-SXM4-80GB"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]}}
    s = spec(schedulerName="volcano", priorityClassName="training", affinity=affinity,
             podLabels={"kueue.x-k8s.io/queue-name": "gpu", "team": "ml"},
             podAnnotations={"cost-center": "research 42"},
             resources={"gpus": 2, "gpuResource": "nvidia.com/mig-1g.10gb"})
    p = tj.worker_pod(JOB, s, attempt=0, rank=0)
    assert p["spec"]["schedulerName"] == "volcano" and p["spec"]["priorityClassName"] == "training"
    preferred = p["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred[0]["preference"]["matchExpressions"] == [{"key": "zone", "operator": "Exists", "values": []}]
    assert p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == \
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    labels, annotations = p["metadata"]["labels"], p["metadata"]["annotations"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu" and labels["team"] == "ml"
    assert labels[tj.LABEL_JOB] == "digits" and labels[tj.LABEL_RANK] == "0"
    assert annotations["cost-center"] == "research 42" and tj.ANNOTATION_POD_SPEC in annotations
    limits = p["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"nvidia.com/mig-1g.10gb": "2"}
    keys = [t["key"] for t in p["spec"]["tolerations"]]
    assert keys == ["nvidia.com/mig-1g.10gb", "nvidia.com/gpu"]
    assert env_of(p)["LOCAL_WORLD_SIZE"] == "2"  # auto: one rank per MIG device


@pytest.mark.parametrize("overrides, message", [
    ({"resources": {"gpus": 1, "gpuResource": "gpu"}}, "gpuResource must be an extended resource name"),
    ({"resources": {"gpuResource": "kubernetes.io/gpu"}}, "gpuResource must be an extended resource name"),
    ({"podLabels": {"modelops.dev/rank": "9"}}, "podLabels keys under modelops.dev/ are reserved"),
    ({"podAnnotations": {"modelops.dev/progress": "{}"}}, "podAnnotations keys under modelops.dev/ are reserved"),
    ({"podLabels": {"team": "m l"}}, "podLabels values must be a label value"),
    ({"podAnnotations": {"a b": "x"}}, "podAnnotations keys must be a label key"),
    ({"schedulerName": "My_Scheduler"}, "schedulerName must be a scheduler's name"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In"}]}]}}}}, "In and NotIn need at least one value"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["many"]}]}]}}}}, "exactly one integer"),
])
def test_scheduling_fields_are_checked(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(**overrides)


def test_fields_added_since_a_group_started_are_not_a_refused_edit() -> None:
    old = {k: v for k, v in tj.pod_shaping_spec(spec(workers=2)).items()
           if k not in ("nprocPerNode", "podLabels", "podAnnotations")}
    old["resources"] = {"gpus": 0}
    pods = [pod(0, pod_spec=json.dumps(old)), pod(1, pod_spec=json.dumps(old))]
    result = tj.plan(JOB, spec(workers=2), pods, {"phase": "Running", "conditions": []}, NOW)
    assert condition(result.status, "UpdateRefused")["status"] == "False"


# ---- why it waits --------------------------------------------------------------------------------------------

UNSCHEDULABLE = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint."


def raw_pod(rank: int, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": tj.pod_name("digits", 0, rank),
                         "labels": {tj.LABEL_RANK: str(rank), tj.LABEL_ATTEMPT: "0"}}, "status": status}


def unschedulable(rank: int, message: str = UNSCHEDULABLE) -> tj.ObservedPod:
    return tj.ObservedPod.from_pod(raw_pod(rank, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}))


def test_an_unschedulable_group_says_why_once_and_stays_pending() -> None:
    pods = [unschedulable(0), unschedulable(1)]
    first = tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), pods, {"conditions": []}, NOW)
    assert first.status["phase"] == "Pending"
    ready = condition(first.status, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Unschedulable"
    assert ready["message"] == f"2/2 workers cannot start: worker 0 (pod digits-a0-w0) Unschedulable: {UNSCHEDULABLE}"
    assert [(e.type, e.reason, e.message) for e in first.events] == [("Warning", "Unschedulable", ready["message"])]
    assert condition(first.status, "Reconciling")["message"] == ready["message"]
    assert condition(first.status, "Running")["message"] == "0/2 workers running"  # said twice, not seven times
    again = tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), pods, first.status, NOW + timedelta(seconds=30))
    assert again.events == [] and condition(again.status, "Ready")["reason"] == "Unschedulable"
    # one more worker waiting for the same reason is no new Event
    one = tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), [unschedulable(0), pod(1, "Pending")],
                  {"conditions": []}, NOW)
    assert condition(one.status, "Ready")["message"].startswith("1/2 workers cannot start")
    assert tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), pods, one.status, NOW).events == []
    # a different reason is a new Event
    changed = [unschedulable(0, "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."), unschedulable(1)]
    third = tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), changed, again.status, NOW)
    assert [e.reason for e in third.events] == ["Unschedulable"]
    # it clears once the workers run
    running = tj.plan(JOB, spec(workers=2, resources={"gpus": 16}), [pod(0), pod(1)], third.status, NOW)
    assert running.status["phase"] == "Running" and condition(running.status, "Ready")["reason"] == "WorkersRunning"
    assert [e.reason for e in running.events] == ["WorkersRunning"]


def test_a_scheduled_worker_stuck_on_its_image_says_so() -> None:
    observed = tj.ObservedPod.from_pod(raw_pod(1, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "True"}], "containerStatuses": [{"name": "trainer", "state": {"waiting": {
            "reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/x/trainer:nope"'}}}]}))
    result = tj.plan(JOB, spec(workers=2), [pod(0), observed], {"conditions": []}, NOW)
    ready = condition(result.status, "Ready")
    assert result.status["phase"] == "Pending" and ready["reason"] == "ImagePullBackOff"
    assert 'worker 1 (pod digits-a0-w1) ImagePullBackOff: Back-off pulling image "ghcr.io/x/trainer:nope"' in \
        ready["message"]
    assert ("Warning", "ImagePullBackOff") in [(e.type, e.reason) for e in result.events]


def test_normal_waits_are_not_reported_as_stuck() -> None:
    creating = tj.ObservedPod.from_pod(raw_pod(0, {"phase": "Pending", "containerStatuses": [
        {"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]}))
    assert creating.waiting_reason == ""
    result = tj.plan(JOB, spec(), [creating], {"conditions": []}, NOW)
    assert condition(result.status, "Ready")["reason"] == "WorkersStarting" and result.events == []
    # a running pod's stale PodScheduled condition is not a wait
    running = tj.ObservedPod.from_pod(raw_pod(0, {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}))
    assert running.waiting_reason == ""


def test_a_very_long_scheduler_message_is_cut_and_still_said_once() -> None:
    pods = [unschedulable(0, "0/5000 nodes are available: " + "x" * 5000)]
    first = tj.plan(JOB, spec(resources={"gpus": 16}), pods, {"conditions": []}, NOW)
    assert len(condition(first.status, "Ready")["message"]) <= tj.WAIT_MESSAGE_LIMIT and len(first.events) == 1
    assert tj.plan(JOB, spec(resources={"gpus": 16}), pods, first.status, NOW).events == []


# ---- a group restarts as a group; preemption is not failure -------------------------------------------


def chain(job_spec: TrainingJobSpec, steps: list[list[tj.ObservedPod]]) -> tj.Plan:
    """Plan pass after pass, each seeing the world of its step and the status the previous pass wrote."""
    status: dict[str, Any] = {}
    result = None
    for pods in steps:
        result = tj.plan(JOB, job_spec, pods, status, NOW)
        status = result.status
    assert result is not None
    return result


def test_a_deleted_worker_restarts_the_whole_group_without_consuming_the_backoff_limit() -> None:
    s = spec(workers=2, backoffLimit=0)
    started = tj.plan(JOB, s, [], {}, NOW)
    assert started.status["attempt"] == 0
    running = tj.plan(JOB, s, [pod(0), pod(1)], started.status, NOW)
    # worker 1's pod is deleted (a person, a drain): never re-created alone into the old rendezvous
    lost = tj.plan(JOB, s, [pod(0)], running.status, NOW)
    assert lost.apply == [] and lost.delete_pods == ["digits-a0-w0"]
    assert lost.status["phase"] == "Pending" and condition(lost.status, "Preempted")["status"] == "True"
    assert (lost.status["restarts"], lost.status["preemptions"]) == (0, 1)
    [event] = [e for e in lost.events if e.type == "Warning"]
    assert event.reason == "WorkerPreempted" and "worker 1 (pod digits-a0-w1) disappeared" in event.message
    # the survivor is gone: attempt 1 starts whole, carrying the record; said once
    fresh = tj.plan(JOB, s, [], lost.status, NOW)
    assert kinds(fresh.apply) == ["Service/digits-workers", "Pod/digits-a1-w0", "Pod/digits-a1-w1"]
    assert json.loads(fresh.apply[1]["metadata"]["annotations"][tj.ANNOTATION_ENDED_ATTEMPTS]) == {"0": "Preempted"}
    assert "WorkerPreempted" not in [e.reason for e in fresh.events]
    again = tj.plan(JOB, s, [pod(0, attempt=1), pod(1, attempt=1)], fresh.status, NOW)
    assert again.status["phase"] == "Running" and again.status["attempt"] == 1
    assert condition(again.status, "Preempted")["status"] == "False"
    assert (again.status["restarts"], again.status["preemptions"]) == (0, 1)


@pytest.mark.parametrize("worker", [
    pod(1, "Running", deleting=True, disruption="EvictionByEvictionAPI", disruption_message="Eviction API: evicting"),
    pod(1, "Running", disruption="PreemptionByScheduler", disruption_message="preempted by ml/serving"),
    pod(1, "Failed", exit_code=137, disruption="TerminationByKubelet", disruption_message="node pressure"),
    pod(1, "Failed", exit_code=143, deleting=True),
])
def test_a_preempted_or_evicted_worker_is_not_a_failure(worker: tj.ObservedPod) -> None:
    s = spec(workers=2, backoffLimit=0)
    result = chain(s, [[], [pod(0), pod(1)], [pod(0), worker]])
    assert result.status["phase"] == "Pending" and result.status["preemptions"] == 1
    assert result.status["restarts"] == 0 and result.status["endedAttempts"] == {"0": "Preempted"}
    assert result.delete_pods == ["digits-a0-w0"] + ([worker.name] if worker.active and not worker.deleting else [])
    preempted = condition(result.status, "Preempted")
    assert preempted["status"] == "True" and (worker.disruption or "deleted") in preempted["message"]


def test_a_failed_worker_still_consumes_the_backoff_limit_after_preemptions() -> None:
    s = spec(workers=1, backoffLimit=0)
    gone = chain(s, [[], [pod(0)], []])  # attempt 0 preempted (its pod vanished): attempt 1 starts at once
    assert gone.status["preemptions"] == 1 and kinds(gone.apply) == ["Pod/digits-a1-w0"]
    failed = tj.plan(JOB, s, [pod(0, "Failed", attempt=1, exit_code=2)], gone.status, NOW)
    assert failed.status["phase"] == "Failed" and condition(failed.status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert (failed.status["restarts"], failed.status["preemptions"]) == (0, 1)


def test_the_record_is_rebuilt_from_the_pods_when_the_status_is_lost() -> None:
    record = ((0, "Failed"), (1, "Preempted"))
    pods = [pod(0, "Failed", attempt=0, exit_code=1), pod(0, attempt=2, ended_attempts=record),
            pod(1, attempt=2, ended_attempts=record)]
    result = tj.plan(JOB, spec(workers=2), pods, {}, NOW)
    assert result.status["attempt"] == 2 and result.status["phase"] == "Running"
    assert (result.status["restarts"], result.status["preemptions"]) == (1, 1)


def test_a_disruption_target_is_read_from_the_pod() -> None:
    observed = tj.ObservedPod.from_pod({
        "metadata": {"name": "digits-a0-w1", "labels": {tj.LABEL_RANK: "1", tj.LABEL_ATTEMPT: "0"},
                     "annotations": {tj.ANNOTATION_ENDED_ATTEMPTS: '{"0": "Failed", "x": "y", "3": "Lost"}'},
                     "deletionTimestamp": "2026-01-01T12:00:00Z"},
        "status": {"phase": "Running", "conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
             "message": "Eviction API: evicting"}]}})
    assert (observed.disruption, observed.disruption_message) == ("EvictionByEvictionAPI", "Eviction API: evicting")
    assert observed.deleting and observed.ended_attempts == ((0, "Failed"),)


def test_more_workers_asked_of_a_running_group_is_an_edit_not_a_missing_worker() -> None:
    pod_spec = json.dumps(tj.pod_shaping_spec(spec(workers=2)), sort_keys=True)
    result = chain(spec(workers=3), [[pod(0, pod_spec=pod_spec), pod(1, pod_spec=pod_spec)]] * 2)
    assert result.status["preemptions"] == 0 and result.delete_pods == [] and result.apply == []
    assert condition(result.status, "UpdateRefused")["status"] == "True"


# ---- Kueue ---------------------------------------------------------------------------------------------

from modelops.resources import kueue  # noqa: E402

GPU_FLAVOR = kueue.Placement({"nvidia.com/gpu.present": "true"},
                             [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])


def wl(*conditions: tuple[str, str, str, str], admitted_in: str | None = None, spec_hash: str = "") -> kueue.ObservedWorkload:
    admission = {"clusterQueue": admitted_in, "podSetAssignments": [
        {"name": "workers", "count": 2, "flavors": {"nvidia.com/gpu": "gpu"}}]} if admitted_in else None
    return kueue.ObservedWorkload(
        name=kueue.workload_name("digits", "uid-1"), resource_version="7", admission=admission, spec_hash=spec_hash,
        conditions=[{"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": stamp(NOW)}
                    for t, s, r, m in conditions])


ADMITTED = (("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue gpu"),
            ("Admitted", "True", "Admitted", "The workload is admitted"))


def queue(workload: kueue.ObservedWorkload | None, **kw: Any) -> kueue.Queue:
    return kueue.Queue("training", workload, flavors={"gpu": GPU_FLAVOR}, **kw)


def test_a_queued_job_creates_its_workload_and_no_pod_until_admitted() -> None:
    s = spec(workers=2, resources={"gpus": 4}, priorityClassName="batch")
    result = tj.plan(JOB, s, [], {}, NOW, queue(None, priority=100))
    [workload] = result.apply
    assert workload["kind"] == "Workload" and workload["metadata"]["ownerReferences"][0]["controller"] is True
    assert workload["spec"]["queueName"] == "training" and workload["spec"]["priority"] == 100
    assert workload["spec"]["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                                                    "name": "batch"}
    [podset] = workload["spec"]["podSets"]
    assert (podset["name"], podset["count"]) == ("workers", 2)
    assert podset["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert result.status["phase"] == "Queued" and "startTime" not in result.status
    assert condition(result.status, "Queued")["status"] == "True"
    assert result.status["queue"]["state"] == "Queued"
    pending = wl(("QuotaReserved", "False", "Pending", "insufficient unused quota for nvidia.com/gpu"),
                 spec_hash=workload["metadata"]["annotations"][kueue.ANNOTATION_SPEC_HASH])
    waiting = tj.plan(JOB, s, [], result.status, NOW, queue(pending, priority=100))
    assert waiting.apply == [] and waiting.status["phase"] == "Queued"
    assert "Kueue says Pending: insufficient unused quota" in condition(waiting.status, "Ready")["message"]
    assert (waiting.status["queue"]["reason"], waiting.status["queue"]["workload"]) == ("Pending", pending.name)


def test_an_admitted_job_starts_its_whole_group_where_the_admission_says() -> None:
    result = tj.plan(JOB, spec(workers=2, resources={"gpus": 4}), [], {}, NOW, queue(wl(*ADMITTED, admitted_in="gpu")))
    assert kinds(result.apply) == ["Service/digits-workers", "Pod/digits-a0-w0", "Pod/digits-a0-w1"]
    for pod_obj in result.apply[1:]:
        assert pod_obj["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod_obj["spec"]["tolerations"] == GPU_FLAVOR.tolerations  # the GPU toleration, once
    assert result.status["queue"] == {"name": "training", "workload": "trainingjob-digits-uid-1", "clusterQueue": "gpu",
                                      "state": "Admitted", "reason": "", "message": ""}
    assert condition(result.status, "Admitted")["status"] == "True"
    assert "Admitted" in [e.reason for e in result.events]
    # Kueue hears whether the group runs (PodsReady, what its waitForPodsReady waits for), once per change
    assert {c["type"]: c["status"] for c in result.workload_status["conditions"]}["PodsReady"] == "False"
    admitted = wl(*ADMITTED, ("PodsReady", "False", "WaitForStart", "m"), admitted_in="gpu")
    running = tj.plan(JOB, spec(workers=2, resources={"gpus": 4}), [pod(0), pod(1)], result.status, NOW, queue(admitted))
    assert {c["type"]: c["status"] for c in running.workload_status["conditions"]}["PodsReady"] == "True"
    ready = wl(*ADMITTED, ("PodsReady", "True", "Started", "m"), admitted_in="gpu")
    assert tj.plan(JOB, spec(workers=2, resources={"gpus": 4}), [pod(0), pod(1)], running.status, NOW,
                   queue(ready)).workload_status is None


def test_an_evicted_job_removes_its_group_hands_the_quota_back_and_is_queued_again() -> None:
    s = spec(workers=2, resources={"gpus": 4}, backoffLimit=0)
    evicted = wl(*ADMITTED, ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"), admitted_in="gpu")
    running = tj.plan(JOB, s, [pod(0), pod(1)], {}, NOW, queue(wl(*ADMITTED, admitted_in="gpu")))
    result = tj.plan(JOB, s, [pod(0), pod(1)], running.status, NOW, queue(evicted))
    assert result.delete_pods == ["digits-a0-w0", "digits-a0-w1"] and result.workload_status is None
    assert result.status["phase"] == "Queued" and result.status["queue"]["state"] == "Evicted"
    assert (result.status["restarts"], result.status["preemptions"]) == (0, 1)
    preempted = condition(result.status, "Preempted")
    assert preempted["status"] == "True" and "Preempted to accommodate" in preempted["message"]
    assert "Preempted" in [e.reason for e in result.events]
    # the pods are gone: the quota goes back (as Kueue's own job integrations do)
    gone = tj.plan(JOB, s, [], result.status, NOW, queue(evicted))
    patch = gone.workload_status
    assert patch is not None and patch["admission"] is None and gone.apply == []
    states = {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}
    assert states["QuotaReserved"] == ("False", "Pending") and states["Admitted"] == ("False", "NoReservation")
    assert states["Requeued"] == ("True", "Preempted") and states["Evicted"][0] == "True"
    # re-admitted: a fresh attempt, from the checkpoint; the preemption did not consume backoffLimit 0
    again = tj.plan(JOB, s, [], gone.status, NOW, queue(wl(*ADMITTED, admitted_in="gpu")))
    assert kinds(again.apply)[1:] == ["Pod/digits-a1-w0", "Pod/digits-a1-w1"]
    assert condition(again.status, "Preempted")["status"] == "True" and again.status["phase"] == "Pending"


def test_the_workload_finishes_with_the_job_goes_while_suspended_and_is_replaced_when_stale() -> None:
    s = spec(workers=1)
    final = {"model": {"name": "digits", "version": 1, "uri": "/models/digits/1"}}
    done = tj.plan(JOB, s, [pod(0, "Succeeded", exit_code=0, progress=final)], {"startTime": stamp(NOW)}, NOW,
                   queue(wl(*ADMITTED, admitted_in="gpu")))
    assert done.status["phase"] == "Succeeded" and done.workload_status is not None
    assert {c["type"]: c["status"] for c in done.workload_status["conditions"]}["Finished"] == "True"
    paused = tj.plan(JOB, spec(workers=1, suspend=True), [], {}, NOW, queue(wl(*ADMITTED, admitted_in="gpu")))
    assert paused.delete_workload == "trainingjob-digits-uid-1"
    stale = tj.plan(JOB, s, [], {}, NOW, queue(wl(spec_hash="old")))
    assert stale.delete_workload == "trainingjob-digits-uid-1" and stale.apply == []


def test_a_queued_job_on_a_cluster_without_kueue_waits_and_says_why() -> None:
    result = tj.plan(JOB, spec(), [], {}, NOW, kueue.Queue("training", served=False))
    assert result.apply == [] and result.status["phase"] == "Queued"
    assert condition(result.status, "Ready")["reason"] == "QueueUnavailable"
    assert "is Kueue installed?" in condition(result.status, "Ready")["message"]


def test_a_forged_attempt_record_never_removes_a_running_group() -> None:
    pods = [pod(0), pod(1)]
    for forged in ({"attempt": 99}, {"endedAttempts": {"0": "Failed", "1": "Failed", "2": "Failed"}},
                   {"attempt": 3, "endedAttempts": {"0": "Preempted", "1": "Preempted", "2": "Preempted"}}):
        result = tj.plan(JOB, spec(workers=2, backoffLimit=1), pods, {"phase": "Running", **forged}, NOW)
        assert result.delete_pods == [] and result.status["phase"] == "Running", forged
        assert result.status["attempt"] == 0


def test_a_worker_whose_labels_were_garbled_is_not_a_lost_one() -> None:
    running = tj.plan(JOB, spec(workers=2), [pod(0), pod(1)], {}, NOW)
    # rank 1's labels edited into garbage: the controller leaves it out of `pods`, but its pod is there
    result = tj.plan(JOB, spec(workers=2), [pod(0)], running.status, NOW,
                     present=frozenset({"digits-a0-w0", "digits-a0-w1"}))
    assert result.delete_pods == [] and result.status["preemptions"] == 0


# ---- identity: a worker is known by its name and its owner, not by its labels --------------------------------


def owned_pod(name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels, "annotations": annotations or {},
                         "ownerReferences": [JOB.owner_reference()]}, "status": {"phase": "Running"}}


def test_a_workers_attempt_and_rank_come_from_its_name_and_lost_marks_are_planned_back() -> None:
    garbled = tj.ObservedPod.from_pod(owned_pod("digits-a2-w1", {tj.LABEL_RANK: "x", tj.LABEL_ATTEMPT: "7"}), JOB)
    assert (garbled.attempt, garbled.rank) == (2, 1)
    assert garbled.marks == {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "modelops", tj.LABEL_JOB: "digits", tj.LABEL_ATTEMPT: "2",
                   tj.LABEL_RANK: "1"},
        "annotations": {"modelops.dev/owner": "TrainingJob/digits/uid-1"}}}
    intact = owned_pod("digits-a0-w0", {"app.kubernetes.io/managed-by": "modelops", tj.LABEL_JOB: "digits",
                                        tj.LABEL_ATTEMPT: "0", tj.LABEL_RANK: "0"},
                       {"modelops.dev/owner": "TrainingJob/digits/uid-1"})
    assert tj.ObservedPod.from_pod(intact, JOB).marks is None
    # a name that only looks like another job's worker is not read as this job's
    assert (tj.ObservedPod.from_pod(owned_pod("digitsx-a5-w0", {}), JOB).attempt) == 0
    plan = tj.plan_job(JOB, spec(), [garbled], {"attempt": 2, "conditions": []}, NOW)
    assert [(p.name, p.patch) for p in plan.patch] == [("digits-a2-w1", garbled.marks)]


def test_a_single_worker_with_garbage_labels_is_no_lost_worker() -> None:
    """The hostile case issue 29 found: the only worker's rank label overwritten read as a lost worker, a
    preemption, and a second attempt beside the first."""
    garbled = tj.ObservedPod.from_pod(owned_pod("digits-a0-w0", {tj.LABEL_RANK: "x"}), JOB)
    result = tj.plan(JOB, spec(), [garbled], {"attempt": 0, "phase": "Running", "conditions": []}, NOW)
    assert result.status["phase"] == "Running" and result.status.get("preemptions", 0) == 0
    assert result.apply == [] and result.delete_pods == []
