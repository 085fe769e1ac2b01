"""The Helm chart installed into the real local cluster, and the operator run with exactly its identity.

The operator cannot run in a pod here (kwok nodes run no containers), so each test runs `modelops run` as a
local process whose kubeconfig holds a token of the chart's ServiceAccount (TokenRequest): the flows below
completing proves the chart's RBAC is enough, the denied requests prove it is not wider.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import REPO, OperatorProcess, condition, eventually, get_json

pytestmark = pytest.mark.cluster

CHART = REPO / "charts" / "modelops"
TRAINER_SA = "modelops-trainer"
EXIT = "e2e.modelops.dev/exit-code"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


# ---- helm and identities ------------------------------------------------------------------------------

def helm(kube: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(kube.cluster.bin_dir / "helm"), f"--kubeconfig={kube.kubeconfig}", *args],
                            capture_output=True, text=True, check=False)
    if check and result.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def crd_served(kube: Any, name: str) -> bool:
    return kube.cluster.kubectl("get", "crd", name, check=False).returncode == 0


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str

    @property
    def service_account(self) -> str:
        return f"{self.name}-modelops"

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@pytest.fixture
def install(kube: Any) -> Iterator[Callable[..., Release]]:
    """`helm install` of the chart under a unique release name into the test's namespace; uninstalled after.

    The session fixture `crds_installed` may already have applied the same CRDs (kubectl server-side apply):
    then the release skips its crds/ folder rather than fight over them; otherwise Helm installs them."""
    releases: list[Release] = []

    def run(*flags: str) -> Release:
        release = Release(f"mo-{uuid.uuid4().hex[:6]}", kube.namespace)
        skip = ["--skip-crds"] if crd_served(kube, "trainingjobs.modelops.dev") else []
        helm(kube, "install", release.name, str(CHART), "--namespace", kube.namespace, *skip, *flags)
        releases.append(release)
        return release

    yield run
    for release in releases:
        helm(kube, "uninstall", release.name, "--namespace", release.namespace, "--wait", check=False)


def identity_kubeconfig(kube: Any, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig whose user is a ServiceAccount (a TokenRequest token), on the test cluster."""
    token = kube.cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    config = {
        "apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {"cluster": admin["clusters"][0]["name"],
                                                           "user": service_account, "namespace": namespace}}],
        "current-context": service_account,
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def can_i(kube: Any, user: str, *args: str) -> bool:
    out = kube.cluster.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"


class IdentityOperator(OperatorProcess):
    """`modelops run` with the given flags under another identity's kubeconfig (e.g. cluster-wide, peering)."""

    def __init__(self, kubeconfig: Path, flags: list[str], log_path: Path, identity: str) -> None:
        super().__init__(kubeconfig, "", log_path)
        self.flags, self.identity = flags, identity

    def start(self) -> None:
        # POD_ID is how kopf names this replica in the peering object (the chart sets it to the pod name).
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_ID": self.identity}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelops", "run", *self.flags, "--liveness-port", "0", "--metrics-port", "0",
                 "--verbose"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


@contextmanager
def operator_as(kubeconfig: Path, flags: list[str], log_path: Path, identity: str = "modelops-test") -> Iterator[
        IdentityOperator]:
    """Run the operator; after the block, its log must show no request refused (RBAC exactly enough: a
    refused call the flows survive, e.g. an Event the operator only warns about, still fails the test)."""
    process = IdentityOperator(kubeconfig, flags, log_path, identity)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"--- operator {identity} log ({log_path}) ---\n{process.log()[-6000:]}")
    refused = [line for line in process.log().splitlines() if "forbidden" in line.lower()]
    assert not refused, f"operator {identity} was refused {len(refused)} request(s):\n" + "\n".join(refused[:5])


# ---- the flows the operator must complete with the chart's RBAC ----------------------------------------

