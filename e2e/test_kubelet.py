"""The kubelet stand-in runs real processes for kwok pods: pod IPs, Services through kube-proxy, volumes,
exit codes, readiness, and a real 2-worker DDP TrainingJob driven by the operator."""

from __future__ import annotations

import json
import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support import condition, eventually, get_json

pytestmark = pytest.mark.cluster


def apply(kube, *objects: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": command, **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def finished(kube, name: str, timeout: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return eventually(lambda: (p := get_json(kube, "pod", name))["status"].get("phase") in ("Succeeded", "Failed") and p,
                      timeout, f"pod {name} to finish")


def is_ready(kube, name: str) -> bool:  # type: ignore[no-untyped-def]
    return condition(get_json(kube, "pod", name), "Ready").get("status") == "True"


WEB = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "web", "image": "python:3.11",
            # $(POD_NAME) is expanded by the kubelet, before the shell sees the command
            "command": ["sh", "-c", "echo $(POD_NAME) > /www/name && exec python -m http.server 8080 --directory /www"],
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
            "volumeMounts": [{"name": "www", "mountPath": "/www"}]}],
            "volumes": [{"name": "www", "emptyDir": {}}]}}},
}
WEB_SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def ready_web_pods(kube) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    def check() -> list[dict[str, Any]]:
        pods = get_json(kube, "pods", "-l", "app=web")["items"]
        ready = [p for p in pods if condition(p, "Ready").get("status") == "True"]
        return ready if len(ready) == 2 else []

    return eventually(check, 60, "2 ready web replicas")


def test_replicas_on_the_same_port_answer_on_their_own_pod_ips(kube, kubelet) -> None:  # type: ignore[no-untyped-def]
    apply(kube, WEB)
    pods = ready_web_pods(kube)
    assert len({p["status"]["podIP"] for p in pods}) == 2
    for p in pods:
        assert http_get(f"http://{p['status']['podIP']}:8080/name").strip() == p["metadata"]["name"]
    # a deleted pod's processes end (its IP may go to the replacement pod, which answers with its own name)
    gone, ip = pods[0]["metadata"]["name"], pods[0]["status"]["podIP"]
    kube.kubectl("delete", "pod", gone, "--wait=false")

    def stopped_answering() -> bool:
        try:
            return http_get(f"http://{ip}:8080/name").strip() != gone
        except OSError:
            return True

    eventually(stopped_answering, 30, f"{gone} to stop")


def test_service_cluster_ip_spreads_over_replicas_and_resolves_by_name(kube, kubelet) -> None:  # type: ignore[no-untyped-def]
    apply(kube, WEB, WEB_SERVICE)
    names = {p["metadata"]["name"] for p in ready_web_pods(kube)}
    cluster_ip = get_json(kube, "service", "web")["spec"]["clusterIP"]

    def hits() -> Counter[str]:  # kube-proxy rules follow the EndpointSlice a moment later
        try:
            return Counter(http_get(f"http://{cluster_ip}/name").strip() for _ in range(40))
        except OSError:
            return Counter()

    # Until kube-proxy has synced the second endpoint, every hit lands on the first replica.
    counts = eventually(lambda: (c := hits()) and set(c) == names and c, 30, "the ClusterIP to reach both replicas")
    assert set(counts) == names, counts
    # from inside a pod: the Service's DNS names (via /etc/hosts) and the ClusterIP (via kube-proxy)
    script = (f"import urllib.request as u\nfor host in ('web', 'web.{kube.namespace}.svc.cluster.local'):\n"
              "    print(host, u.urlopen(f'http://{host}/name', timeout=5).read().decode().strip())\n")
    apply(kube, pod("client", ["python", "-c", script]))
    done = finished(kube, "client")
    output = kubelet.logs(kube.namespace, "client")
    assert done["status"]["phase"] == "Succeeded", output
    answers = dict(line.split() for line in output.splitlines())
    assert set(answers) == {"web", f"web.{kube.namespace}.svc.cluster.local"} and set(answers.values()) <= names, output


def test_config_map_and_host_path_volumes_resolve_inside_the_pod(kube, kubelet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "host" / "sub").mkdir(parents=True)
    (tmp_path / "host" / "sub" / "data.txt").write_text("from the host\n")
    command = ["sh", "-c", "cat /etc/modelops-e2e/greeting; echo; cat /opt/modelops-e2e/app.conf; echo; cat /data/data.txt;"
               " ls /etc/modelops-e2e;"
               " touch /etc/modelops-e2e/x 2>/dev/null || echo read-only; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"]
    spec = {
        "container": {"volumeMounts": [
            {"name": "items", "mountPath": "/etc/modelops-e2e", "readOnly": True},
            {"name": "all", "mountPath": "/opt/modelops-e2e/app.conf", "subPath": "app.conf"},
            {"name": "host", "mountPath": "/data", "subPath": "sub"}]},
        "volumes": [
            {"name": "items", "configMap": {"name": "app", "items": [{"key": "greeting", "path": "greeting"}]}},
            {"name": "all", "configMap": {"name": "app"}},
            {"name": "host", "hostPath": {"path": str(tmp_path / "host"), "type": "Directory"}}],
    }
    apply(kube, pod("reader", command, **spec))
    # a missing ConfigMap: the container does not start, the kubelet reports it as an Event and retries
    event = eventually(lambda: [e for e in get_json(kube, "events")["items"]
                                if e["involvedObject"]["name"] == "reader" and e["reason"] == "FailedMount"], 30,
                       "a FailedMount event")
    assert 'configmap "app" not found' in event[0]["message"]
    assert not kubelet.logs(kube.namespace, "reader")
    kube.kubectl("create", "configmap", "app", "--from-literal=greeting=hello", "--from-literal=app.conf=mode=e2e")
    done = finished(kube, "reader")
    output = kubelet.logs(kube.namespace, "reader")
    assert done["status"]["phase"] == "Succeeded", output
    assert output.splitlines() == ["hello", "mode=e2e", "from the host", "greeting", "read-only", kube.namespace]


