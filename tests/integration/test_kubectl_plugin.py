"""`kubectl modelops` against the real local cluster and the real operator: through the installed
kubectl-modelops entry point and through kubectl's own plugin discovery (PATH). Training pods are kwok
pods: the tests report progress and end them with annotations, as the trainer and the kubelet would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import eventually, get_json

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent  # the venv the package (and its kubectl-modelops script) is installed in
EXIT, PROGRESS = "e2e.modelops.dev/exit-code", "modelops.dev/progress"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
REPOSITORY = {"hostPath": {"path": "/tmp/models"}}


def env(kube: Any, kubeconfig: Path | None = None) -> dict[str, str]:
    """KUBECONFIG as a user exports it; the venv and the cluster's kubectl first on PATH."""
    path = os.pathsep.join([str(BIN), str(kube.cluster.bin_dir), os.environ.get("PATH", "")])
    return {**os.environ, "KUBECONFIG": str(kubeconfig or kube.kubeconfig), "PATH": path}


def plugin(kube: Any, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    """The installed entry point, in the test's namespace."""
    result = subprocess.run([str(BIN / "kubectl-modelops"), *args, "-n", kube.namespace], env=env(kube),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stdout + result.stderr
    return result


def kubectl_modelops(kube: Any, *args: str) -> subprocess.Popen[str]:
    """`kubectl modelops ...`: kubectl finds kubectl-modelops on PATH (stdout a pipe, not a terminal)."""
    return subprocess.Popen(["kubectl", "modelops", *args, "-n", kube.namespace], env=env(kube),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def apply(kube: Any, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "modelops.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(body))


def training_job(kube: Any, name: str, **spec: Any) -> None:
    apply(kube, "TrainingJob", name, {"output": {"modelName": "digits", "repository": REPOSITORY},
                                      "trainer": {"epochs": 2}, **spec})


def running_pods(kube: Any, job: str, count: int) -> list[str]:
    def check() -> list[str]:
        pods = get_json(kube, "pods", "-l", f"modelops.dev/training-job={job}")["items"]
        names = sorted(p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running")
        return names if len(names) == count else []

    return eventually(check, 30, f"{count} running pods of {job}")


def annotate(kube: Any, pod: str, **values: Any) -> None:
    kube.kubectl("annotate", "pod", pod, "--overwrite",
                 *(f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()))


def report(kube: Any, pod: str, progress: dict[str, Any], job: str) -> None:
    """The trainer's progress report, and the wait for the operator to mirror it into the job's status."""
    annotate(kube, pod, **{PROGRESS: progress})
    eventually(lambda: get_json(kube, "tj", job)["status"].get("progress", {}).get("step") == progress.get("step"),
               what=f"step {progress.get('step')} in status")


def finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_get_watch_and_logs_of_training_jobs(kube, operator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    training_job(kube, "digits", workers=2)
    training_job(kube, "broken", backoffLimit=0)
    apply(kube, "ModelService", "web", {"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                                        "repository": REPOSITORY})
    workers = running_pods(kube, "digits", 2)
    [broken] = running_pods(kube, "broken", 1)
    watch = kubectl_modelops(kube, "watch", "tj", "digits")
    watch_broken = subprocess.Popen([str(BIN / "kubectl-modelops"), "watch", "tj/broken", "-n", kube.namespace],
                                    env=env(kube), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    report(kube, workers[0], {"phase": "Training", "epoch": 1, "epochs": 2, "step": 10, "loss": 0.9,
                              "samplesPerSecond": 512.0}, "digits")
    eventually(lambda: get_json(kube, "ms", "web").get("status", {}).get("ready"), what="the ModelService's status")
    rows = {line.split()[0]: line.split() for line in plugin(kube, "get").stdout.splitlines()}
    assert rows["NAME"] == ["NAME", "PHASE", "PROGRESS", "MODEL", "VERSION", "CANARY", "READY", "AGE"]
    assert rows["tj/digits"][1:7] == ["Running", "epoch", "1/2", "step", "10", "digits"]
    assert rows["tj/digits"][-2] == "2/2"
    assert rows["tj/broken"][1:3] == ["Running", "-"]
    assert rows["ms/web"][3] == "digits" and rows["ms/web"][-2] == "0/1"
    everywhere = [line.split() for line in plugin(kube, "get", "tj", "-A").stdout.splitlines()]
    assert everywhere[0][:2] == ["NAMESPACE", "NAME"]
    assert [kube.namespace, "tj/digits", "Running"] in [line[:3] for line in everywhere]
    assert not any("ms/web" in line for line in everywhere)
    listed = json.loads(plugin(kube, "get", "ms", "web", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == ["web"] and listed["kind"] == "List"
    assert "managedFields" not in listed["items"][0]["metadata"]
    same = subprocess.run([str(BIN / "modelops"), "get", "tj", "digits", "-n", kube.namespace], env=env(kube),
                          capture_output=True, text=True, timeout=60)  # `modelops get` is the same command
    assert same.stdout.splitlines()[1].split()[:6] == ["tj/digits", "Running", "epoch", "1/2", "step", "10"]

    # A context naming the namespace (kubectl's default for -n), from a kubeconfig only KUBECONFIG names.
    config = json.loads(kube.kubeconfig.read_text())
    config["contexts"].append({"name": "plugin", "context": {**config["contexts"][0]["context"],
                                                             "namespace": kube.namespace}})
    (tmp_path / "config").write_text(json.dumps(config))
    by_context = subprocess.run([str(BIN / "kubectl-modelops"), "get", "--context", "plugin"], capture_output=True,
                                text=True, env=env(kube, tmp_path / "config"), timeout=60)
    assert "tj/digits" in by_context.stdout, by_context.stderr

    # kwok pods run no container: the log request reaches the API server, which says why it has none.
    logs = plugin(kube, "logs", "tj", "digits", "--rank", "1", code=1)
    assert f"pod {kube.namespace}/digits-a0-w1 (attempt 0, rank 1, container trainer)" in logs.stderr
    assert "no worker of rank 2 (ranks: 0, 1)" in plugin(kube, "logs", "tj", "digits", "--rank", "2", code=1).stderr

    report(kube, workers[0], {"phase": "Training", "epoch": 2, "epochs": 2, "step": 25, "checkpointedEpoch": 1,
                              "loss": 0.4, "valAccuracy": 0.91, "samplesPerSecond": 640.0}, "digits")
    described = plugin(kube, "describe", "tj", "digits").stdout
    assert "Checkpoint:      epoch 1" in described, described
    assert "Preemption cost: epoch 2, resuming after the checkpoint of epoch 1" in described, described
    assert "WorkersRunning" in described.split("Events:")[1], described  # the job's own Events, by field selector
    assert json.loads(plugin(kube, "describe", "tj/digits", "-o", "json").stdout)["progress"]["checkpointedEpoch"] == 1
    annotate(kube, workers[0], **{PROGRESS: {"phase": "Succeeded", "epoch": 2, "epochs": 2, "step": 40,
                                             "testAccuracy": 0.93, "model": {"name": "digits", "version": 1,
                                                                             "uri": "/models/digits/1",
                                                                             "signature": SIGNATURE}}})
    for pod in workers:
        annotate(kube, pod, **{EXIT: "0"})
    annotate(kube, broken, **{EXIT: "3"})

    code, out, err = finish(watch)
    assert code == 0, out + err
    lines = out.splitlines()
    assert any("[" in line and "epoch 1/2 step 10  loss 0.900  512 samples/s" in line for line in lines), out
    assert any("epoch 2/2 step 25 checkpoint 1  loss 0.400  acc 0.910  640 samples/s" in line for line in lines), out
    assert "100%" in lines[-2] and lines[-1] == "tj/digits succeeded: published digits version 1, test accuracy 0.930"
    code, out, err = finish(watch_broken)
    assert code == 1, out + err
    assert out.splitlines()[-1].startswith("tj/broken failed: BackoffLimitExceeded: ")
    rows = {line.split()[0]: line.split() for line in plugin(kube, "get", "tj").stdout.splitlines()}
    assert rows["tj/digits"][1:8] == ["Succeeded", "epoch", "2/2", "step", "40", "digits", "1"], rows


def rollout_annotation(kube: Any, name: str) -> str | None:
    return (get_json(kube, "ms", name)["metadata"].get("annotations") or {}).get("modelops.dev/rollout")


def test_describe_promote_abort_and_rollback_of_a_model_service(kube, operator) -> None:  # type: ignore[no-untyped-def]
    training_job(kube, "trainer")
    apply(kube, "ModelService", "web", {"model": {"name": "digits", "fromTrainingJob": "trainer"},
                                        "repository": REPOSITORY, "replicas": 2,
                                        "rollout": {"steps": [{"weight": 50, "pauseSeconds": 60}]}})
    [pod] = running_pods(kube, "trainer", 1)
    published = {"name": "digits", "version": 1, "uri": "/models/digits/1", "signature": SIGNATURE}
    annotate(kube, pod, **{PROGRESS: {"phase": "Succeeded", "model": published}, EXIT: "0"})
    stable = eventually(lambda: get_json(kube, "ms", "web").get("status", {}).get("stable", {}).get("name"),
                        what="a stable revision")

    # rollback: the pin needs a signature (a CEL rule): copied from the revision that served version 1.
    done = plugin(kube, "rollback", "ms", "web", "--to-version", "1").stdout
    assert done.startswith("modelservice.modelops.dev/web pinned to version 1 (was following TrainingJob trainer)")
    assert f"signature from revision {stable}, which served version 1" in done
    assert get_json(kube, "ms", "web")["spec"]["model"] == {"name": "digits", "version": 1, "signature": SIGNATURE}
    assert "already pinned to version 1" in plugin(kube, "rollback", "ms/web", "--to-version", "1").stdout

    # Nothing to promote without a canary: the annotation would act on the next rollout at once.
    assert "no canary in progress" in plugin(kube, "promote", "ms", "web", code=1).stderr
    assert rollout_annotation(kube, "web") is None
    plugin(kube, "rollback", "ms", "web", "--to-version", "2")  # a new version: a canary (kwok pods never serve)
    canary = eventually(lambda: get_json(kube, "ms", "web").get("status", {}).get("canary", {}).get("name"),
                        what="a canary revision")
    assert canary.startswith("web-v2-")

    promoted = plugin(kube, "promote", "ms", "web").stdout
    assert f"modelops.dev/rollout=promote: canary {canary} (version 2 at 50%)" in promoted
    assert rollout_annotation(kube, "web") == "promote"  # held: no canary pod serves a verified model

    describe = kubectl_modelops(kube, "describe", "ms", "web")
    code, text, err = finish(describe)
    assert code == 0, err
    lines = [line.split() for line in text.splitlines()]
    assert ["Model:", "digits,", "pinned", "to", "version", "2"] in lines
    assert [stable, "1", "stable", "50%"] == next(line for line in lines if line and line[0] == stable)[:4]
    assert [canary, "2", "canary", "50%", "0/1"] == next(line for line in lines if line and line[0] == canary)[:5]
    assert "CanaryStarted" in text and "Conditions:" in text and "ModelCheck" in text
    data = yaml.safe_load(plugin(kube, "describe", "ms", "web", "-o", "yaml").stdout)
    assert {r["name"]: (r["role"], r["weight"]) for r in data["revisions"]} == {stable: ("stable", 50),
                                                                               canary: ("canary", 50)}
    assert [e["reason"] for e in data["rollout"]] == ["Deploying", "CanaryStarted"]

    assert "rolls it back" in plugin(kube, "abort", "ms/web").stdout
    rolled = eventually(lambda: (s := get_json(kube, "ms", "web")["status"]).get("rejectedRevision") == canary and s,
                        what="the canary rolled back")
    assert rolled["phase"] == "Degraded" and "aborted by the modelops.dev/rollout annotation" in \
        next(c["message"] for c in rolled["conditions"] if c["type"] == "RolledBack")
    eventually(lambda: rollout_annotation(kube, "web") is None, what="the operator clears the annotation")
    text = plugin(kube, "describe", "ms", "web").stdout
    assert f"rejected (not retried until the spec changes): {canary}" in text and "RolledBack" in text


def test_get_and_describe_show_a_pool_and_a_pooled_model_service(kube, operator) -> None:  # type: ignore[no-untyped-def]
    """kwok runs no Triton: the pool's servers exist and hold nothing, the pooled ModelService is placing."""
    apply(kube, "ModelPool", "shared", {"repository": REPOSITORY, "capacity": "1Gi", "minServers": 1,
                                        "maxServers": 2})
    apply(kube, "ModelService", "tiny", {"model": {"name": "digits", "version": 1, "signature": SIGNATURE},
                                         "pool": "shared", "repository": REPOSITORY, "replicas": 1,
                                         "resources": {"memory": "300Mi"}})
    eventually(lambda: get_json(kube, "mp", "shared").get("status", {}).get("servers"), what="the pool's servers")
    eventually(lambda: get_json(kube, "ms", "tiny").get("status", {}).get("pool"), what="the pooled status")

    rows = {line.split()[0]: line.split() for line in plugin(kube, "get").stdout.splitlines()[1:]}
    assert rows["ms/tiny"][3] == "digits@mp/shared"
    assert rows["mp/shared"][2] == "0/1Gi" and rows["mp/shared"][3:5] == ["0", "models/0"]
    assert [line.split()[0] for line in plugin(kube, "get", "mp").stdout.splitlines()] == ["NAME", "mp/shared"]

    text = plugin(kube, "describe", "mp", "shared").stdout
    assert "Scale:      " in text and "capacity 1Gi each" in text
    servers = text.splitlines()[text.splitlines().index("Servers:") + 2].split()
    assert servers[0] == "shared-s0" and servers[3] == "0/1Gi"
    data = yaml.safe_load(plugin(kube, "describe", "mp/shared", "-o", "yaml").stdout)
    assert data["servers"][0]["name"] == "shared-s0" and data["totals"] == {"loads": 0, "unloads": 0, "evictions": 0}

    described = plugin(kube, "describe", "ms", "tiny").stdout
    assert "Pool:\n  mp/shared; its Service lists no server" in described
    assert "Serving:    version 1, 0/1 copies ready" in described
    [endpoint_slice] = get_json(kube, "endpointslices", "-l", "kubernetes.io/service-name=tiny")["items"]
    assert json.loads(endpoint_slice["metadata"]["annotations"]["modelops.dev/pooled-rollout"])["stableVersion"] == 1