def report_as_trainer(trainer_kubeconfig: Path, namespace: str, pod: str, progress: dict[str, Any]) -> None:
    """What rank 0 of the trainer does, with the trainer's real code and the chart's trainer identity."""
    code = ("import sys; from pathlib import Path; from modelops.trainer.progress import PodAnnotationSink\n"
            "sink = PodAnnotationSink.from_env(token=Path('/nonexistent'))\n"
            "assert sink is not None\nsink.send(sys.argv[1])\n")
    env = {**os.environ, "KUBECONFIG": str(trainer_kubeconfig), "POD_NAME": pod, "POD_NAMESPACE": namespace}
    subprocess.run([sys.executable, "-c", code, json.dumps(progress)], env=env, check=True, cwd=REPO)


def trainingjob_flow(kube: Any, trainer_kubeconfig: Path) -> None:
    """A TrainingJob from creation to Succeeded with its model in status: pods, Service, status, Events."""
    job = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "digits"},
           "spec": {"serviceAccountName": TRAINER_SA, "trainer": {"epochs": 2},
                    "output": {"modelName": "digits", "repository": {"hostPath": {"path": "/tmp/models"}}}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(job))

    def running_pod() -> dict[str, Any] | None:
        pods = get_json(kube, "pods", "-l", "modelops.dev/training-job=digits")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    pod = eventually(running_pod, 30, "the worker pod running")
    assert pod["spec"]["serviceAccountName"] == TRAINER_SA
    name = pod["metadata"]["name"]
    # The trainer's final report also carries the model's signature (ModelServices need it).
    final = {"phase": "Succeeded",
             "model": {"name": "digits", "version": 1, "uri": "/models/digits/1", "signature": SIGNATURE}}
    report_as_trainer(trainer_kubeconfig, kube.namespace, name, final)
    annotations = get_json(kube, "pod", name)["metadata"]["annotations"]
    assert json.loads(annotations["modelops.dev/progress"]) == final, "the trainer identity could not patch its pod"
    kube.kubectl("annotate", "pod", name, f"{EXIT}=0", "--overwrite")  # the kwok harness ends the pod

    done = eventually(lambda: (j := get_json(kube, "tj", "digits")).get("status", {}).get("phase") == "Succeeded"
                      and j, 45, "digits Succeeded")
    assert {k: done["status"]["model"][k] for k in ("name", "version", "uri")} == \
        {"name": "digits", "version": 1, "uri": "/models/digits/1"}
    assert condition(done, "Ready")["status"] == "True"
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    reasons = lambda: {e["reason"] for e in get_json(kube, "events", "--field-selector",  # noqa: E731
                                                     "involvedObject.name=digits")["items"]}
    eventually(lambda: "ModelPublished" in reasons(), 15, "the operator's Events")


