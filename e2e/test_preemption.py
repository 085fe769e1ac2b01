"""A preempted TrainingJob resumes from its checkpoint, for real: the trainer runs as a local process (the kubelet
stand-in), its worker is evicted mid-training through the Eviction API, the operator restarts the group as a
preemption (backoffLimit 0 is not consumed) and the next attempt continues from the last epoch it saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import condition, eventually, get_json


def apply(kube, *objects: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))


def test_an_evicted_worker_resumes_from_its_checkpoint(kube, operator, kubelet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the trainer reports progress by patching its own pod with the pod's ServiceAccount (here `default`)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "trainer"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "trainer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": kube.namespace}]}
    repository = tmp_path / "models"
    job = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "resumable"},
           "spec": {"workers": 1, "backoffLimit": 0, "trainer": {"dataset": "digits", "epochs": 40},
                    "output": {"modelName": "digits", "repository": {"hostPath": {"path": str(repository)}}}}}
    apply(kube, role, binding, job)

    def status() -> dict[str, Any]:
        return dict(get_json(kube, "tj", "resumable").get("status") or {})

    reached = eventually(lambda: (s := status()).get("progress", {}).get("epoch", 0) >= 3 and s, 240,
                         "three epochs of the first attempt")
    victim = f"resumable-a{reached.get('attempt', 0)}-w0"
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim, "namespace": kube.namespace}}
    kube.kubectl("create", "--raw", f"/api/v1/namespaces/{kube.namespace}/pods/{victim}/eviction", "-f", "-",
                 stdin=json.dumps(eviction))
    done = eventually(lambda: (s := status()).get("phase") in ("Succeeded", "Failed") and s, 300, "the job to finish")
    assert done["phase"] == "Succeeded", done
    assert (done["restarts"], done["preemptions"], done["endedAttempts"]) == (0, 1, {"0": "Preempted"}), done
    assert condition(get_json(kube, "tj", "resumable"), "Preempted")["status"] == "False"
    metadata = json.loads((repository / "digits" / str(done["model"]["version"]) / "metadata.json").read_text())
    resumed = metadata["trainer"]["resumedFromEpoch"]
    assert resumed is not None and resumed >= 3, metadata["trainer"]
    assert "resumed from checkpoint at epoch" in kubelet.logs(kube.namespace, "resumable-a1-w0")
    assert done["progress"]["epoch"] == 40
