"""The TrainingJob controller against the real local cluster; pods are ended with the exit-code annotation."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from support import condition, eventually, get_json

pytestmark = pytest.mark.cluster

EXIT = "e2e.modelops.dev/exit-code"


def job(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}},
                 "trainer": {"epochs": 2}, **spec},
    }
    return json.dumps(body)


def pods_of(kube, name: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = get_json(kube, "pods", "-l", f"modelops.dev/training-job={name}")["items"]
    return sorted(items, key=lambda p: p["metadata"]["name"])


def running_pods(kube, name: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    def check() -> list[dict[str, Any]]:
        pods = [p for p in pods_of(kube, name) if p["status"].get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count else []

    return eventually(check, timeout, f"{count} running pods of {name}")


def phase_is(kube, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return eventually(lambda: (j := get_json(kube, "tj", name)).get("status", {}).get("phase") == phase and j,
                      timeout, f"{name} phase {phase}")


def end_pod(kube, pod: dict[str, Any], code: int) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], f"{EXIT}={code}", "--overwrite")


def report(kube, pod: dict[str, Any], progress: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """What the trainer does through the API: its progress as an annotation on its own pod."""
    kube.kubectl("annotate", "pod", pod["metadata"]["name"], "--overwrite",
                 f"modelops.dev/progress={json.dumps(progress)}")


def events(kube, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    items = get_json(kube, "events", "--field-selector", f"involvedObject.name={name}")["items"]
    return [e["reason"] for e in items]


def test_single_worker_job_succeeds_and_reports_its_model(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("one"))
    [pod] = running_pods(kube, "one", 1)
    assert not pod["spec"]["nodeName"].startswith("gpu-")
    report(kube, pod, {"phase": "Training", "epoch": 1, "epochs": 2, "loss": 0.5, "valAccuracy": 0.8})
    eventually(lambda: get_json(kube, "tj", "one")["status"].get("progressSummary") == "epoch 1/2 loss 0.500 acc 0.800",
               what="progress mirrored into status")
    # a failed save shows in status, and goes once the next save succeeds (the status patch removes it)
    report(kube, pod, {"phase": "Training", "epoch": 2, "epochs": 2, "checkpointedEpoch": 0,
                       "checkpointError": "epoch 1 not saved: [Errno 28] No space left on device"})
    failing = eventually(lambda: (s := get_json(kube, "tj", "one")["status"])["progress"].get("checkpointError") and s,
                         what="the failed save in status")
    assert failing["progressSummary"] == "epoch 2/2 checkpoint 0 (last save failed)"
    report(kube, pod, {"phase": "Training", "epoch": 2, "epochs": 2, "checkpointedEpoch": 2})
    saved = eventually(lambda: (s := get_json(kube, "tj", "one")["status"])["progress"]["checkpointedEpoch"] == 2 and s,
                       what="the checkpoint of epoch 2 in status")
    assert "checkpointError" not in saved["progress"] and saved["progressSummary"] == "epoch 2/2 checkpoint 2"
    report(kube, pod, {"phase": "Succeeded", "epoch": 2, "epochs": 2, "testAccuracy": 0.96,
                       "model": {"name": "digits", "version": 1, "uri": "/models/digits/1"}})
    end_pod(kube, pod, 0)
    done = phase_is(kube, "one", "Succeeded")
    assert done["status"]["model"] == {"name": "digits", "version": 1, "uri": "/models/digits/1",
                                       "testAccuracy": 0.96}
    assert condition(done, "Ready")["status"] == "True"
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    kube.kubectl("wait", "--for=condition=Ready", "tj/one", "--timeout=10s")
    table = kube.kubectl("get", "tj", "one")
    assert "Succeeded" in table and "digits" in table
    eventually(lambda: {"WorkersRunning", "ModelPublished"} <= set(events(kube, "one")), what="events")


def test_ddp_job_lands_on_gpu_nodes_with_rendezvous(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("ddp", workers=2, resources={"gpus": 1}))
    pods = running_pods(kube, "ddp", 2)
    for rank, pod in enumerate(pods):
        assert pod["spec"]["nodeName"].startswith("gpu-")
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["WORLD_SIZE"], env["RANK"], env["MASTER_ADDR"]) == ("2", str(rank), "ddp-w0.ddp-workers")
    service = get_json(kube, "service", "ddp-workers")
    assert service["spec"]["clusterIP"] == "None"
    assert phase_is(kube, "ddp", "Running")["status"]["workersReady"] == "2/2"


def test_worker_failure_restarts_group_until_backoff_limit(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("flaky", workers=2, backoffLimit=1))
    first = running_pods(kube, "flaky", 2)
    end_pod(kube, first[1], 3)
    second = eventually(lambda: [p for p in running_pods(kube, "flaky", 2)
                                 if p["metadata"]["labels"]["modelops.dev/attempt"] == "1"], what="attempt 1")
    assert len(second) == 2
    assert get_json(kube, "tj", "flaky")["status"]["restarts"] == 1
    end_pod(kube, second[0], 1)
    failed = phase_is(kube, "flaky", "Failed")
    cond = condition(failed, "Failed")
    assert cond["reason"] == "BackoffLimitExceeded" and "exit code 1" in cond["message"]
    eventually(lambda: all(p["status"]["phase"] in ("Failed",) for p in pods_of(kube, "flaky")),
               what="no worker left running")
    assert "WorkerFailed" in events(kube, "flaky")


def test_active_deadline_fails_the_job(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("slow", activeDeadlineSeconds=3))
    running_pods(kube, "slow", 1)
    failed = phase_is(kube, "slow", "Failed", timeout=30)
    assert condition(failed, "Failed")["reason"] == "DeadlineExceeded"
    eventually(lambda: not pods_of(kube, "slow"), what="workers removed")


def test_suspend_and_resume(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("pause", workers=2))
    running_pods(kube, "pause", 2)
    kube.kubectl("patch", "tj", "pause", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    suspended = phase_is(kube, "pause", "Suspended")
    assert condition(suspended, "Suspended")["status"] == "True"
    eventually(lambda: not pods_of(kube, "pause"), what="pods removed on suspend")
    kube.kubectl("patch", "tj", "pause", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    running_pods(kube, "pause", 2)
    phase_is(kube, "pause", "Running")


def test_ttl_deletes_finished_job_and_its_pods(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("brief", ttlSecondsAfterFinished=2))
    [pod] = running_pods(kube, "brief", 1)
    end_pod(kube, pod, 0)
    eventually(lambda: "NotFound" in kube.kubectl("get", "tj", "brief", check=False) + kube.cluster.kubectl(
        "-n", kube.namespace, "get", "tj", "brief", check=False).stderr, timeout=30, what="job deleted by TTL")
    eventually(lambda: not pods_of(kube, "brief"), what="pods garbage-collected")


def test_operator_restart_mid_run_loses_nothing(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("sturdy", workers=2))
    pods = running_pods(kube, "sturdy", 2)
    operator.stop(signal.SIGKILL)
    for pod in pods:
        end_pod(kube, pod, 0)
    eventually(lambda: all(p["status"]["phase"] == "Succeeded" for p in pods_of(kube, "sturdy")),
               what="pods finished while the operator was down")
    operator.start()
    phase_is(kube, "sturdy", "Succeeded")
    assert [p["metadata"]["name"] for p in pods_of(kube, "sturdy")] == ["sturdy-a0-w0", "sturdy-a0-w1"]


def test_edit_of_running_group_is_refused(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("fixed", workers=2))
    running_pods(kube, "fixed", 2)
    kube.kubectl("patch", "tj", "fixed", "--type=merge", "-p", '{"spec":{"workers":3}}')
    refused = eventually(lambda: (c := condition(get_json(kube, "tj", "fixed"), "UpdateRefused"))
                         .get("status") == "True" and c, what="UpdateRefused")
    assert "workers 2 -> 3" in refused["message"]
    assert len(pods_of(kube, "fixed")) == 2
    eventually(lambda: "ImmutableWhileRunning" in events(kube, "fixed"), what="warning event")


@pytest.mark.parametrize(("spec", "message"), [
    ({"workers": 0}, "spec.workers"),
    ({"resources": {"gpus": -1}}, "spec.resources.gpus"),
    ({"trainer": {"dataset": "digits", "dataPath": "/data/x.csv"}}, "set dataset or dataPath, not both"),
    ({"trainer": {"model": "resnet"}}, 'Unsupported value: "resnet"'),
    ({"trainer": {"valFraction": 0.6, "testFraction": 0.5}}, "valFraction + testFraction must be below 1"),
    ({"output": {"modelName": "digits", "repository": {}}}, "set exactly one of persistentVolumeClaim or hostPath"),
    ({"output": {"repository": {"hostPath": {"path": "/m"}}}}, "spec.output.modelName: Required value"),
    ({"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ({"nprocPerNode": 0}, "nprocPerNode must be 'auto' or an integer from 1 to 64"),
    ({"nprocPerNode": "all"}, "nprocPerNode must be 'auto' or an integer from 1 to 64"),
    ({"resources": {"gpus": 1, "gpuResource": "gpu"}}, "gpuResource must be an extended resource name"),
    ({"podLabels": {"modelops.dev/rank": "7"}}, "podLabels keys under modelops.dev/ are reserved for the operator"),
    ({"podAnnotations": {"bad key": "x"}}, 'podAnnotations key "bad key" is not a label key'),
    ({"schedulerName": "My_Scheduler"}, "schedulerName must be a scheduler's name"),
    ({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In"}]}]}}}},
     "node affinity operators In and NotIn need at least one value"),
])
def test_invalid_specs_are_rejected_at_admission(kube, crds_installed, spec, message) -> None:  # type: ignore[no-untyped-def]
    result = kube.cluster.kubectl("-n", kube.namespace, "apply", "-f", "-", stdin=job("bad", **spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_operator_serves_liveness_and_its_own_metrics(kube, crds_installed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    from modelops.dev.cluster import free_port
    from support import OperatorProcess

    liveness, metrics = free_port(), free_port()
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log",
                              extra_args=("--liveness-port", str(liveness), "--metrics-port", str(metrics),
                                          "--log-format", "json"))
    process.start()
    try:
        kube.kubectl("apply", "-f", "-", stdin=job("counted"))
        running_pods(kube, "counted", 1)

        def get(port: int, path: str) -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    return str(response.read().decode())
            except OSError:
                return ""

        assert eventually(lambda: get(liveness, "/healthz"), what="liveness endpoint")
        text = eventually(lambda: (t := get(metrics, "/metrics")) and
                          'modelops_resources{kind="TrainingJob",phase="Running"} 1.0' in t and t,
                          what="the job counted as Running in the operator's metrics")
        assert 'modelops_reconciles_total{kind="TrainingJob",result="ok"}' in text
        assert "modelops_reconcile_duration_seconds_bucket" in text
    finally:
        process.stop()
    assert any(line.startswith("{") for line in process.log().splitlines()), "no JSON log lines"


def test_long_dotted_job_name_gets_valid_children(kube, operator) -> None:  # type: ignore[no-untyped-def]
    name = "team.vision.digits-" + "x" * 90  # a valid object name, too long and dotted for pods and Services
    kube.kubectl("apply", "-f", "-", stdin=job(name, workers=2))
    pods = eventually(lambda: len(running := [p for p in get_json(kube, "pods")["items"]
                                              if p["status"].get("phase") == "Running"]) == 2 and running,
                      what="both worker pods of a long-named job")
    for pod in pods:
        assert len(pod["metadata"]["name"]) <= 63 and len(pod["spec"]["hostname"]) <= 63
    [service] = get_json(kube, "services")["items"]
    assert len(service["metadata"]["name"]) <= 63 and service["metadata"]["name"][0].isalpha()
    assert phase_is(kube, name, "Running")["status"]["workersReady"] == "2/2"


def test_two_pods_of_two_ranks_get_a_world_of_four(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("ranks", workers=2, nprocPerNode=2))
    pods = running_pods(kube, "ranks", 2)
    for pod_rank, pod in enumerate(pods):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_RANK"], env["RANK"]) == \
            ("4", "2", str(pod_rank), str(2 * pod_rank))
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"]) == ("2", "2", str(pod_rank))


def test_scheduling_settings_reach_the_pods(kube, operator) -> None:  # type: ignore[no-untyped-def]
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["gpu-1"]}]}]}}}
    kube.kubectl("apply", "-f", "-", stdin=job("placed", resources={"gpus": 1}, affinity=affinity,
                                              podLabels={"team": "ml"}, podAnnotations={"note": "a b"}))
    [pod] = running_pods(kube, "placed", 1)
    assert pod["spec"]["nodeName"] == "gpu-1"
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["annotations"]["note"] == "a b"
    # a scheduler that does not exist leaves the pod unscheduled, as asked
    kube.kubectl("apply", "-f", "-", stdin=job("custom", schedulerName="gang-scheduler"))
    [pod] = eventually(lambda: pods_of(kube, "custom"), what="the pod of job custom")
    assert pod["spec"]["schedulerName"] == "gang-scheduler" and not pod["spec"].get("nodeName")


def test_a_job_no_node_can_hold_explains_itself(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("huge", workers=2, resources={"gpus": 16}))

    def waiting() -> dict[str, Any]:
        found = get_json(kube, "tj", "huge")
        return found if condition(found, "Ready").get("reason") == "Unschedulable" else {}

    found = eventually(waiting, 30, "Ready=False Unschedulable on the job")
    ready = condition(found, "Ready")
    assert found["status"]["phase"] == "Pending" and ready["status"] == "False"
    assert ready["message"].startswith("2/2 workers cannot start: worker 0 (pod huge-a0-w0) Unschedulable: 0/")
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    eventually(lambda: "Unschedulable" in events(kube, "huge"), what="an Unschedulable event")
    described = kube.kubectl("describe", "tj", "huge")
    assert "Insufficient nvidia.com/gpu" in described
    # fixed: the next group fits, the reason clears once the workers run
    kube.kubectl("patch", "tj", "huge", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    phase_is(kube, "huge", "Suspended")
    kube.kubectl("patch", "tj", "huge", "--type=merge", "-p", '{"spec":{"suspend":false,"resources":{"gpus":1}}}')
    running_pods(kube, "huge", 2)
    assert condition(phase_is(kube, "huge", "Running"), "Ready")["reason"] == "WorkersRunning"
    assert events(kube, "huge").count("Unschedulable") == 1


def attempt_running(kube, name: str, attempt: int, count: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return eventually(lambda: [p for p in running_pods(kube, name, count)
                               if p["metadata"]["labels"]["modelops.dev/attempt"] == str(attempt)],
                      what=f"attempt {attempt} of {name} running")


def test_a_deleted_worker_restarts_the_whole_group_as_a_preemption(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("drained", workers=2, backoffLimit=0))
    first = running_pods(kube, "drained", 2)
    kube.kubectl("delete", "pod", first[1]["metadata"]["name"], "--wait=false")
    second = attempt_running(kube, "drained", 1, 2)
    # no worker of attempt 0 is left to talk to a rendezvous its peers left: the whole group is new
    assert {p["metadata"]["name"] for p in pods_of(kube, "drained")} == {p["metadata"]["name"] for p in second}
    status = phase_is(kube, "drained", "Running")["status"]
    assert (status["restarts"], status["preemptions"], status["attempt"]) == (0, 1, 1)
    assert status["endedAttempts"] == {"0": "Preempted"}
    assert "WorkerPreempted" in events(kube, "drained") and "WorkerFailed" not in events(kube, "drained")
    # backoffLimit 0 and still alive: a failure now ends it, the preemption did not count
    end_pod(kube, second[0], 1)
    failed = phase_is(kube, "drained", "Failed")
    assert condition(failed, "Failed")["reason"] == "BackoffLimitExceeded"
    assert (failed["status"]["restarts"], failed["status"]["preemptions"]) == (0, 1)


def test_an_evicted_worker_is_not_a_failure(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("evicted", workers=2, backoffLimit=0))
    first = running_pods(kube, "evicted", 2)
    victim = first[0]["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": victim, "namespace": kube.namespace}}
    kube.kubectl("create", "--raw", f"/api/v1/namespaces/{kube.namespace}/pods/{victim}/eviction", "-f", "-",
                 stdin=json.dumps(eviction))
    attempt_running(kube, "evicted", 1, 2)
    status = phase_is(kube, "evicted", "Running")["status"]
    assert (status["restarts"], status["preemptions"]) == (0, 1)
    preempted = condition(get_json(kube, "tj", "evicted"), "Preempted")
    assert preempted["status"] == "False"  # the new group runs
    warning = [e for e in get_json(kube, "events", "--field-selector", "involvedObject.name=evicted")["items"]
               if e["reason"] == "WorkerPreempted"]
    assert warning and victim in warning[0]["message"]
