"""A ModelPool end to end, real parts only: tritonserver pool pods run by the kubelet stand-in load pooled
ModelServices' versions through Triton's repository API, and each ModelService's selector-less Service (the
EndpointSlice the operator writes, kube-proxy's rules) routes /v2/models/<model>/infer to a server holding it.

One test walks the pool through what it must survive, with traffic running and every failure counted:
placement and routing of 3 models on 2 servers; an eviction under memory pressure (a hot model's extra copy
makes room for a new model) with no request to a model with a ready copy failing; a version change and its
rollback inside the pool with traffic on that model throughout; a server killed while serving, its copies
placed again and served.

Each model version is the sample's published folder with a TorchScript module that answers a one-hot of its
own tag (its argmax), so a response says which model version served it."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from load import LoadGenerator, infer
from support import eventually, get_json

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]

API = "modelops.dev/v1alpha1"
SAMPLE = Path(__file__).resolve().parents[1] / "model_repo" / "digits" / "1"
SIGNATURE = {k: v for k, v in json.loads((SAMPLE / "metadata.json").read_text())["signature"].items()
             if k in ("inputs", "outputs")}
TAGS = {("alpha", 1): 0, ("beta", 1): 1, ("beta", 2): 2, ("gamma", 1): 3, ("delta", 1): 4}
SAMPLES = np.zeros((4, 1, 8, 8), dtype=np.float32)


def publish(repository: Path, name: str, version: int) -> None:
    """A published version folder (the sample's files) whose model answers the one-hot of TAGS[name, version]."""
    import torch

    class Tagged(torch.nn.Module):
        def __init__(self, tag: int) -> None:
            super().__init__()
            self.tag = tag

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 10) + x.sum() * 0.0
            out[:, self.tag] = 1.0
            return out

    staging = repository / name / f".{version}"
    shutil.copytree(SAMPLE, staging)
    torch.jit.save(torch.jit.script(Tagged(TAGS[name, version])), str(staging / "model.pt"))
    staging.rename(repository / name / str(version))


def pool(repository: Path) -> dict[str, Any]:
    # A copy measures about 300 MB here (its python stub: importing torch): two fit a server, three do not.
    return {"apiVersion": API, "kind": "ModelPool", "metadata": {"name": "shared"},
            "spec": {"repository": {"hostPath": {"path": str(repository)}}, "resources": {"cpu": "1"},
                     "capacity": "700Mi", "overcommit": 0, "minServers": 2, "maxServers": 3}}


def pooled(repository: Path, name: str, version: int, autoscaling: dict[str, Any] | None = None,
           rollout: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"pool": "shared", "model": {"name": name, "version": version, "signature": SIGNATURE},
                            "repository": {"hostPath": {"path": str(repository)}},
                            "triton": {"backend": "python", "maxBatchSize": 8}, "resources": {"memory": "300Mi"}}
    if autoscaling:
        spec["autoscaling"] = autoscaling
    if rollout:
        spec["rollout"] = rollout
    return {"apiVersion": API, "kind": "ModelService", "metadata": {"name": name}, "spec": spec}


class Pool:
    """kubectl for the test's namespace, and the Service of each pooled ModelService."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))

    def address(self, name: str) -> str:
        return f"{get_json(self.kube, 'service', name)['spec']['clusterIP']}:8000"

    def answer(self, name: str) -> int:
        """The tag of the version that answers through the ModelService's Service."""
        return int(infer(self.address(name), name, SAMPLES[:1]).argmax(axis=1)[0])

    def status(self, kind: str = "mp", name: str = "shared") -> dict[str, Any]:
        return dict(get_json(self.kube, kind, name).get("status") or {})

    def ready(self, name: str, version: int) -> dict[str, Any] | None:
        status = self.status("ms", name)
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status if conditions.get("Ready") == "True" and status.get("modelVersion") == version else None

    def where(self, name: str, version: int) -> list[str]:
        """The servers whose report holds a ready copy of name:version (the pool's status)."""
        return sorted(s["name"] for s in self.status().get("servers", []) for m in s.get("models", [])
                      if (m["name"], m["version"], m["ready"]) == (name, version, True))

    def answers(self, name: str, version: int, tries: int = 6) -> bool:
        """Requests through the Service reach name:version (a connection each, so kube-proxy spreads them);
        False while a request fails (for `eventually`)."""
        try:
            return all(self.answer(name) == TAGS[name, version] for _ in range(tries))
        except Exception as error:  # noqa: BLE001 - refused or not found until routing settles
            print(f"{name}: {type(error).__name__}: {error}")
            return False

    def load(self, name: str, rate: float = 4) -> LoadGenerator:
        return LoadGenerator(self.address(name), name, SAMPLES, rate=rate, workers=2, max_seconds=600).start()


