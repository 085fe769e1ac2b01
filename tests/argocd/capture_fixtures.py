"""Drive the real operator on the local cluster into each state the Argo CD health scripts tell apart, and
capture the TrainingJobs, ModelServices and ModelPools as they are then: the fixtures in
docs/argocd/resource_customizations/modelops.dev/<Kind>/testdata/.

    .venv/bin/python tests/argocd/capture_fixtures.py    # starts its own local cluster, rewrites testdata/

tests/integration/test_argocd_health.py runs the same capture and checks the health of the live objects.
Pods on kwok run nothing, so this plays what their processes would report, as the other cluster tests do:
a trainer's progress annotation and exit code, a passed readiness probe, and the model check's verdict on
a serving pod's readiness gate (what the operator writes when Triton answers).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # run as a script
    sys.path.insert(0, str(TESTS))

from argocd.health import CUSTOMIZATIONS  # noqa: E402
from support import REPO, eventually  # noqa: E402

API = "modelops.dev/v1alpha1"
EXIT = "e2e.modelops.dev/exit-code"
PROBE = "e2e.modelops.dev/ready"
GATE = "modelops.dev/model-ready"
NAMESPACE = "default"
"""The namespace the fixtures say they are in (the capture runs in a namespace of its own)."""
FIXED_TIME = "2025-01-01T00:00:00Z"
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
REPOSITORY = {"hostPath": {"path": "/tmp/models"}}


class Kube(Protocol):
    namespace: str

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str: ...


Captured = dict[tuple[str, str], dict[str, Any]]
"""(kind, fixture name) -> the object as captured (normalised)."""


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"output": {"modelName": "digits", "repository": REPOSITORY}, "trainer": {"epochs": 2}, **spec}}


def modelservice(name: str, **spec: Any) -> dict[str, Any]:
    model = {"name": "digits", "version": 1, "signature": SIGNATURE}
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name},
            "spec": {"model": model, "repository": REPOSITORY, **spec}}


def modelpool(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelPool", "metadata": {"name": name},
            "spec": {"repository": REPOSITORY, "capacity": "1Gi", **spec}}


def normalise(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The object without what differs from one capture to the next: uid, resourceVersion, managedFields,
    creation time; the namespace reads `default` and every timestamp FIXED_TIME."""
    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str):
            return FIXED_TIME if TIMESTAMP.match(value) else value.replace(namespace, NAMESPACE)
        return value

    meta = {k: v for k, v in obj["metadata"].items()
            if k not in ("uid", "resourceVersion", "managedFields", "creationTimestamp", "selfLink")}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != "kubectl.kubernetes.io/last-applied-configuration"}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    result: dict[str, Any] = scrub({**obj, "metadata": meta})
    return result


class Driver:
    """kubectl reads and writes on the capture's namespace."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def get(self, *args: str) -> Any:
        return json.loads(self.kube.kubectl("get", *args, "-o", "json"))

    def create(self, *objects: dict[str, Any]) -> None:
        self.kube.kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                 "items": list(objects)}))

    def patch(self, what: str, name: str, patch: dict[str, Any], *extra: str) -> None:
        self.kube.kubectl("patch", what, name, "--type=merge", "-p", json.dumps(patch), *extra)

    def annotate(self, what: str, name: str, **annotations: str) -> None:
        self.kube.kubectl("annotate", what, name, "--overwrite", *(f"{k}={v}" for k, v in annotations.items()))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.get("pods", "-l", selector)["items"] if not p["metadata"].get("deletionTimestamp")]

    def worker(self, job: str) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            return next((p for p in self.pods(f"modelops.dev/training-job={job}")
                         if p["status"].get("phase") == "Running"), None)
        return eventually(running, 30, f"a running worker of {job}")

    def status_of(self, kind: str, name: str, check: Callable[[dict[str, Any]], Any], what: str,
                  timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            obj = self.get(kind, name)
            return obj if check(obj) else None
        return eventually(reached, timeout, f"{kind} {name}: {what}", interval=0.3)

    def serve(self, service: str, count: int, revision: str | None = None) -> None:
        """Play a passed readiness probe and model check on the service's pods (of one revision) until
        `count` of them are ready."""
        selector = f"modelops.dev/model-service={service}" + (f",modelops.dev/revision={revision}" if revision else "")

        def ready() -> bool:
            pods = self.pods(selector)
            for pod in pods:
                if pod["status"].get("phase") != "Running":
                    continue
                if (pod["metadata"].get("annotations") or {}).get(PROBE) != "true":
                    self.annotate("pod", pod["metadata"]["name"], **{PROBE: "true"})
                if not any(c["type"] == GATE and c["status"] == "True" for c in pod["status"].get("conditions", [])):
                    self.gate(pod["metadata"]["name"], True, "ModelVerified",
                              "model digits is READY and its inputs and outputs match the signature")
            return sum(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
                       for p in pods) >= count
        eventually(ready, 30, f"{count} ready pod(s) of {service}", interval=0.3)

    def gate(self, pod: str, passed: bool, reason: str, message: str) -> None:
        """The model check's verdict, written as the operator writes it (pods/status)."""
        condition = {"type": GATE, "status": "True" if passed else "False", "reason": reason, "message": message}
        self.kube.kubectl("patch", "pod", pod, "--subresource=status", "--type=strategic", "-p",
                          json.dumps({"status": {"conditions": [condition]}}))


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def is_true(obj: dict[str, Any], cond_type: str, reason: str | None = None) -> bool:
    cond = conditions(obj).get(cond_type, {})
    return cond.get("status") == "True" and (reason is None or cond.get("reason") == reason)


