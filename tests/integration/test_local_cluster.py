"""The local cluster behaves like a real one: nodes, scheduling, GC, and pods ended by annotation."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from modelops.dev.cluster import LocalCluster, _holder_alive, fence_status
from support import eventually

pytestmark = pytest.mark.cluster


def get(kube, *args: str) -> Any:  # type: ignore[no-untyped-def]
    return json.loads(kube.kubectl("get", *args, "-o", "json"))


def pod(name: str, *, gpus: int = 0, tolerate_gpu: bool = False) -> str:
    container: dict[str, Any] = {"name": "main", "image": "busybox", "command": ["sleep", "3600"]}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    if tolerate_gpu:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def test_nodes_ready_with_gpu_pool(kube) -> None:  # type: ignore[no-untyped-def]
    nodes = get(kube, "nodes")["items"]
    ready = [n for n in nodes if any(c["type"] == "Ready" and c["status"] == "True"
                                     for c in n["status"]["conditions"])]
    gpu = [n for n in ready if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"]
    assert len(ready) >= 4
    assert len(gpu) == 2
    for node in gpu:
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"


def test_deployment_runs_and_is_garbage_collected(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("create", "deployment", "web", "--image=nginx", "--replicas=3")

    def running() -> list[dict[str, Any]]:
        pods = get(kube, "pods", "-l", "app=web")["items"]
        up = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return up if len(up) == 3 else []

    pods = eventually(running, what="3 running pods")
    assert all(not p["spec"]["nodeName"].startswith("gpu-") for p in pods), "untolerated pods on GPU nodes"
    kube.kubectl("delete", "deployment", "web")
    eventually(lambda: not get(kube, "pods", "-l", "app=web")["items"], what="pods garbage-collected")


def test_gpu_pods_land_only_where_tolerated(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=pod("trainer", gpus=1, tolerate_gpu=True))
    kube.kubectl("apply", "-f", "-", stdin=pod("intruder", gpus=1))
    placed = eventually(lambda: get(kube, "pod", "trainer")["spec"].get("nodeName"), what="GPU pod placed")
    assert placed.startswith("gpu-")

    def unschedulable() -> bool:
        conditions = get(kube, "pod", "intruder")["status"].get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    eventually(unschedulable, what="untolerated GPU pod reported Unschedulable")
    assert not get(kube, "pod", "intruder")["spec"].get("nodeName")


@pytest.mark.parametrize(("code", "phase", "reason"), [("0", "Succeeded", "Completed"), ("3", "Failed", "Error")])
def test_exit_code_annotation_ends_pod(kube, code: str, phase: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=pod("worker"))
    eventually(lambda: get(kube, "pod", "worker")["status"].get("phase") == "Running", what="Running")
    kube.kubectl("annotate", "pod", "worker", f"e2e.modelops.dev/exit-code={code}")
    status = eventually(lambda: (s := get(kube, "pod", "worker")["status"])["phase"] == phase and s, what=phase)
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == int(code)
    assert terminated["reason"] == reason


def test_second_cluster_coexists_and_down_leaves_nothing(local_cluster: LocalCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = LocalCluster(tmp_path / "other", local_cluster.bin_dir, nodes=local_cluster.nodes[:1])
    try:
        other.up(die_with_parent=True)
        state = json.loads(other.state_file.read_text())
        assert set(other.status()["ports"].values()).isdisjoint(local_cluster.status()["ports"].values())
        assert "cpu-0" in other.kubectl("get", "nodes").stdout
    finally:
        other.down()
    assert not any(LocalCluster.owns_process(pid, state) for pid in state["pids"].values()), "a component outlived `down`"
    assert local_cluster.running(), "stopping one cluster touched the other"
    assert not [how for how in fence_status().values() if how.startswith("open")], "it lifted the other's network fence"


def test_fence_holder_counts_while_its_cluster_runs(local_cluster: LocalCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`down` of one cluster keeps the fence while another holder's cluster runs, though its starter exited."""
    exited = subprocess.Popen(["true"])
    exited.wait()
    running, stopped = tmp_path / "running", tmp_path / "stopped"
    running.write_text(f"{local_cluster.root}\n{exited.pid}\n")
    stopped.write_text(f"{tmp_path / 'never-started'}\n{exited.pid}\n")
    assert _holder_alive(running)
    assert not _holder_alive(stopped)