def test_a_pool_places_routes_evicts_switches_versions_and_survives_a_server_kill(  # type: ignore[no-untyped-def]
        kube, kubelet, operator, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name, version in TAGS:
        (repository / name).mkdir(parents=True, exist_ok=True)
        publish(repository, name, version)
    world = Pool(kube)

    # ---- placement and routing: 3 models on 2 servers, each Service reaches its own model ---------------
    hot = {"minReplicas": 1, "maxReplicas": 2, "metric": "inferenceRatePerReplica", "target": 1,
           "scaleUp": {"periodSeconds": 5}, "scaleDown": {"stabilizationWindowSeconds": 15, "periodSeconds": 5}}
    world.apply(pool(repository), pooled(repository, "alpha", 1, hot), pooled(repository, "beta", 1),
                pooled(repository, "gamma", 1))
    for name in ("alpha", "beta", "gamma"):
        eventually(lambda: world.ready(name, 1), 300, f"{name} to serve from the pool", interval=2)
    for name in ("alpha", "beta", "gamma"):
        assert eventually(lambda: world.answers(name, 1), 30, f"{name}'s Service to reach {name}:1", interval=1)
    status = world.status()
    # alpha may already have its second copy: the checks above are traffic to it (target: 1 request/s a copy)
    assert status["readyServers"] == 2 and status["copies"] in (3, 4), status
    sizes = [m["bytes"] for s in status["servers"] for m in s["models"]]
    assert all(m["measured"] for s in status["servers"] for m in s["models"]), status["servers"]
    print(f"placed: {[(s['name'], [m['name'] for m in s['models']], s['bytesUsed']) for s in status['servers']]}; "
          f"measured sizes {sizes}")

    # ---- eviction under memory pressure, traffic running -------------------------------------------------
    loads = {name: world.load(name, rate=6 if name == "alpha" else 3) for name in ("alpha", "beta", "gamma")}
    try:
        eventually(lambda: len(world.where("alpha", 1)) == 2, 180, "a second copy of the hot model", interval=2)
        world.apply(pooled(repository, "delta", 1))
        eventually(lambda: world.ready("delta", 1), 240, "delta placed by evicting a copy", interval=2)
        assert eventually(lambda: world.answers("delta", 1), 30, "delta's Service to reach delta:1", interval=1)
        evictions = world.status()["totals"]["evictions"]
    finally:
        stats = {name: load.stop() for name, load in loads.items()}
    print(f"eviction: {evictions} evictions; " + ", ".join(f"{n} {s.ok} ok/{s.failed} failed" for n, s in stats.items()))
    assert evictions >= 1
    for name, stat in stats.items():
        assert stat.ok > 0 and stat.failed == 0, (name, stat.errors)

    # ---- a weighted canary, its promotion and an aborted canary inside the pool, traffic throughout ---------
    # No Prometheus runs here, so each step holds for a person (`approval`): the weighted split, the promotion
    # and the rollback are the pool's; the metric analysis of a step is tested in the demo, which has one.
    kube.kubectl("delete", "ms", "delta")  # its copy's room is the new version's
    beta = world.load("beta", rate=4)
    # (these tagged test models have no held-out set: the gate inside a pool is the demo's pool step's)
    held = {"steps": [{"weight": 50, "pauseSeconds": 0, "approval": True}],
            "gates": {"evaluation": {"enabled": False}}}
    try:
        world.apply(pooled(repository, "beta", 2, rollout=held))
        eventually(lambda: world.where("beta", 2) and (world.status("ms", "beta").get("canary") or {}).get("weight"),
                   240, "beta:2 placed as a canary at 50%", interval=2)
        # one copy each: the step lists one endpoint of each version, so both answer through the Service
        seen = eventually(lambda: {world.answer("beta") for _ in range(40)} >= {TAGS["beta", 1], TAGS["beta", 2]},
                          120, f"beta's Service to reach both versions during the canary "
                          f"({world.status('ms', 'beta').get('conditions')})", interval=1)
        assert seen
        kube.kubectl("annotate", "ms", "beta", "modelops.dev/rollout=promote", "--overwrite")
        eventually(lambda: world.ready("beta", 2), 120, "beta promoted to version 2", interval=2)
        assert eventually(lambda: world.answers("beta", 2), 30, "beta's Service to reach beta:2 only", interval=1)
        eventually(lambda: not world.where("beta", 1), 120, "beta:1 unloaded", interval=2)
        world.apply(pooled(repository, "beta", 1, rollout=held))  # back to 1: a canary again...
        eventually(lambda: world.where("beta", 1) and (world.status("ms", "beta").get("canary") or {}).get("weight"),
                   240, "beta:1 placed as a canary", interval=2)
        kube.kubectl("annotate", "ms", "beta", "modelops.dev/rollout=abort", "--overwrite")  # ...rolled back
        eventually(lambda: not world.where("beta", 1), 120, "the aborted canary beta:1 unloaded", interval=2)
        assert world.status("ms", "beta").get("modelVersion") == 2
        assert eventually(lambda: world.answers("beta", 2), 30, "beta's Service to reach beta:2 only", interval=1)
    finally:
        stat = beta.stop()
    print(f"canary, promotion and abort: beta {stat.ok} ok/{stat.failed} failed")
    assert stat.ok > 0 and stat.failed == 0, stat.errors

    # ---- a server killed while serving: its copies are placed again and served ---------------------------
    # Traffic runs to every model: those with no copy on the killed server must not notice. Requests to a model
    # that had one there fail until its Service drops the dead server (the crash window any Service has) and,
    # for a model whose only copy that was, until a copy is placed again: counted and printed, not asserted.
    layout = {s["name"]: sorted(m["name"] for m in s["models"]) for s in world.status()["servers"]}
    victim = world.where("gamma", 1)[0]
    lost = layout[victim]
    runtime = next(r for r in kubelet.pods.values() if r.key == f"{kube.namespace}/{victim}")

    def server_uids() -> set[str]:
        return {p["metadata"]["uid"] for p in get_json(kube, "pods", "-l", "modelops.dev/model-pool=shared")["items"]}

    loads = {name: world.load(name, rate=3) for name in ("alpha", "beta", "gamma")}
    try:
        time.sleep(3)
        killed = time.monotonic()
        assert runtime.main.signal_group(signal.SIGKILL)
        for name in lost:
            version = world.status("ms", name)["modelVersion"]
            # the failed pod is deleted (a fresh server may take its name) and a ready copy is placed again
            eventually(lambda: runtime.uid not in server_uids() and world.where(name, version), 300,
                       f"{name} placed again after {victim} was killed", interval=1)
            assert eventually(lambda: world.answers(name, version), 60, f"{name} served again", interval=1)
        again = time.monotonic() - killed
        eventually(lambda: world.status().get("readyServers", 0) >= 2, 180, "the pool back at 2 ready servers",
                   interval=2)
    finally:
        stats = {name: load.stop() for name, load in loads.items()}
    print(f"server {victim} killed (layout {layout}): {lost} served again {again:.0f}s later; "
          + ", ".join(f"{n} {s.ok} ok/{s.failed} failed" for n, s in stats.items()))
    for name, stat in stats.items():
        assert stat.ok > 0, (name, stat)
        if name not in lost:
            assert stat.failed == 0, (name, stat.errors)