@pytest.mark.parametrize(("command", "phase", "code"), [(["sh", "-c", "echo bad input >&2; exit 3"], "Failed", 3),
                                                       (["true"], "Succeeded", 0)])
def test_exit_code_ends_the_pod(kube, kubelet, command: list[str], phase: str, code: int) -> None:  # type: ignore[no-untyped-def]
    spec = {"container": {"terminationMessagePolicy": "FallbackToLogsOnError"}}
    apply(kube, pod("job", command, **spec))
    done = finished(kube, "job")
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (done["status"]["phase"], terminated["exitCode"]) == (phase, code)
    if code:
        assert terminated["message"] == "bad input\n"


def test_readiness_probe_flips_pod_ready(kube, kubelet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    control = tmp_path / "control"
    control.mkdir()
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    spec = {"container": {"readinessProbe": probe, "volumeMounts": [{"name": "control", "mountPath": "/control"}]},
            "volumes": [{"name": "control", "hostPath": {"path": str(control)}}]}
    apply(kube, pod("server", ["python", "-m", "http.server", "8080", "--directory", "/control"], **spec))
    eventually(lambda: get_json(kube, "pod", "server")["status"].get("phase") == "Running", 30, "Running")
    assert not is_ready(kube, "server")
    (control / "ready").write_text("ok")
    eventually(lambda: is_ready(kube, "server"), 30, "Ready after the probe passes")
    (control / "ready").unlink()
    eventually(lambda: not is_ready(kube, "server"), 30, "not Ready after the probe fails")
    (control / "ready").write_text("ok")
    eventually(lambda: is_ready(kube, "server"), 30, "Ready again")


def test_ddp_training_job_trains_for_real_and_publishes(kube, operator, kubelet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the trainer reports progress by patching its own pod with the pod's ServiceAccount (here `default`)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "trainer"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "trainer"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "trainer"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": kube.namespace}]}
    repository = tmp_path / "models"
    job = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "digits"},
           "spec": {"workers": 2, "nprocPerNode": 2, "resources": {"gpus": 1},
                    "trainer": {"dataset": "digits", "epochs": 3},
                    "output": {"modelName": "digits", "repository": {"hostPath": {"path": str(repository)}}}}}
    apply(kube, role, binding, job)

    def progress() -> dict[str, Any]:
        return dict(get_json(kube, "tj", "digits").get("status", {}).get("progress") or {})

    seen = eventually(lambda: (p := progress()).get("epoch") and p, 240, "training progress in the job's status")
    pods = get_json(kube, "pods", "-l", "modelops.dev/training-job=digits")["items"]
    assert sorted(p["spec"]["nodeName"][:4] for p in pods) == ["gpu-", "gpu-"]
    done = eventually(lambda: (j := get_json(kube, "tj", "digits")).get("status", {}).get("phase") in ("Succeeded", "Failed") and j,
                      300, "the job to finish")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    model = done["status"]["model"]
    assert model["name"] == "digits" and model["version"] >= 1, model
    version_dir = repository / "digits" / str(model["version"])
    assert (version_dir / "model.pt").is_file(), sorted(repository.rglob("*"))
    assert done["status"]["progress"]["epoch"] == 3 and seen["epochs"] == 3
    assert model.get("testAccuracy", 0) > 0.5, model
    # 2 pods x 2 local ranks (gloo on these GPU-less machines): 4 ranks met at the master's DNS name and
    # ended with the same weights; only global rank 0 published, once
    logs = {pod: kubelet.logs(kube.namespace, f"digits-a0-w{pod}") for pod in (0, 1)}
    joined = {pod: sorted(re.findall(r"joining process group: rank (\d)/4 \(local rank (\d)/2, group rank (\d)\)", text))
              for pod, text in logs.items()}
    assert joined == {0: [("0", "0", "0"), ("1", "1", "0")], 1: [("2", "0", "1"), ("3", "1", "1")]}, logs
    digests = re.findall(r"final weights sha256 ([0-9a-f]{64}) \(rank (\d)\)", logs[0] + logs[1])
    assert sorted(rank for _, rank in digests) == ["0", "1", "2", "3"] and len({d for d, _ in digests}) == 1
    assert done["status"]["progress"]["worldSize"] == 4
    assert sorted(p.name for p in (repository / "digits").iterdir() if p.name.isdigit()) == [str(model["version"])]