# ---- readiness: probes (via the e2e.modelops.dev/ready annotation) and readiness gates ----------

READY = "e2e.modelops.dev/ready"
GATE = "modelops.dev/model-ready"


def probed_pod(name: str, *, probe: bool = True, gates: tuple[str, ...] = ()) -> str:
    container: dict[str, Any] = {"name": "main", "image": "busybox", "command": ["sleep", "3600"]}
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": 8080}}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never",
                            "readinessGates": [{"conditionType": g} for g in gates]}
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def conditions(kube, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    status = get(kube, "pod", name)["status"]
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def wait_conditions(kube, name: str, **expected: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    def check() -> dict[str, str]:
        current = conditions(kube, name)
        return current if all(current.get(k) == v for k, v in expected.items()) else {}

    return eventually(check, what=f"{name} conditions {expected}")


def set_gate(kube, name: str, gate: str, status: str) -> None:  # type: ignore[no-untyped-def]
    """What the operator does for a readiness gate: a condition written through pods/status."""
    patch = {"status": {"conditions": [{"type": gate, "status": status}]}}
    kube.kubectl("patch", "pod", name, "--subresource=status", "--type=strategic", "-p", json.dumps(patch))


def test_pod_without_probe_or_gate_becomes_ready(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=probed_pod("plain", probe=False))
    wait_conditions(kube, "plain", ContainersReady="True", Ready="True")
    assert get(kube, "pod", "plain")["status"]["containerStatuses"][0]["ready"] is True


def test_readiness_probe_result_flips_ready_both_ways(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=probed_pod("probed"))
    eventually(lambda: get(kube, "pod", "probed")["status"].get("phase") == "Running", what="Running")
    time.sleep(1)  # give a wrong stage the chance to mark it Ready
    current = conditions(kube, "probed")
    assert (current["ContainersReady"], current["Ready"]) == ("False", "False")
    kube.kubectl("annotate", "pod", "probed", f"{READY}=true")
    wait_conditions(kube, "probed", ContainersReady="True", Ready="True")
    kube.kubectl("annotate", "pod", "probed", f"{READY}=false", "--overwrite")
    wait_conditions(kube, "probed", ContainersReady="False", Ready="False")
    assert get(kube, "pod", "probed")["status"]["containerStatuses"][0]["ready"] is False


def test_readiness_gate_holds_ready_until_its_condition_is_true(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=probed_pod("gated", gates=(GATE, "example.com/other")))
    kube.kubectl("annotate", "pod", "gated", f"{READY}=true")
    wait_conditions(kube, "gated", ContainersReady="True", Ready="False")
    set_gate(kube, "gated", GATE, "True")
    time.sleep(1)
    assert wait_conditions(kube, "gated", ContainersReady="True")["Ready"] == "False", "one gate is still unmet"
    set_gate(kube, "gated", "example.com/other", "True")
    wait_conditions(kube, "gated", Ready="True", **{GATE: "True"})
    # the probe failing again takes Ready away; the gate conditions written by others survive kwok's patches
    kube.kubectl("annotate", "pod", "gated", f"{READY}=false", "--overwrite")
    current = wait_conditions(kube, "gated", ContainersReady="False", Ready="False")
    assert current[GATE] == "True" and current["example.com/other"] == "True"
    kube.kubectl("annotate", "pod", "gated", f"{READY}=true", "--overwrite")
    wait_conditions(kube, "gated", Ready="True")
    set_gate(kube, "gated", GATE, "False")
    wait_conditions(kube, "gated", ContainersReady="True", Ready="False")


def test_readiness_annotation_does_not_stop_exit(kube) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin=probed_pod("ending"))
    kube.kubectl("annotate", "pod", "ending", f"{READY}=true")
    wait_conditions(kube, "ending", Ready="True")
    kube.kubectl("annotate", "pod", "ending", "e2e.modelops.dev/exit-code=0")
    eventually(lambda: get(kube, "pod", "ending")["status"]["phase"] == "Succeeded", what="Succeeded")
    assert wait_conditions(kube, "ending", Ready="False")
