"""TrainingJobs queued by real Kueue (v0.17.0, built from its pinned module) on the real local API server, in
a cluster of their own (two 8-GPU nodes, a ClusterQueue with an 8-GPU quota): gang admission one job after
the other, a higher priority preempting a running job that is queued again and resumes, the Workload's life
with its job; and, without Kueue, the chart's priority classes: serving preempting a training worker. Pods
are ended with the exit-code annotation, as in test_trainingjob."""

from __future__ import annotations

import atexit
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelops.dev.cluster import ClusterError, LocalCluster, build_tools
from support import REPO, Kube, OperatorProcess, condition, eventually, get_json
from test_trainingjob import end_pod, events, phase_is, pods_of, report, running_pods

pytestmark = pytest.mark.cluster

QUEUE = {"kueue.x-k8s.io/queue-name": "training"}
URGENT = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "urgent"},
          "value": 1000, "description": "serving and urgent training: preempts queued training in Kueue"}
# The chart's recipe (values priorityClasses): serving above training, training never preempting.
SERVING = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "modelops-serving"},
           "value": 100000}
TRAINING = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "modelops-training"},
            "value": 1000, "preemptionPolicy": "Never"}
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def job(name: str, labels: dict[str, str] | None = None, **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "labels": labels if labels is not None else QUEUE},
        "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}},
                 "trainer": {"epochs": 2}, **spec}})