def reason(obj: dict[str, Any], cond_type: str) -> str | None:
    return conditions(obj).get(cond_type, {}).get("reason")


def field(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """A part of the status that is an object ({} when absent)."""
    return (obj.get("status") or {}).get(name) or {}


def phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def current(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


def capture(kube: Kube, start_operator: Callable[[], None], stop_operator: Callable[[], None]) -> Captured:
    """Every fixture's object, live. The operator must not be running when this starts; it is stopped at
    the end (the stale-status case needs it gone)."""
    d = Driver(kube)
    found: Captured = {}

    def take(kind: str, fixture: str, obj: dict[str, Any]) -> None:
        found[(kind, fixture)] = normalise(obj, kube.namespace)

    # Before the operator runs: objects with no status yet; and a pod that takes a worker's name.
    d.create(trainingjob("digits"), modelservice("digits"), modelpool("shared", minServers=0))
    # someone else's Service where the job's headless Service goes (a squatted worker pod name is simply
    # skipped: the group starts as the next attempt)
    kube.kubectl("create", "service", "clusterip", "squat-workers", "--clusterip=None")
    take("TrainingJob", "progressing_new", d.get("tj", "digits"))
    take("ModelService", "progressing_new", d.get("ms", "digits"))
    take("ModelPool", "progressing_new", d.get("mp", "shared"))

    start_operator()
    canary_rollout = {"steps": [{"weight": 50, "pauseSeconds": 600}], "progressDeadlineSeconds": 600}
    d.create(
        trainingjob("huge", resources={"gpus": 16}),
        trainingjob("resized"),
        trainingjob("trained"),
        trainingjob("broken", backoffLimit=0),
        trainingjob("paused", suspend=True),
        trainingjob("squat", workers=2),
        modelservice("follower", model={"name": "digits", "fromTrainingJob": "digits"}),
        modelservice("starting"),
        modelservice("canary", replicas=2, rollout=canary_rollout),
        modelservice("unverified"),
        modelservice("idle", replicas=0),
        modelpool("starting", minServers=1),
        modelpool("small", minServers=0),
        modelservice("oversized", pool="small", resources={"memory": "2Gi"}),
    )

    # TrainingJobs: play the workers.
    progress = {"phase": "Training", "epoch": 1, "epochs": 2, "step": 12, "loss": 0.4137, "valAccuracy": 0.875,
                "samplesPerSecond": 912.5, "worldSize": 1}
    d.annotate("pod", d.worker("digits")["metadata"]["name"], **{"modelops.dev/progress": json.dumps(progress)})
    report = {"phase": "Succeeded", "epoch": 2, "epochs": 2, "testAccuracy": 0.9611,
              "model": {"name": "digits", "version": 3, "uri": "/models/digits/3", "signature": SIGNATURE}}
    d.annotate("pod", d.worker("trained")["metadata"]["name"],
               **{"modelops.dev/progress": json.dumps(report), EXIT: "0"})
    d.annotate("pod", d.worker("broken")["metadata"]["name"], **{EXIT: "2"})
    d.worker("resized")
    d.patch("tj", "resized", {"spec": {"workers": 2}})

    # ModelServices: play Triton's answers.
    d.serve("digits", 1)
    d.serve("canary", 2)
    [unverified] = eventually(lambda: [p for p in d.pods("modelops.dev/model-service=unverified")
                                       if p["status"].get("phase") == "Running"], 30, "the pod of unverified")
    failure = "model digits version 1 is not ready: failed to load 'digits' version 1: Internal: " \
              "unexpected inputs: INPUT__0 has dims [1,28,28], the signature says [1,8,8]"
    eventually(lambda: d.gate(unverified["metadata"]["name"], False, "ModelCheckFailed", failure) or
               is_true(d.get("ms", "unverified"), "Stalled", "ModelCheckFailed"), 30, "unverified Stalled")

    tj_states = {
        "progressing_unschedulable": ("huge", lambda o: reason(o, "Ready") == "Unschedulable"),
        "progressing_running": ("digits", lambda o: phase(o) == "Running" and field(o, "progress").get("epoch") == 1),
        "progressing_update_refused": ("resized", lambda o: current(o) and is_true(o, "UpdateRefused")),
        "healthy_succeeded": ("trained", lambda o: phase(o) == "Succeeded"),
        "degraded_failed": ("broken", lambda o: phase(o) == "Failed"),
        "suspended": ("paused", lambda o: phase(o) == "Suspended"),
        "degraded_name_conflict": ("squat", lambda o: is_true(o, "Stalled", "NameConflict")),
    }
    for fixture, (name, check) in tj_states.items():
        take("TrainingJob", fixture, d.status_of("tj", name, check, fixture))
    ms_states = {
        "progressing_waiting_for_job": ("follower", lambda o: current(o) and phase(o) == "Pending"),
        "progressing_replicas_not_ready": ("starting", lambda o: current(o) and field(o, "stable").get("name")),
        "healthy": ("digits", lambda o: phase(o) == "Ready" and is_true(o, "Ready")),
        "degraded_model_check_failed": ("unverified", lambda o: is_true(o, "Stalled", "ModelCheckFailed")),
        "suspended_scaled_to_zero": ("idle", lambda o: current(o) and phase(o) == "Ready"),
    }
    for fixture, (name, check) in ms_states.items():
        take("ModelService", fixture, d.status_of("ms", name, check, fixture))

    pool_states = {
        "progressing_servers_starting": ("starting", lambda o: current(o) and phase(o) == "Progressing"),
        "degraded_unplaced": ("small", lambda o: is_true(o, "Stalled", "TooLarge")),
        "suspended_no_servers": ("shared", lambda o: current(o) and phase(o) == "Ready"),
    }
    for fixture, (name, check) in pool_states.items():
        take("ModelPool", fixture, d.status_of("mp", name, check, fixture))

    # A canary of version 2 on a ModelService serving version 1, then its abort.
    d.status_of("ms", "canary", lambda o: phase(o) == "Ready", "canary's version 1 serving")
    d.patch("ms", "canary", {"spec": {"model": {"version": 2}}})
    take("ModelService", "progressing_canary", d.status_of(
        "ms", "canary", lambda o: current(o) and field(o, "canary").get("replicas") == 1
        and "waiting for canary pods" in conditions(o).get("Progressing", {}).get("message", ""), "canary waiting"))
    d.annotate("ms", "canary", **{"modelops.dev/rollout": "abort"})
    take("ModelService", "degraded_rolled_back", d.status_of(
        "ms", "canary", lambda o: is_true(o, "RolledBack") and reason(o, "Reconciling") == "Rejected"
        and "modelops.dev/rollout" not in (o["metadata"].get("annotations") or {}), "canary rolled back"))

    # Status of an older generation: the operator is away while the spec changes.
    stop_operator()
    d.patch("tj", "trained", {"spec": {"ttlSecondsAfterFinished": 3600}})
    d.patch("ms", "digits", {"spec": {"replicas": 2}})
    d.patch("mp", "shared", {"spec": {"maxServers": 8}})
    take("TrainingJob", "progressing_stale", d.get("tj", "trained"))
    take("ModelPool", "progressing_stale", d.get("mp", "shared"))
    take("ModelService", "progressing_stale", d.get("ms", "digits"))
    return found


def write(found: Captured) -> None:
    for (kind, fixture), obj in sorted(found.items()):
        path = CUSTOMIZATIONS / kind / "testdata" / f"{fixture}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True))
        print(f"wrote {path.relative_to(CUSTOMIZATIONS.parents[2])}")


def main() -> None:
    """Start a local cluster in a temporary directory, capture, write the fixtures, stop everything."""
    from modelops.dev.cluster import LocalCluster, build_tools
    from support import REPO, OperatorProcess
    from support import Kube as ClusterKube

    with tempfile.TemporaryDirectory(prefix="modelops-fixtures-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", build_tools(REPO))
        cluster.up(die_with_parent=True)
        operator: OperatorProcess | None = None
        try:
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
            cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
            namespace = "argocd-fixtures"
            cluster.kubectl("create", "namespace", namespace)
            eventually(lambda: cluster.kubectl("-n", namespace, "get", "serviceaccount", "default",
                                               check=False).returncode == 0, 30, "the default ServiceAccount")
            kube = ClusterKube(cluster, cluster.kubeconfig, namespace)
            operator = OperatorProcess(cluster.kubeconfig, namespace, Path(tmp) / "operator.log")
            started = time.monotonic()
            write(capture(kube, operator.start, lambda: operator.stop(signal.SIGTERM) if operator else None))
            print(f"captured in {time.monotonic() - started:.1f}s")
        finally:
            if operator:
                operator.stop()
            cluster.down()


if __name__ == "__main__":
    main()
