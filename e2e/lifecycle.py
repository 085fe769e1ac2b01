"""The whole model lifecycle on the local cluster, step by step: DDP training -> serving -> autoscaling ->
a canary promoted -> a worse model refused -> a broken canary rolled back -> several models trained and
served from one ModelPool, one canaried inside it. `make demo` prints it; e2e/test_lifecycle.py asserts it.

Everything goes through the API as a user would (kubectl apply/patch/delete) and through the ModelService's
Service ClusterIP (kube-proxy) as a client would; the only thing written by hand is the deliberately broken
model version, straight into the repository: a TorchScript model that loads fine, matches its signature, and
fails every request (the operator's python-backend runtime serves it as any other version).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from load import LoadGenerator, LoadStats, infer
from support import eventually as wait_for
from modelops.dev.cluster import LocalCluster

NAMESPACE = "demo"
MODEL = "digits"
POOL = "shared"
POOLED = ("digits-eu", "digits-us", "digits-ap")
"""Models trained and served from one pool (one per region, as a fleet of small models would be)."""
class StepFailed(AssertionError):
    """A lifecycle step did not reach its goal."""


@dataclass(frozen=True)
class Space:
    """kubectl in one namespace of the local cluster."""

    cluster: LocalCluster
    namespace: str

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args, stdin=stdin, check=check).stdout

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))

    def get(self, *args: str) -> dict[str, Any]:
        text = self.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(text) if text else {}


@dataclass
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class Lifecycle:
    space: Space
    repository: Path
    log: Callable[[str], None] = print
    results: list[StepResult] = field(default_factory=list)
    epochs: int = 4

    # ---- running and reporting ------------------------------------------------

    def step(self, name: str, action: Callable[[], str]) -> StepResult:
        self.log(f"==> {name}")
        started = time.monotonic()
        try:
            result = StepResult(name, True, 0.0, action())
        except Exception as error:  # noqa: BLE001 - a failed step is reported, and the run stops
            result = StepResult(name, False, 0.0, f"{type(error).__name__}: {error}")
        result.seconds = time.monotonic() - started
        self.log(f"    {'ok' if result.ok else 'FAILED'} in {result.seconds:.1f}s: {result.detail}")
        self.results.append(result)
        return result

    def run_all(self) -> bool:
        for name, action in (
            ("train: 2-worker DDP TrainingJob on GPU nodes", self.train_first),
            ("serve: ModelService follows the job; inference via the Service", self.serve),
            ("scale: load drives Triton metrics, out and back in", self.scale),
            ("canary: a second training is promoted", self.canary_promoted),
            ("gate: a worse model is refused before any traffic", self.worse_model_refused),
            ("rollback: a broken version is rolled back", self.canary_rolled_back),
            ("pool: three trained models share one ModelPool, one canaried inside it", self.pool),
        ):
            if not self.step(name, action).ok:
                return False
        return True

    def table(self) -> str:
        width = max(len(r.name) for r in self.results)
        lines = [f"{'step':{width}}  result  seconds  detail", f"{'-' * width}  ------  -------  ------"]
        lines += [f"{r.name:{width}}  {'ok' if r.ok else 'FAILED':6}  {r.seconds:7.1f}  {r.detail}"
                  for r in self.results]
        return "\n".join(lines)

    # ---- the steps -------------------------------------------------------------

    def setup(self) -> None:
        """What a cluster admin does once per namespace: the trainer's ServiceAccount may report progress."""
        self.space.apply(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "modelops-trainer"},
             "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "modelops-trainer"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "modelops-trainer"},
             "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": self.space.namespace}]})

    def training_job(self, name: str = MODEL, seed: int | None = None) -> dict[str, Any]:
        """The demo's DDP job (2 GPU workers); with a seed, a 1-worker CPU job for a pooled model."""
        trainer = {"dataset": "digits", "epochs": self.epochs, "batchSize": 32}
        workers = {"workers": 2, "resources": {"gpus": 1}} if seed is None else {"workers": 1}
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
                "spec": {**workers, "trainer": trainer if seed is None else {**trainer, "seed": seed},
                         "output": {"modelName": name,
                                    "repository": {"hostPath": {"path": str(self.repository)}}}}}

    def model_service(self) -> dict[str, Any]:
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": MODEL},
                "spec": {
                    "model": {"name": MODEL, "fromTrainingJob": MODEL},
                    "repository": {"hostPath": {"path": str(self.repository)}},
                    # The tritonserver here (nvidia-pytriton wheel) has only the python backend.
                    "triton": {"backend": "python", "maxBatchSize": 16},
                    "replicas": 1,
                    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "metric": "inferenceRatePerReplica",
                                    "target": 10, "scaleUp": {"periodSeconds": 5},
                                    "scaleDown": {"stabilizationWindowSeconds": 20, "periodSeconds": 5}},
                    # Canary against stable: a 2-core machine under load makes p99 noisy, hence a loose ratio.
                    "rollout": {"steps": [{"weight": 50, "pauseSeconds": 20}],
                                "analysis": {"maxErrorRate": 0.05, "maxP99LatencyMs": 5000, "minRequests": 20,
                                             "maxLatencyRatio": 4},
                                "progressDeadlineSeconds": 240},
                }}

    def train(self, timeout: float = 420) -> dict[str, Any]:
        self.space.apply(self.training_job())
        job = wait_for(lambda: (j := self.space.get("tj", MODEL)).get("status", {}).get("phase")
                       in ("Succeeded", "Failed") and j, timeout, "the TrainingJob to finish", interval=2)
        status = job["status"]
        if status["phase"] != "Succeeded":
            raise StepFailed(f"TrainingJob failed: {status.get('conditions')}")
        model = status["model"]
        if not (self.repository / MODEL / str(model["version"]) / "model.pt").is_file():
            raise StepFailed(f"version {model['version']} is not in the repository")
        return dict(model)

    def train_first(self) -> str:
        self.setup()
        model = self.train()
        nodes = sorted(p["spec"]["nodeName"] for p in self.space.get(
            "pods", "-l", f"modelops.dev/training-job={MODEL}")["items"])
        if len(nodes) != 2 or not all(n.startswith("gpu-") for n in nodes):
            raise StepFailed(f"workers ran on {nodes}, expected 2 GPU nodes")
        return f"version {model['version']} published, test accuracy {model.get('testAccuracy', 0):.3f}, " \
               f"workers on {', '.join(nodes)}"

    def serve(self) -> str:
        self.space.apply(self.model_service())
        status = self.wait_serving(version=None, timeout=300)
        accuracy, n = self.held_out_accuracy()
        if accuracy < 0.9:
            raise StepFailed(f"held-out accuracy through the Service is {accuracy:.3f}")
        return f"version {status['modelVersion']} Ready; {n} held-out digits via {self.address()}: " \
               f"accuracy {accuracy:.3f}"

    def scale(self) -> str:
        started = time.monotonic()
        with self.load(rate=40) as load:
            status = wait_for(lambda: (s := self.ms_status()).get("readyReplicas", 0) >= 2 and s, 240,
                              "scale-out under load", interval=2)
            out_after = time.monotonic() - started
            peak = status["readyReplicas"]
        stats = load.stats
        stopped = time.monotonic()
        wait_for(lambda: self.ms_status().get("replicas") == 1, 300, "scale-in after the load stops", interval=2)
        return (f"scaled out to {peak} ready replicas {out_after:.0f}s after the load started, back to 1 "
                f"{time.monotonic() - stopped:.0f}s after it stopped; {stats.ok} requests ok, {stats.failed} failed")

    def canary_promoted(self) -> str:
        before = self.ms_status()["modelVersion"]
        with self.load(rate=15) as load:
            self.space.kubectl("delete", "tj", MODEL, "--wait=true")
            model = self.train()
            wait_for(lambda: (self.ms_status().get("canary") or {}).get("version") == model["version"], 120,
                     "the canary to start")
            status = wait_for(lambda: (s := self.ms_status()).get("modelVersion") == model["version"]
                              and not s.get("canary") and s, 360, "the canary to be promoted", interval=2)
        analysis = status.get("lastAnalysis", {})
        stats = load.stats
        if stats.failed > max(2, stats.ok // 50):
            raise StepFailed(f"{stats.failed} failed requests during a good rollout: {stats.errors}")
        return (f"version {before} -> {model['version']} promoted; analysis {analysis.get('verdict')}: "
                f"{analysis.get('message', '')}; {stats.ok} requests ok, {stats.failed} failed")

    def worse_model_refused(self) -> str:
        """A version trained to be worse (one epoch at a tiny learning rate) is pinned; the evaluation gate scores
        it and the stable revision on its held-out set and on the stable version's, and rolls it back before its
        pods ever serve."""
        stable = self.ms_status()["modelVersion"]
        worse_job = self.training_job()
        worse_job["metadata"]["name"] = f"{MODEL}-worse"
        worse_job["spec"] |= {"workers": 1}
        worse_job["spec"]["trainer"] |= {"epochs": 1, "learningRate": 0.00002, "augment": False}
        self.space.apply(worse_job)
        job = wait_for(lambda: (j := self.space.get("tj", f"{MODEL}-worse")).get("status", {}).get("phase")
                       in ("Succeeded", "Failed") and j, 300, "the worse TrainingJob to finish", interval=2)
        model = job["status"].get("model") or {}
        if job["status"]["phase"] != "Succeeded" or not model:
            raise StepFailed(f"the worse TrainingJob failed: {job['status'].get('conditions')}")
        worse = model["version"]
        served_by_canary = 0
        with self.load(rate=15) as load:
            self.space.kubectl("patch", "ms", MODEL, "--type=merge", "-p", json.dumps(
                {"spec": {"model": {"fromTrainingJob": None, "version": worse, "signature": model["signature"]}}}))

            def refused() -> dict[str, Any] | None:
                nonlocal served_by_canary
                status = self.ms_status()
                served_by_canary = max(served_by_canary, (status.get("canary") or {}).get("readyReplicas", 0))
                if status.get("modelVersion") == worse:
                    raise StepFailed(f"the worse version {worse} was promoted")
                return status if status.get("rejectedRevision", "").startswith(f"{MODEL}-v{worse}-") else None

            status = wait_for(refused, 300, "the evaluation gate to refuse the worse version", interval=1)
        verdict = status.get("lastEvaluation") or {}
        rolled_back = next(c for c in status["conditions"] if c["type"] == "RolledBack")
        if verdict.get("verdict") != "Failed" or verdict.get("stableAccuracy") is None \
                or "evaluation gate failed" not in rolled_back["message"]:
            raise StepFailed(f"not refused by the gate: {verdict} / {rolled_back['message']}")
        # the stable version's own held-out set (its folder mounted into the evaluation pod) was scored too
        sets = {s["name"]: s for s in verdict.get("sets") or []}
        if (sets.get("stable") or {}).get("stableAccuracy") is None or sets["stable"].get("accuracy") is None:
            raise StepFailed(f"the stable version's held-out set was not scored: {verdict.get('sets')}")
        if served_by_canary or load.stats.failed:
            raise StepFailed(f"the worse version had {served_by_canary} ready pods; {load.stats.failed} requests failed")
        events = self.space.kubectl("get", "events", "--field-selector", "reason=EvaluationFailed", "-o", "name")
        if not events.strip():
            raise StepFailed("no EvaluationFailed Event")
        return (f"version {worse} refused before traffic: accuracy {verdict['accuracy']:.3f} vs stable "
                f"{verdict['stableAccuracy']:.3f} on its {verdict.get('samples')} held-out digits, "
                f"{sets['stable']['accuracy']:.3f} vs {sets['stable']['stableAccuracy']:.3f} on stable's "
                f"{sets['stable'].get('samples')}; version {stable} kept serving "
                f"({load.stats.ok} requests ok, 0 failed)")

    def canary_rolled_back(self) -> str:
        stable = self.ms_status()["modelVersion"]
        broken = self.publish_broken_version(stable)
        signature = self.space.get("tj", MODEL)["status"]["model"]["signature"]
        with self.load(rate=15) as load:
            self.space.kubectl("patch", "ms", MODEL, "--type=merge", "-p", json.dumps(
                {"spec": {"model": {"fromTrainingJob": None, "version": broken, "signature": signature}}}))
            def rolled_back() -> dict[str, Any] | None:
                status = self.ms_status()
                if status.get("modelVersion") == broken:
                    raise StepFailed(f"the broken version {broken} was promoted: {status.get('lastAnalysis')}")
                return status if status.get("rejectedRevision", "").startswith(f"{MODEL}-v{broken}-") else None

            status = wait_for(rolled_back, 360, "the broken canary to be rolled back", interval=2)
            during = load.stats.snapshot()
        if status.get("modelVersion") != stable:
            raise StepFailed(f"stable version changed to {status.get('modelVersion')}")
        wait_for(lambda: not self.space.get("deployments", "-l", f"modelops.dev/model-version={broken}")
                 .get("items"), 60, "the canary Deployment to go")
        with self.load(rate=15) as after:
            time.sleep(8)
        if after.stats.ok == 0 or after.stats.failed:
            raise StepFailed(f"after the rollback: {after.stats.ok} ok, {after.stats.failed} failed "
                             f"{after.stats.errors}")
        why = next(c for c in status["conditions"] if c["type"] == "RolledBack")["message"]
        return (f"version {broken} rolled back ({why}); version {stable} answered "
                f"{during[0]} requests during the canary and {after.stats.ok}/{after.stats.ok} after")

    def pool(self) -> str:
        """Three models trained (one worker each, at once) and served as copies on one ModelPool's two
        servers, each through its own Service; then one is retrained and its new version placed beside the
        serving one and switched to, with traffic on it throughout."""
        self.space.apply(self.model_pool(), *(self.training_job(name, seed) for seed, name in enumerate(POOLED)))
        versions = {name: self.wait_trained(name) for name in POOLED}
        self.space.apply(*(self.pooled_service(name) for name in POOLED))
        for name in POOLED:
            self.wait_serving(version=versions[name], timeout=300, name=name)
            wait_for(lambda: self.routed(name), 30, f"{name}'s Service to answer", interval=0.5)
        accuracy = {name: self.held_out_accuracy(name, count=16)[0] for name in POOLED}
        if min(accuracy.values()) < 0.7:  # trained models (chance is 0.1); a few epochs on one worker vary
            raise StepFailed(f"held-out accuracy through the pooled Services: {accuracy}")
        canaried = POOLED[0]
        with self.load(rate=8, name=canaried) as load:
            self.space.kubectl("delete", "tj", canaried, "--wait=true")
            self.space.apply(self.training_job(canaried, seed=7))
            new = self.wait_trained(canaried)
            self.wait_serving(version=new, timeout=300, name=canaried)
            time.sleep(3)  # requests keep reaching the new version once the Service switched
        stats = load.stats
        if stats.failed or not stats.ok:
            raise StepFailed(f"{stats.failed} requests failed during the pooled canary: {stats.errors}")
        status = self.space.get("mp", POOL).get("status") or {}
        layout = "; ".join(s["name"] + ": " + ", ".join(f"{m['name']}:{m['version']}" for m in s["models"])
                           for s in status.get("servers", []))
        return (f"{len(POOLED)} models on {status.get('readyServers')} servers ({layout}; {status.get('memory')}), "
                f"accuracy {', '.join(f'{a:.2f}' for a in accuracy.values())}; {canaried} "
                f"v{versions[canaried]} -> v{new} inside the pool, {stats.ok} requests ok, 0 failed")

    def model_pool(self) -> dict[str, Any]:
        # A resident model costs about 300 MB here (its python stub), so a 700Mi server holds two of them.
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelPool", "metadata": {"name": POOL},
                "spec": {"repository": {"hostPath": {"path": str(self.repository)}}, "resources": {"cpu": "1"},
                         "capacity": "700Mi", "minServers": 2, "maxServers": 3}}

    def pooled_service(self, name: str) -> dict[str, Any]:
        return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": name},
                "spec": {"pool": POOL, "model": {"name": name, "fromTrainingJob": name},
                         "repository": {"hostPath": {"path": str(self.repository)}},
                         "triton": {"backend": "python", "maxBatchSize": 16}, "resources": {"memory": "300Mi"}}}

    def wait_trained(self, name: str, timeout: float = 420) -> int:
        job = wait_for(lambda: (j := self.space.get("tj", name)).get("status", {}).get("phase")
                       in ("Succeeded", "Failed") and j, timeout, f"the TrainingJob {name} to finish", interval=2)
        if job["status"]["phase"] != "Succeeded":
            raise StepFailed(f"TrainingJob {name} failed: {job['status'].get('conditions')}")
        return int(job["status"]["model"]["version"])

    # ---- helpers ---------------------------------------------------------------

    def ms_status(self) -> dict[str, Any]:
        return dict(self.space.get("ms", MODEL).get("status") or {})

    def wait_serving(self, version: int | None, timeout: float, name: str = MODEL) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            status = dict(self.space.get("ms", name).get("status") or {})
            conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
            if conditions.get("Ready") == "True" and (version is None or status.get("modelVersion") == version):
                return status
            return None

        return dict(wait_for(ready, timeout, f"the ModelService {name} to be Ready", interval=2))

    def routed(self, name: str) -> bool:
        """Whether a request through the Service is answered: Ready is the operator's word that the slice lists a
        ready copy; kube-proxy programs a brand-new Service's rules a moment later, as for any Service."""
        try:
            infer(self.address(name), name, self.held_out()[0][:1])
            return True
        except Exception:  # noqa: BLE001 - refused (no rules yet) or unknown model until routing settles
            return False

    def address(self, name: str = MODEL) -> str:
        service = self.space.get("service", name)
        return f"{service['spec']['clusterIP']}:8000"

    def held_out(self) -> tuple[np.ndarray, np.ndarray]:
        """The test split the trainer held out (same data set, seed and fractions as the TrainingJob)."""
        from modelops.trainer.data import Missing, load_builtin, prepare

        data = prepare(load_builtin("digits", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.1, seed=0)
        return data.test.x, data.test.y

    def held_out_accuracy(self, name: str = MODEL, count: int = 48, batch: int = 8) -> tuple[float, int]:
        """Accuracy over `count` held-out digits, sent in batches within the served maxBatchSize."""
        x, y = self.held_out()
        predictions = np.concatenate([infer(self.address(name), name, x[i:i + batch]).argmax(axis=1)
                                      for i in range(0, count, batch)])
        return float((predictions == y[:count]).mean()), count

    def load(self, rate: float, name: str = MODEL) -> _Load:
        x, _ = self.held_out()
        return _Load(LoadGenerator(self.address(name), name, x, rate=rate, workers=4, max_seconds=900))

    def publish_broken_version(self, base: int) -> int:
        """Copy the serving version and swap its model.pt for one that fails every request (atomic rename)."""
        folder = self.repository / MODEL
        version = max(int(p.name) for p in folder.iterdir() if p.name.isdigit()) + 1
        staging = folder / f".broken-{version}"
        shutil.copytree(folder / str(base), staging)
        (staging / "model.pt").write_bytes(broken_model())
        staging.rename(folder / str(version))
        return version


def broken_model() -> bytes:
    """TorchScript whose forward pass always raises."""
    import io
    import warnings

    import torch

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("deliberately broken model version")

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated upstream (see modelops.trainer.export)
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Broken()), buffer)
    return buffer.getvalue()


class _Load:
    """`with lifecycle.load(rate) as load:` runs the generator for the block and keeps its stats."""

    def __init__(self, generator: LoadGenerator) -> None:
        self.generator = generator
        self.stats: LoadStats = generator.stats

    def __enter__(self) -> _Load:
        self.generator.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.generator.stop()