@pytest.fixture(scope="module")
def kueue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("kueue-cluster"), build_tools(REPO, kueue=True), kueue=True,
                           kueue_gpu_quota=8)
    atexit.register(cluster.down)
    try:
        cluster.up(die_with_parent=True)
    except ClusterError as error:
        pytest.fail(f"local cluster with Kueue did not start: {error}", pytrace=False)
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        cluster.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(c) for c in (URGENT, SERVING, TRAINING)))
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def kube(kueue_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A namespace of the Kueue cluster with its LocalQueue `training`."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    namespace = f"{name}-{uuid.uuid4().hex[:5]}"
    kueue_cluster.kubectl("create", "namespace", namespace)
    kueue_cluster.local_queue(namespace)
    eventually(lambda: kueue_cluster.kubectl("-n", namespace, "get", "serviceaccount", "default",
                                             check=False).returncode == 0, what="the default ServiceAccount")
    yield Kube(kueue_cluster, kueue_cluster.kubeconfig, namespace)
    kueue_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture
def operator(kube: Kube, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()
    print(f"--- operator log ({process.log_path}) ---\n{process.log()[-6000:]}")


class GpuWatch:
    """Samples the namespace's pods all along a test: the most GPUs held at once by worker pods that have not
    ended, and each job's pods seen while its Workload was not admitted."""

    def __init__(self, kube: Kube) -> None:
        self.kube, self.most, self.samples = kube, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            pods = get_json(self.kube, "pods")["items"]
            held = sum(int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
                       for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
                       for c in p["spec"]["containers"])
            self.most, self.samples = max(self.most, held), self.samples + 1
            time.sleep(0.1)


def workload_of(kube: Kube, name: str) -> dict[str, Any]:
    items = get_json(kube, "workloads.kueue.x-k8s.io", "-l", f"modelops.dev/training-job={name}")["items"]
    return items[0] if items else {}


def test_three_8_gpu_jobs_on_an_8_gpu_quota_run_one_after_the_other(kube, operator) -> None:  # type: ignore[no-untyped-def]
    names = ["first", "second", "third"]
    with GpuWatch(kube) as watch:
        for name in names:  # applied at once
            kube.kubectl("apply", "-f", "-", stdin=job(name, workers=2, resources={"gpus": 4}))
        order = []
        while len(order) < len(names):
            pods = eventually(lambda: [p for p in get_json(kube, "pods")["items"]
                                       if p["status"].get("phase") not in ("Succeeded", "Failed")],
                              30, "the next group admitted")
            running_name = pods[0]["metadata"]["labels"]["modelops.dev/training-job"]
            group = running_pods(kube, running_name, 2)
            for pod in group:  # the admission's flavor: the GPU nodes' label and taint
                assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.present"] == "true"
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
            running = phase_is(kube, running_name, "Running")
            assert running["status"]["queue"]["state"] == "Admitted" and condition(running, "Admitted")["status"] == "True"
            eventually(lambda: condition(workload_of(kube, running_name), "PodsReady").get("status") == "True",
                       what="Kueue told the group runs (PodsReady)")
            for waiting_name in set(names) - set(order) - {running_name}:
                waiting = eventually(lambda: (j := get_json(kube, "tj", waiting_name))["status"].get("queue", {})
                                     .get("reason") == "Pending" and j, what=f"{waiting_name} queued with Kueue's reason")
                assert waiting["status"]["phase"] == "Queued" and condition(waiting, "Queued")["status"] == "True"
                assert "insufficient unused quota for nvidia.com/gpu" in condition(waiting, "Ready")["message"]
                assert not pods_of(kube, waiting_name)
            for pod in group:
                end_pod(kube, pod, 0)
            phase_is(kube, running_name, "Succeeded")
            eventually(lambda: condition(workload_of(kube, running_name), "Finished").get("status") == "True",
                       what="the finished job's Workload Finished (quota released)")
            order.append(running_name)
    assert sorted(order) == sorted(names)
    assert watch.samples > 10 and watch.most == 8  # never more than the quota, never a partial group on top
    said = set(events(kube, order[-1]))  # queued (the condition's reason: WorkloadCreated), then admitted
    assert "Admitted" in said and said & {"WorkloadCreated", "Queued"}


def test_a_higher_priority_job_preempts_a_running_one_which_is_requeued_and_resumes(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("routine", workers=2, resources={"gpus": 4}, backoffLimit=0))
    first = running_pods(kube, "routine", 2)
    uid = get_json(kube, "tj", "routine")["metadata"]["uid"]
    report(kube, first[0], {"phase": "Training", "epoch": 1, "epochs": 2, "loss": 0.4})
    eventually(lambda: get_json(kube, "tj", "routine")["status"].get("progress", {}).get("epoch") == 1,
               what="progress of the first attempt")
    kube.kubectl("apply", "-f", "-", stdin=job("urgent", workers=1, resources={"gpus": 8}, priorityClassName="urgent"))
    [urgent] = running_pods(kube, "urgent", 1)
    assert workload_of(kube, "urgent")["spec"]["priority"] == 1000
    preempted = eventually(lambda: (j := get_json(kube, "tj", "routine"))["status"]["phase"] == "Queued"
                           and not pods_of(kube, "routine") and j, what="the routine job removed and queued again")
    cond = condition(preempted, "Preempted")
    assert cond["status"] == "True" and cond["reason"] == "EvictedByKueue" and "Preempted" in cond["message"]
    status = preempted["status"]
    assert (status["restarts"], status["preemptions"], status["endedAttempts"]) == (0, 1, {"0": "Preempted"})
    assert "Preempted" in events(kube, "routine")
    end_pod(kube, urgent, 0)
    phase_is(kube, "urgent", "Succeeded")
    # re-admitted: a fresh group, same job (its checkpoint directory is keyed by the job's uid: it resumes)
    second = [p for p in running_pods(kube, "routine", 2, timeout=30)]
    assert {p["metadata"]["labels"]["modelops.dev/attempt"] for p in second} == {"1"}
    env = {e["name"]: e.get("value") for e in second[0]["spec"]["containers"][0]["env"]}
    assert env["MODELOPS_JOB_UID"] == uid and env["MODELOPS_ATTEMPT"] == "1"
    resumed = phase_is(kube, "routine", "Running")
    assert condition(resumed, "Preempted")["status"] == "False"
    assert resumed["status"]["progress"]["epoch"] == 1  # what the first attempt reached is still shown
    for pod in second:
        end_pod(kube, pod, 0)
    done = phase_is(kube, "routine", "Succeeded")
    assert (done["status"]["restarts"], done["status"]["preemptions"]) == (0, 1)


def test_the_workload_lives_and_dies_with_its_job_and_unlabelled_jobs_skip_the_queue(kube, operator) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=job("big", workers=1, resources={"gpus": 8}))
    running_pods(kube, "big", 1)
    workload = workload_of(kube, "big")
    owner = workload["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("TrainingJob", "big", True)
    [podset] = workload["spec"]["podSets"]
    assert (podset["name"], podset["count"]) == ("workers", 1)
    assert podset["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # the quota is full, but a job without the label is not queued (the scheduler still places it)
    kube.kubectl("apply", "-f", "-", stdin=job("direct", labels={}, resources={"gpus": 1}))
    running_pods(kube, "direct", 1)
    assert not workload_of(kube, "direct") and "queue" not in get_json(kube, "tj", "direct")["status"]
    kube.kubectl("delete", "tj", "big", "--wait=true", "--timeout=30s")
    eventually(lambda: not workload_of(kube, "big"), what="the Workload garbage-collected with its job")


def test_serving_preempts_a_training_worker_and_the_job_restarts_its_group(kube, operator) -> None:  # type: ignore[no-untyped-def]
    """Without Kueue: the scheduler preempts a worker for a ModelService pod of a higher PriorityClass; the
    job's group restarts as a group, as a preemption (backoffLimit 0 is not consumed), and waits for GPUs."""
    def gpu_pods_left() -> bool:
        pods = json.loads(kube.cluster.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return not [p for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
                    and any(c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in p["spec"]["containers"])]

    eventually(gpu_pods_left, what="no GPU held by an earlier test")
    kube.kubectl("apply", "-f", "-", stdin=job("filler", labels={}, workers=2, resources={"gpus": 8},
                                              priorityClassName="modelops-training", backoffLimit=0))
    running_pods(kube, "filler", 2)  # every GPU of the cluster
    serving = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "serving"},
               "spec": {"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                        "repository": {"hostPath": {"path": "/tmp/models"}}, "resources": {"gpus": 1},
                        "priorityClassName": "modelops-serving"}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(serving))
    preempted = eventually(lambda: (j := get_json(kube, "tj", "filler"))["status"].get("preemptions") == 1 and j,
                           what="a training worker preempted by the serving pod")
    assert preempted["status"]["restarts"] == 0 and preempted["status"]["phase"] == "Pending"
    assert "WorkerPreempted" in events(kube, "filler")
    server = eventually(lambda: [p for p in get_json(kube, "pods", "-l", "modelops.dev/model-service=serving")["items"]
                                 if p["spec"].get("nodeName")], what="the serving pod placed on a GPU node")
    assert server[0]["spec"]["priorityClassName"] == "modelops-serving"
    # the new group (attempt 1) waits for a whole node's GPUs: training never preempts serving
    waiting = eventually(lambda: condition(j := get_json(kube, "tj", "filler"), "Ready").get("reason") == "Unschedulable"
                         and j, what="the restarted group waiting for GPUs")
    assert {p["metadata"]["labels"]["modelops.dev/attempt"] for p in pods_of(kube, "filler")} == {"1"}
    assert waiting["status"]["phase"] == "Pending"
    kube.kubectl("delete", "ms", "serving")
    group = running_pods(kube, "filler", 2, timeout=30)
    for pod in group:
        end_pod(kube, pod, 0)
    done = phase_is(kube, "filler", "Succeeded")
    assert (done["status"]["restarts"], done["status"]["preemptions"]) == (0, 1)
