"""A preempted TrainingJob resumes from its checkpoint, for real: the trainer runs as a local process (the kubelet
stand-in), its worker is evicted mid-training through the Eviction API, the operator restarts the group as a
preemption (backoffLimit 0 is not consumed) and the next attempt continues from the last epoch it saved. The
same through Kueue: a higher-priority job preempts a queued one, which is queued again, re-admitted and resumes.

No timing guess: the tests wait for status.progress.checkpointedEpoch (an epoch counts once its checkpoint is
saved), and the attempt resumes from exactly the last checkpoint the evicted worker reported (it reports each
save before a SIGTERM can end it), which is never below what status showed when the eviction was asked for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelops.dev.cluster import ClusterError, LocalCluster, build_tools
from support import REPO, condition, eventually, get_json


def apply(kube, *objects: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))


def trainer_rbac(kube) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The trainer reports progress by patching its own pod with the pod's ServiceAccount (here `default`)."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "trainer"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "trainer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": kube.namespace}]}
    return role, binding


def checkpointed(status: dict[str, Any]) -> int:
    return int((status.get("progress") or {}).get("checkpointedEpoch") or 0)


def last_reported_checkpoint(log: str) -> int:
    """The checkpointedEpoch of the last progress report in a worker's log (its `PROGRESS {json}` lines)."""
    reports = [json.loads(line.removeprefix("PROGRESS ")) for line in log.splitlines() if line.startswith("PROGRESS ")]
    assert reports, log[-2000:]
    return int(reports[-1]["checkpointedEpoch"])


def test_an_evicted_worker_resumes_from_its_checkpoint(kube, operator, kubelet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    role, binding = trainer_rbac(kube)
    repository = tmp_path / "models"
    job = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "resumable"},
           "spec": {"workers": 1, "backoffLimit": 0, "trainer": {"dataset": "digits", "epochs": 40},
                    "output": {"modelName": "digits", "repository": {"hostPath": {"path": str(repository)}}}}}
    apply(kube, role, binding, job)

    seen: list[int] = []  # checkpointedEpoch as status showed it, poll after poll

    def status() -> dict[str, Any]:
        current = dict(get_json(kube, "tj", "resumable").get("status") or {})
        seen.append(checkpointed(current))
        return current

    reached = eventually(lambda: (s := status()).get("attempt") == 0 and checkpointed(s) >= 3 and s, 240,
                         "epoch 3 of the first attempt checkpointed")
    victim = "resumable-a0-w0"
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": kube.namespace}}
    kube.kubectl("create", "--raw", f"/api/v1/namespaces/{kube.namespace}/pods/{victim}/eviction", "-f", "-",
                 stdin=json.dumps(eviction))
    done = eventually(lambda: (s := status()).get("phase") in ("Succeeded", "Failed") and s, 300, "the job to finish")
    assert done["phase"] == "Succeeded", done
    assert (done["restarts"], done["preemptions"], done["endedAttempts"]) == (0, 1, {"0": "Preempted"}), done
    assert condition(get_json(kube, "tj", "resumable"), "Preempted")["status"] == "False"
    metadata = json.loads((repository / "digits" / str(done["model"]["version"]) / "metadata.json").read_text())
    resumed = metadata["trainer"]["resumedFromEpoch"]
    last_saved = last_reported_checkpoint(kubelet.logs(kube.namespace, victim))
    assert resumed == last_saved >= checkpointed(reached), (metadata["trainer"], last_saved, reached["progress"])
    assert f"resumed from checkpoint at epoch {resumed}" in kubelet.logs(kube.namespace, "resumable-a1-w0")
    assert seen == sorted(seen), seen  # across the preemption status never showed less saved than before
    assert (done["progress"]["epoch"], done["progress"]["checkpointedEpoch"]) == (40, 40)


@pytest.fixture
def kueue(local_cluster: LocalCluster, kube) -> LocalCluster:  # type: ignore[no-untyped-def]
    """Kueue on the session's cluster (started once, left running: it manages only queued workloads), an
    8-GPU ClusterQueue, the LocalQueue `training` in the test's namespace and the PriorityClass `urgent`."""
    build_tools(REPO, kueue=True)  # links kueue into the cluster's bin directory
    local_cluster.kueue_gpu_quota = 8
    try:
        local_cluster.start_kueue(die_with_parent=True)
    except ClusterError as error:
        pytest.fail(f"Kueue did not start: {error}", pytrace=False)
    local_cluster.local_queue(kube.namespace)
    local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "urgent"}, "value": 1000}))
    return local_cluster


def test_a_job_preempted_in_kueue_is_requeued_and_resumes_from_its_checkpoint(kube, kueue, operator, kubelet,  # type: ignore[no-untyped-def]
                                                                              tmp_path: Path) -> None:
    repository = tmp_path / "models"
    queued = {"kueue.x-k8s.io/queue-name": "training"}

    def training_job(name: str, epochs: int, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": name, "labels": queued},
                "spec": {"workers": 1, "resources": {"gpus": 8}, "backoffLimit": 0,
                         "trainer": {"dataset": "digits", "epochs": epochs},
                         "output": {"modelName": name, "repository": {"hostPath": {"path": str(repository)}}}, **spec}}

    apply(kube, *trainer_rbac(kube), training_job("routine", 20))

    def status(name: str) -> dict[str, Any]:
        return dict(get_json(kube, "tj", name).get("status") or {})

    reached = eventually(lambda: checkpointed(s := status("routine")) >= 3 and s, 240, "epoch 3 of routine checkpointed")
    apply(kube, training_job("urgent", 2, priorityClassName="urgent"))
    preempted = eventually(lambda: (s := status("routine")).get("phase") == "Queued" and s.get("preemptions") == 1
                           and s, 60, "routine preempted by Kueue and queued again")
    assert preempted["restarts"] == 0 and preempted["queue"]["state"] in ("Queued", "Evicted")
    urgent = eventually(lambda: (s := status("urgent")).get("phase") in ("Succeeded", "Failed") and s, 240,
                        "the urgent job to finish")
    assert urgent["phase"] == "Succeeded", urgent
    done = eventually(lambda: (s := status("routine")).get("phase") in ("Succeeded", "Failed") and s, 300,
                      "routine, re-admitted, to finish")
    assert done["phase"] == "Succeeded", done
    assert (done["restarts"], done["preemptions"], done["attempt"]) == (0, 1, 1), done
    metadata = json.loads((repository / "routine" / str(done["model"]["version"]) / "metadata.json").read_text())
    last_saved = last_reported_checkpoint(kubelet.logs(kube.namespace, "routine-a0-w0"))
    assert metadata["trainer"]["resumedFromEpoch"] == last_saved >= checkpointed(reached), \
        (metadata["trainer"], last_saved, reached["progress"])