def modelservice_flow(kube: Any, trainer_kubeconfig: Path) -> None:
    """A ModelService following the TrainingJob of `trainingjob_flow`: its revision Deployment, config.pbtxt
    ConfigMap, Service and HPA, the readiness gate on its pods, status. (kwok pods run no Triton, so the
    model check stays pending: the real-Triton flow is in e2e/.)"""
    service = {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "digits"},
               "spec": {"model": {"name": "digits", "fromTrainingJob": "digits"},
                        "repository": {"hostPath": {"path": "/tmp/models"}},
                        "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "target": 500, "provider": "hpa"}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(service))
    label = "modelops.dev/model-service=digits"
    [deployment] = eventually(lambda: get_json(kube, "deployments", "-l", label)["items"], 30, "the revision")
    revision = deployment["metadata"]["name"]
    assert revision.startswith("digits-v1-")
    assert "versions: [ 1 ]" in get_json(kube, "configmap", revision)["data"]["config.pbtxt"]
    assert [p["port"] for p in get_json(kube, "service", "digits")["spec"]["ports"]] == [8000, 8001, 8002]
    eventually(lambda: kube.cluster.kubectl("-n", kube.namespace, "get", "hpa", "digits", check=False).returncode == 0,
               30, "the HorizontalPodAutoscaler")
    # The operator writes the model-ready readiness gate through pods/status.
    eventually(lambda: any(condition(p, "modelops.dev/model-ready")
                           for p in get_json(kube, "pods", "-l", label)["items"]), 60, "the readiness gate condition")
    status = eventually(lambda: get_json(kube, "ms", "digits").get("status", {}).get("modelVersion") == 1
                        and get_json(kube, "ms", "digits")["status"], 30, "status.modelVersion 1")
    assert status["observedGeneration"] == get_json(kube, "ms", "digits")["metadata"]["generation"]


# Every flow the operator runs, in order in one namespace; the RBAC tests run each under the chart's identity.
OPERATOR_FLOWS: list[Callable[[Any, Path], None]] = [trainingjob_flow, modelservice_flow]


def run_operator_flows(kube: Any, trainer_kubeconfig: Path) -> None:
    for flow in OPERATOR_FLOWS:
        flow(kube, trainer_kubeconfig)


def assert_not_wider(kube: Any, release: Release, kubeconfig: Path) -> None:
    """Requests outside the chart's rules are refused, asked (can-i) and tried (with the real token)."""
    ns, user = release.namespace, release.user
    for request in (["get", "secrets", "-n", ns], ["list", "secrets", "--all-namespaces"],
                    ["create", "clusterroles"], ["create", "rolebindings", "-n", ns],
                    ["update", "pods", "-n", ns], ["create", "trainingjobs.modelops.dev", "-n", ns],
                    ["delete", "modelservices.modelops.dev", "-n", ns], ["delete", "customresourcedefinitions"],
                    ["create", "pods", "--subresource=exec", "-n", ns], ["get", "nodes"]):
        assert not can_i(kube, user, *request), f"{user} may {' '.join(request)}"
    as_operator = lambda *args: subprocess.run(  # noqa: E731
        [str(kube.cluster.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, check=False)
    for attempt in (as_operator("create", "clusterrole", f"{release.name}-escalate", "--verb=*", "--resource=*"),
                    as_operator("get", "secrets", "-n", ns)):
        assert attempt.returncode != 0 and "forbidden" in attempt.stderr.lower(), attempt.stderr


def assert_trainer_identity(kube: Any, namespace: str) -> None:
    user = f"system:serviceaccount:{namespace}:{TRAINER_SA}"
    assert can_i(kube, user, "get", "pods", "-n", namespace) and can_i(kube, user, "patch", "pods", "-n", namespace)
    for request in (["delete", "pods"], ["create", "pods"], ["list", "secrets"], ["get", "trainingjobs.modelops.dev"]):
        assert not can_i(kube, user, *request, "-n", namespace), f"trainer may {' '.join(request)}"


# ---- tests ----------------------------------------------------------------------------------------------

def test_cluster_wide_release_rbac_is_enough_and_no_wider(kube, install, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    release = install()
    assert get_json(kube, "deployment", release.service_account)["spec"]["replicas"] == 1
    operator_config = identity_kubeconfig(kube, kube.namespace, release.service_account, tmp_path / "operator.kubeconfig")
    trainer_config = identity_kubeconfig(kube, kube.namespace, TRAINER_SA, tmp_path / "trainer.kubeconfig")
    assert can_i(kube, release.user, "watch", "pods", "--all-namespaces")
    assert not can_i(kube, release.user, "list", "namespaces")  # kopf lists namespaces only when namespaced
    assert_not_wider(kube, release, operator_config)
    assert_trainer_identity(kube, kube.namespace)
    with operator_as(operator_config, [], tmp_path / "operator.log"):  # no -n: cluster-wide, like the chart
        run_operator_flows(kube, trainer_config)


def test_namespaced_release_rbac_is_enough_and_stays_in_its_namespace(kube, install, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    release = install("--set-json", f'watchNamespaces=["{kube.namespace}"]')
    operator_config = identity_kubeconfig(kube, kube.namespace, release.service_account, tmp_path / "operator.kubeconfig")
    trainer_config = identity_kubeconfig(kube, kube.namespace, TRAINER_SA, tmp_path / "trainer.kubeconfig")
    assert can_i(kube, release.user, "create", "pods", "-n", kube.namespace)
    for outside in (["list", "pods", "-n", "default"], ["list", "pods", "--all-namespaces"],
                    ["list", "trainingjobs.modelops.dev", "-n", "default"], ["get", "configmaps", "-n", "default"]):
        assert not can_i(kube, release.user, *outside), f"namespaced operator may {' '.join(outside)}"
    # kopf's discovery: CRDs, and namespaces to match its -n names.
    assert can_i(kube, release.user, "watch", "customresourcedefinitions")
    assert can_i(kube, release.user, "watch", "namespaces")
    assert_not_wider(kube, release, operator_config)
    with operator_as(operator_config, ["-n", kube.namespace], tmp_path / "operator.log"):
        run_operator_flows(kube, trainer_config)


def test_peering_release_runs_one_active_replica(kube, install, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Two replicas with the chart's peering RBAC: both register, the lower priority pauses, work gets done."""
    install_crds = str(not crd_served(kube, "kopfpeerings.kopf.dev")).lower()
    release = install("--set", "peering.enabled=true", "--set", "replicaCount=2",
                      "--set", f"peering.installCRDs={install_crds}",
                      "--set-json", f'watchNamespaces=["{kube.namespace}"]')
    # The StatefulSet's pods carry the pod-index label their --priority comes from.
    pods = eventually(lambda: (items := get_json(kube, "pods", "-l", "app.kubernetes.io/component=operator")["items"])
                      and len(items) == 2 and items, 30, "2 operator pods")
    assert sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods) == ["0", "1"]
    get_json(kube, "kopfpeering", "modelops")  # created by the release

    operator_config = identity_kubeconfig(kube, kube.namespace, release.service_account, tmp_path / "operator.kubeconfig")
    trainer_config = identity_kubeconfig(kube, kube.namespace, TRAINER_SA, tmp_path / "trainer.kubeconfig")
    flags = ["-n", kube.namespace, "--peering", "modelops"]
    peers = lambda: set(get_json(kube, "kopfpeering", "modelops").get("status") or {})  # noqa: E731
    with ExitStack() as replicas:
        # The active replica first, then a standby joining it (as after a rolling restart of the standby).
        high = replicas.enter_context(
            operator_as(operator_config, [*flags, "--priority", "2"], tmp_path / "replica-1.log", "replica-1"))
        eventually(lambda: "replica-1" in peers(), 30, "the first replica in the peering object")
        low = replicas.enter_context(
            operator_as(operator_config, [*flags, "--priority", "1"], tmp_path / "replica-0.log", "replica-0"))
        eventually(lambda: "replica-0" in peers(), 30, "the second replica in the peering object")
        assert peering_state(high.log()) == "resumed" and peering_state(low.log()) == "paused"
        run_operator_flows(kube, trainer_config)
        # All the work was done by the higher priority replica; the standby's engine never ran.
        assert re.search(r"engine: \w+ cleared; running", high.log())
        assert not re.search(r"engine: \w+ cleared; running", low.log()) and peering_state(low.log()) == "paused"
        assert "engine paused: peering (paused in favour of replica-1" in low.log()


def peering_state(log: str) -> str:
    """kopf starts a peered operator paused and logs only changes: resumed after its last 'Resuming'.
    (A replica that starts alone resumes, then pauses when a higher priority appears; a list it had
    already begun may still be handled then: kopf's peering narrows double work, it cannot exclude it.)"""
    resumed, paused = log.rfind("Resuming operations after the pause"), log.rfind("Pausing operations in favour of")
    return "resumed" if resumed > paused else "paused"
