"""Each controller pass against in-memory stores: given the observed objects, the pass writes exactly its
plan through the one writer, and nothing at all when nothing differs.

The API server here is a dict (`MemoryKube`): it records every write and answers like the real one for the
calls the writer makes (create refuses an existing name, apply replaces what we set). The controllers are
tested against the real API server in tests/integration; this is the fast, exhaustive layer below."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from modelops import API_VERSION
from modelops.api.modelpool import ModelPoolStatus
from modelops.api.modelservice import ModelServiceStatus
from modelops.api.trainingjob import TrainingJobStatus
from modelops.autoscale.prometheus import Prometheus
from modelops.controllers.modelpool import ModelPoolController
from modelops.controllers.modelservice import ModelServiceController
from modelops.controllers.trainingjob import TrainingJobController
from modelops.engine.cache import Caches, Store, trim
from modelops.engine.engine import Context, Controller, merged_child_kinds
from modelops.engine.writer import Writer
from modelops.kube import ApiError
from modelops.resources import modelservice as build
from modelops.resources.conditions import Event

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
Obj = dict[str, Any]


class MemoryKube:
    """The writer's side of the API server, in memory, recording each write as (verb, kind, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.events: list[tuple[str, Event]] = []
        self._versions = itertools.count(100)

    def put(self, obj: Obj) -> Obj:
        """An object as the API server stores it (uid, resourceVersion, creationTimestamp added)."""
        stored = copy.deepcopy(obj)
        meta = stored["metadata"]
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[(stored["kind"], meta.get("namespace", ""), meta["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found else None

    def create(self, obj: Obj) -> Obj:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self.writes.append(("create", *key[::2]))
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f"{key[0]} {key[2]} already exists")
        return self.put(obj)

    def apply(self, obj: Obj) -> Obj:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        self.writes.append(("apply", *key[::2]))
        old = self.objects[key]
        merged = {**old, **copy.deepcopy(obj), "metadata": {**old["metadata"], **obj["metadata"]}}
        return self.put(merged)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Obj) -> Obj:
        self.writes.append(("patch", kind, name))
        return self.put(_merge(self.objects[(kind, namespace, name)], patch))

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Obj, *,
                     resource_version: str | None = None) -> Obj:
        self.writes.append(("status", kind, name))
        return self.put(_merge(self.objects[(kind, namespace, name)], {"status": status}))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def post_event(self, involved: Obj, event: Event) -> None:
        self.writes.append(("event", involved["kind"], involved["metadata"]["name"]))
        self.events.append((involved["metadata"]["name"], event))

    def patch_pod_condition(self, *args: Any) -> Obj | None:
        raise AssertionError("a reconcile pass never sets a pod condition (the model check does)")


def _merge(obj: Obj, patch: Obj) -> Obj:
    """A JSON merge patch (RFC 7386)."""
    merged = copy.deepcopy(obj)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class World:
    """A Context over in-memory stores fed from MemoryKube, as the informers would feed them."""

    def __init__(self, *controllers: Controller, pool_client: Any = None) -> None:
        self.kube = MemoryKube()
        self.caches = Caches()
        self.controllers = {c.kind: c for c in controllers}
        for controller in controllers:
            self.caches.stores[controller.kind] = Store(controller.resource_indexes)
        self.transforms = {}
        kinds = merged_child_kinds(controllers)  # a cluster without the optional CRDs (ServiceMonitor, Kueue)
        for child in kinds.values():
            self.caches.stores[child.kind] = Store(child.indexes)
            self.transforms[child.kind] = child.transform
        self.caches._transforms = self.transforms  # what Caches.add records per informer
        self.checks: list[Any] = []
        writer = Writer(self.kube, self.caches, pool_client) if pool_client else Writer(self.kube, self.caches)  # type: ignore[arg-type]
        self.ctx = Context(caches=self.caches, writer=writer,
                           prometheus=Prometheus(""), enqueue=lambda key: None, enqueue_check=self.checks.append,
                           serves=lambda api_version, kind: not kinds[kind].optional)

    def add(self, obj: Obj) -> Obj:
        stored = self.kube.put(obj)
        self.caches.remember(stored)
        return stored

    def sync(self) -> None:
        """The caches catch up with the server (what the watch events would do)."""
        for (kind, namespace, name), obj in self.kube.objects.items():
            if kind in self.caches.stores:
                self.caches.stores[kind].upsert(self.transforms.get(kind, trim)(copy.deepcopy(obj)))
        for kind, store in self.caches.stores.items():
            for namespace, name in store.keys():
                if (kind, namespace, name) not in self.kube.objects:
                    store.remove(namespace, name)

    def reconcile(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        """One pass; the writes it made. Every status it wrote is one the typed status model reads whole."""
        self.kube.writes.clear()
        self.ctx.writer.begin_pass()
        self.controllers[kind].reconcile(self.ctx, "ml", name)
        self.sync()
        if ("status", kind, name) in self.kube.writes and (kind, "ml", name) in self.kube.objects:
            status = self.status(kind, name)
            assert_within(status, STATUS_MODELS[kind].model_validate(status).wire())
        return list(self.kube.writes)

    def status(self, kind: str, name: str) -> Obj:
        return self.kube.objects[(kind, "ml", name)].get("status") or {}


STATUS_MODELS = {"ModelService": ModelServiceStatus, "TrainingJob": TrainingJobStatus, "ModelPool": ModelPoolStatus}


def assert_within(written: Any, typed: Any, path: str = "status") -> None:
    """Every field the planner wrote is in the typed model's reading, with the same value (the model may add
    its defaults): no field unknown to the CRD's status schema, none of the wrong type."""
    if isinstance(written, dict):
        assert isinstance(typed, dict), path
        for key, value in written.items():
            assert key in typed, f"{path}.{key} is not in the status model"
            assert_within(value, typed[key], f"{path}.{key}")
    elif isinstance(written, list):
        assert isinstance(typed, list) and len(typed) == len(written), path
        for i, (a, b) in enumerate(zip(written, typed)):
            assert_within(a, b, f"{path}[{i}]")
    else:
        assert written == typed, f"{path}: {written!r} reads as {typed!r}"


def model_service(name: str = "digits", **spec: Any) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "ModelService",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
            "spec": {"model": {"name": "digits", "version": 3, "signature": SIGNATURE},
                     "repository": {"hostPath": {"path": "/srv/models"}}, "replicas": 2, **spec}}


def training_job(name: str = "train", **spec: Any) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
            "spec": {"output": {"modelName": "digits", "repository": {"hostPath": {"path": "/srv/models"}}},
                     "trainer": {"epochs": 2}, **spec}}


@pytest.fixture
def world() -> World:
    return World(TrainingJobController(), ModelServiceController())


def conditions(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status.get("conditions", [])}


# ---- ModelService ----------------------------------------------------------------------------------------


def test_a_new_model_service_creates_its_children_writes_status_and_then_nothing(world: World) -> None:
    world.add(model_service())
    writes = world.reconcile("ModelService", "digits")
    revision = next(name for verb, kind, name in writes if kind == "Deployment")
    assert writes == [("create", "Service", "digits"), ("create", "ConfigMap", revision),
                      ("create", "Deployment", revision), ("status", "ModelService", "digits"),
                      ("event", "ModelService", "digits")]
    assert world.status("ModelService", "digits")["phase"] == "Pending"
    assert world.kube.objects[("Deployment", "ml", revision)]["spec"]["replicas"] == 2
    # the next pass finds the rollout steady (no longer "Initial"): its status says so, and that is all
    assert world.reconcile("ModelService", "digits") == [("status", "ModelService", "digits")]
    assert world.reconcile("ModelService", "digits") == []  # converged: not one write


def converged(world: World, kind: str, name: str) -> None:
    for _ in range(3):
        if not world.reconcile(kind, name):
            return
    raise AssertionError(f"{kind} {name} still writes after 3 passes: {world.kube.writes}")


def test_a_serving_revision_changes_status_only_and_then_nothing(world: World) -> None:
    world.add(model_service())
    converged(world, "ModelService", "digits")
    deployment = next(o for (kind, _, _), o in world.kube.objects.items() if kind == "Deployment")
    world.add({**deployment, "status": {"readyReplicas": 2, "replicas": 2}})
    assert world.reconcile("ModelService", "digits") == [("status", "ModelService", "digits"),
                                                         ("event", "ModelService", "digits")]
    status = world.status("ModelService", "digits")
    assert status["phase"] == "Ready" and conditions(status)["Ready"]["status"] == "True"
    assert world.reconcile("ModelService", "digits") == []


def test_a_hand_edited_child_is_put_back_with_one_apply(world: World) -> None:
    world.add(model_service())
    converged(world, "ModelService", "digits")
    service = world.kube.objects[("Service", "ml", "digits")]
    world.add({**service, "spec": {**service["spec"], "selector": {"app": "elsewhere"}}})
    assert world.reconcile("ModelService", "digits") == [("apply", "Service", "digits")]
    assert world.kube.objects[("Service", "ml", "digits")]["spec"]["selector"] == \
        {build.LABEL_SERVICE: "digits"}


def test_a_child_name_owned_by_someone_else_is_refused_once_and_nothing_is_touched(world: World) -> None:
    world.add(model_service())
    world.add({"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "digits", "namespace": "ml", "labels": {"app.kubernetes.io/managed-by": "modelops"}},
        "spec": {"selector": {"app": "theirs"}}})
    writes = world.reconcile("ModelService", "digits")
    assert [w for w in writes if w[0] != "event"] == [("status", "ModelService", "digits")]
    assert ("Warning", "NameConflict") in [(e.type, e.reason) for _, e in world.kube.events]
    stalled = conditions(world.status("ModelService", "digits"))["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "NameConflict")
    assert world.kube.objects[("Service", "ml", "digits")]["spec"]["selector"] == {"app": "theirs"}
    assert world.reconcile("ModelService", "digits") == []  # said once


def test_an_invalid_spec_is_refused_with_a_condition_and_one_event(world: World) -> None:
    world.add(model_service(replicas=-3))
    assert world.reconcile("ModelService", "digits") == [("status", "ModelService", "digits"),
                                                         ("event", "ModelService", "digits")]
    stalled = conditions(world.status("ModelService", "digits"))["Stalled"]
    assert stalled["reason"] == "InvalidSpec" and "spec.replicas" in stalled["message"]
    assert world.reconcile("ModelService", "digits") == []


def test_a_conflict_on_an_evaluation_pod_reads_like_any_other_child(world: World) -> None:
    world.add(model_service(rollout={"gates": {"evaluation": {"enabled": True}}}))
    converged(world, "ModelService", "digits")
    deployment = next(o for (kind, _, _), o in world.kube.objects.items() if kind == "Deployment")
    revision = deployment["metadata"]["name"]
    assert '"Pending"' in deployment["metadata"]["annotations"]["modelops.dev/evaluation"]
    # a serving pod of the revision with a verified model, held for the gate: the evaluation is due
    world.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{revision}-x", "namespace": "ml",
        "labels": {**deployment["spec"]["template"]["metadata"]["labels"]},
        "annotations": deployment["spec"]["template"]["metadata"]["annotations"],
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{revision}-rs", "uid": "rs-1",
                             "controller": True}]},
        "status": {"phase": "Running", "podIP": "10.244.0.9", "conditions": [
            {"type": build.MODEL_READY_GATE, "status": "False", "reason": "EvaluationPending"}]}})
    world.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": build.evaluation_pod_name(revision), "namespace": "ml",
        "labels": {"app.kubernetes.io/managed-by": "modelops"}}, "spec": {}})
    assert world.reconcile("ModelService", "digits") == [("status", "ModelService", "digits"),
                                                         ("event", "ModelService", "digits")]
    stalled = conditions(world.status("ModelService", "digits"))["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "NameConflict")
    assert build.evaluation_pod_name(revision) in stalled["message"]


def test_the_autoscaler_remembers_through_the_engine_and_forgets_with_the_object(world: World) -> None:
    world.add(model_service(autoscaling={"minReplicas": 1, "maxReplicas": 4, "metric": "queueTimeMicroseconds",
                                         "target": 1000}))
    world.reconcile("ModelService", "digits")
    key = ("ModelService", "ml", "digits")
    remembered = world.ctx.memory.get(key)
    assert remembered is not None and remembered.desired == 1  # no Prometheus: held at minReplicas
    assert "metric unavailable" in world.status("ModelService", "digits")["autoscaling"]["reason"]
    world.kube.objects.pop(("ModelService", "ml", "digits"))
    world.sync()
    world.reconcile("ModelService", "digits")
    assert world.ctx.memory.get(key) is None


def test_a_followed_job_that_goes_keeps_serving_says_so_once_and_is_followed_again(world: World) -> None:
    published = {"name": "digits", "version": 3, "uri": "file:///srv/models/digits/3", "signature": SIGNATURE}
    world.add({**training_job(), "status": {"phase": "Succeeded", "model": published}})
    world.add(model_service(model={"name": "digits", "fromTrainingJob": "train"}))
    converged(world, "ModelService", "digits")
    following = conditions(world.status("ModelService", "digits"))["SourceAvailable"]
    assert (following["status"], following["reason"]) == ("True", "Following")
    revision = next(name for kind, _, name in world.kube.objects if kind == "Deployment")

    world.kube.objects.pop(("TrainingJob", "ml", "train"))
    world.sync()
    world.kube.events.clear()
    world.reconcile("ModelService", "digits")
    missing = conditions(world.status("ModelService", "digits"))["SourceAvailable"]
    assert (missing["status"], missing["reason"]) == ("False", "TrainingJobNotFound")
    assert "TrainingJob train not found; still serving version 3" in missing["message"]
    assert [(e.type, e.reason) for _, e in world.kube.events] == [("Warning", "TrainingJobNotFound")]
    assert ("Deployment", "ml", revision) in world.kube.objects  # still serving
    converged(world, "ModelService", "digits")
    assert len(world.kube.events) == 1  # said once

    world.add({**training_job(), "status": {"phase": "Succeeded", "model": published}})
    world.reconcile("ModelService", "digits")
    assert conditions(world.status("ModelService", "digits"))["SourceAvailable"]["status"] == "True"
    assert ("Normal", "SourceFound") in [(e.type, e.reason) for _, e in world.kube.events]


def test_a_followed_job_the_caches_have_not_seen_yet_is_not_called_missing(world: World) -> None:
    """kopf feeds our own kinds; at a start it may lag the child caches: the API server is asked."""
    world.kube.put(training_job())  # on the server, not in the caches
    world.add(model_service(model={"name": "digits", "fromTrainingJob": "train"}))
    world.reconcile("ModelService", "digits")
    assert conditions(world.status("ModelService", "digits"))["SourceAvailable"]["status"] == "True"


# ---- TrainingJob -------------------------------------------------------------------------------------------


def test_a_new_training_job_starts_its_worker_and_then_writes_nothing(world: World) -> None:
    world.add(training_job())
    writes = world.reconcile("TrainingJob", "train")
    assert writes == [("create", "Pod", "train-a0-w0"), ("status", "TrainingJob", "train")]
    status = world.status("TrainingJob", "train")
    assert status["phase"] == "Pending" and status["attempt"] == 0
    assert world.reconcile("TrainingJob", "train") == []


def test_a_refused_worker_keeps_the_recorded_attempt(world: World) -> None:
    world.add(training_job(workers=2))
    world.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "train-workers", "namespace": "ml"},
               "spec": {"clusterIP": "None"}})
    writes = world.reconcile("TrainingJob", "train")
    assert ("create", "Pod", "train-a0-w0") not in writes  # the group is not started short of its Service
    status = world.status("TrainingJob", "train")
    assert conditions(status)["Stalled"]["reason"] == "NameConflict" and "attempt" not in status
    assert world.reconcile("TrainingJob", "train") == []


def test_a_job_past_its_ttl_deletes_itself_and_is_forgotten(world: World) -> None:
    world.add({**training_job(ttlSecondsAfterFinished=0),
               "status": {"phase": "Succeeded", "completionTime": "2026-01-01T00:00:00Z", "conditions": []}})
    writes = world.reconcile("TrainingJob", "train")
    assert writes[-1] == ("delete", "TrainingJob", "train")
    assert ("TrainingJob", "ml", "train") not in world.kube.objects


# ---- ModelPool -----------------------------------------------------------------------------------------------

from modelops.resources.modelpool import ANNOTATION_LEDGER  # noqa: E402
from modelops.resources import pool_plan  # noqa: E402
from modelops.resources.pool_plan import Ledger  # noqa: E402
from modelops.triton.pool import ModelToLoad, ResidentModel, ServerReport  # noqa: E402

MiB = 1 << 20


class FakeTriton:
    """Pool servers in memory, by base URL: what Triton's repository API holds and what a load measures. A
    server in `leaky` gives nothing back on unload (triton#3320)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.held: dict[str, dict[str, ResidentModel]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.leaky: set[str] = set()

    def __call__(self, url: str) -> FakeTriton.Client:
        return FakeTriton.Client(self, url)

    class Client:
        def __init__(self, triton: FakeTriton, url: str) -> None:
            self.triton, self.url = triton, url
            self.models = triton.held.setdefault(url, {})

        def report(self) -> ServerReport:
            return ServerReport(True, tuple(self.models.values()), sum(m.bytes or 0 for m in self.models.values()))

        def load(self, model: ModelToLoad) -> int | None:
            self.triton.calls.append(("load", self.url, f"{model.name}:{model.version}"))
            size = self.triton.sizes[model.name]
            self.models[model.name] = ResidentModel(model.name, model.version, True, 0, 0, 0, size)
            return size

        def unload(self, name: str) -> int | None:
            self.triton.calls.append(("unload", self.url, name))
            gone = self.models.pop(name)
            return 0 if self.url in self.triton.leaky else gone.bytes


def model_pool(name: str = "shared", **spec: Any) -> Obj:
    return {"apiVersion": API_VERSION, "kind": "ModelPool",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "generation": 1},
            "spec": {"repository": {"hostPath": {"path": "/srv/models"}}, "capacity": "1Gi", "minServers": 1,
                     "maxServers": 2, **spec}}


def pooled(name: str, model: str, mib: int, **spec: Any) -> Obj:
    """A pooled ModelService; its evaluation gate off (the gate in a pool: test_pooled_rollout.py)."""
    spec.setdefault("rollout", {"gates": {"evaluation": {"enabled": False}}})
    obj = model_service(name, pool="shared", replicas=1, resources={"memory": f"{mib}Mi"}, **spec)
    obj["spec"]["model"] = {**obj["spec"]["model"], "name": model}
    return obj


def run_servers(world: World) -> None:
    """Every server pod the pool created is scheduled and Ready at its own address."""
    for (kind, _, name), pod in list(world.kube.objects.items()):
        if kind == "Pod" and name.startswith("shared-s") and not pod.get("status"):
            index = name.rsplit("s", 1)[1]
            world.add({**pod, "status": {"phase": "Running", "podIP": f"10.0.0.{index}",
                                         "conditions": [{"type": "Ready", "status": "True"}]}})


@pytest.fixture
def pool_world(monkeypatch: pytest.MonkeyPatch) -> tuple[World, FakeTriton]:
    # passes here follow each other in microseconds: no wait for kube-proxy after a copy left its endpoints
    # (the wait itself is tested in test_modelpool_planner.py)
    monkeypatch.setattr(pool_plan, "UNROUTE_GRACE_SECONDS", 0.0)
    triton = FakeTriton({"a": 600 * MiB, "b": 300 * MiB, "c": 600 * MiB})
    return World(TrainingJobController(), ModelServiceController(), ModelPoolController(), pool_client=triton), triton


def test_a_pool_places_its_model_services_through_the_writer_and_then_settles(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_pool())
    for obj in (pooled("alpha", "a", 500), pooled("beta", "b", 300), pooled("gamma", "c", 500)):
        world.add(obj)
    writes = world.reconcile("ModelPool", "shared")
    # 1300Mi declared does not fit one server of 1Gi: two at once
    assert writes == [("create", "Pod", "shared-s0"), ("create", "Pod", "shared-s1"),
                      ("status", "ModelPool", "shared")]
    pod = world.kube.objects[("Pod", "ml", "shared-s0")]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ModelPool"
    run_servers(world)
    for _ in range(6):
        world.reconcile("ModelPool", "shared")
        run_servers(world)
    # a (600Mi measured) and b (300Mi) share s0; c does not fit beside them: a second server holds it
    assert {url: sorted(held) for url, held in triton.held.items()} == \
        {"http://10.0.0.0:8000": ["a", "b"], "http://10.0.0.1:8000": ["c"]}
    status = world.status("ModelPool", "shared")
    assert status["phase"] == "Ready" and status["copies"] == 3 and status["serversReady"] == "2/2"
    assert status["totals"] == {"loads": 3, "unloads": 0, "evictions": 0}
    ledger = Ledger.parse(world.kube.objects[("Pod", "ml", "shared-s0")]["metadata"]["annotations"][ANNOTATION_LEDGER])
    assert ledger.sizes == {"a:3": 600 * MiB, "b:3": 300 * MiB} and ledger.loads == 2
    assert [w for w in world.reconcile("ModelPool", "shared")] == []  # settled: not one write


def test_a_pool_server_whose_owner_reference_was_removed_is_adopted_back_and_ended_with_its_pool(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, _ = pool_world
    world.add(model_pool())
    world.add(pooled("alpha", "a", 500))
    world.reconcile("ModelPool", "shared")
    run_servers(world)
    world.reconcile("ModelPool", "shared")
    pod = world.kube.objects[("Pod", "ml", "shared-s0")]
    world.add({**pod, "metadata": {**pod["metadata"], "ownerReferences": []}})
    writes = world.reconcile("ModelPool", "shared")
    assert ("create", "Pod", "shared-s1") not in writes  # still the pool's server: not replaced
    owner = world.kube.objects[("Pod", "ml", "shared-s0")]["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"]) for r in owner] == [("ModelPool", "uid-shared")]
    # orphaned again, and the pool deleted before it adopted it back: ended, never left running unowned
    world.add({**world.kube.objects[("Pod", "ml", "shared-s0")],
               "metadata": {**world.kube.objects[("Pod", "ml", "shared-s0")]["metadata"], "ownerReferences": []}})
    world.kube.objects.pop(("ModelPool", "ml", "shared"))
    world.sync()
    assert ("delete", "Pod", "shared-s0") in world.reconcile("ModelPool", "shared")


def test_the_same_model_name_in_a_second_model_service_is_refused_on_it(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_pool())
    world.add(pooled("alpha", "a", 500))
    second = pooled("again", "a", 500)
    second["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    world.add(second)
    world.reconcile("ModelPool", "shared")
    [unplaced] = world.status("ModelPool", "shared")["unplaced"]
    assert (unplaced["modelService"], unplaced["reason"]) == ("again", "ModelNameTaken")
    assert ("again", "ModelNameTaken") in [(name, e.reason) for name, e in world.kube.events]
    world.reconcile("ModelPool", "shared")
    assert [e.reason for _, e in world.kube.events].count("ModelNameTaken") == 2  # once on the pool, once on it


def test_a_server_whose_unloads_leak_is_drained_and_replaced(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_pool(maxServers=3))
    world.add(pooled("alpha", "a", 600))
    for _ in range(3):
        world.reconcile("ModelPool", "shared")
        run_servers(world)
    assert triton.held == {"http://10.0.0.0:8000": triton.held["http://10.0.0.0:8000"]}
    # alpha moves to version 4: version 3's unload gives nothing back
    triton.leaky.add("http://10.0.0.0:8000")
    alpha = world.kube.objects[("ModelService", "ml", "alpha")]
    world.add({**alpha, "spec": {**alpha["spec"], "model": {**alpha["spec"]["model"], "version": 4}}})
    for _ in range(8):
        world.reconcile("ModelPool", "shared")
        run_servers(world)
    ledger = Ledger.parse(world.kube.objects[("Pod", "ml", "shared-s0")]["metadata"]["annotations"][ANNOTATION_LEDGER]) \
        if ("Pod", "ml", "shared-s0") in world.kube.objects else None
    assert ledger is None  # the leaking server is gone...
    assert ("unload", "http://10.0.0.0:8000", "a") in triton.calls
    assert ("load", "http://10.0.0.1:8000", "a:4") in triton.calls  # ...after its model was placed elsewhere
    assert "Draining" in [e.reason for _, e in world.kube.events]
    assert world.status("ModelPool", "shared")["phase"] == "Ready"


def settle(world: World, *names: str, rounds: int = 6) -> None:
    for _ in range(rounds):
        world.reconcile("ModelPool", "shared")
        run_servers(world)
        for name in names:
            world.reconcile("ModelService", name)


def test_a_pooled_model_service_routes_to_the_servers_where_its_version_is_ready(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_pool())
    world.add(pooled("alpha", "a", 500))
    writes = world.reconcile("ModelService", "alpha")
    assert ("create", "Service", "alpha") in writes and ("create", "EndpointSlice", "alpha") in writes
    assert not any(kind in ("Deployment", "ConfigMap") for _, kind, _ in writes)  # no pods of its own
    service = world.kube.objects[("Service", "ml", "alpha")]
    assert "selector" not in service["spec"]
    assert world.kube.objects[("EndpointSlice", "ml", "alpha")]["endpoints"] == []
    assert world.status("ModelService", "alpha")["phase"] == "Pending"

    settle(world, "alpha")
    endpoints = world.kube.objects[("EndpointSlice", "ml", "alpha")]["endpoints"]
    assert [(e["addresses"], e["targetRef"]["name"]) for e in endpoints] == [(["10.0.0.0"], "shared-s0")]
    status = world.status("ModelService", "alpha")
    assert status["phase"] == "Ready" and status["pool"] == {"name": "shared", "copies": 1, "servers": ["shared-s0"]}
    assert world.kube.objects[("EndpointSlice", "ml", "alpha")]["metadata"]["labels"]["kubernetes.io/service-name"] \
        == "alpha"

    # version 4: placed beside version 3 (never on its server), canaried (one step, no pause), promoted
    alpha = world.kube.objects[("ModelService", "ml", "alpha")]
    rollout = {**alpha["spec"]["rollout"], "steps": [{"weight": 50, "pauseSeconds": 0}]}
    world.add({**alpha, "spec": {**alpha["spec"], "model": {**alpha["spec"]["model"], "version": 4},
                                 "rollout": rollout},
               "metadata": {**alpha["metadata"], "generation": 2}})
    world.reconcile("ModelService", "alpha")
    assert world.status("ModelService", "alpha")["canary"]["version"] == 4
    assert [e["addresses"] for e in world.kube.objects[("EndpointSlice", "ml", "alpha")]["endpoints"]] == \
        [["10.0.0.0"]]  # version 3 keeps serving meanwhile
    settle(world, "alpha", rounds=8)
    status = world.status("ModelService", "alpha")
    assert status["modelVersion"] == 4 and "canary" not in status
    assert [e["targetRef"]["name"] for e in world.kube.objects[("EndpointSlice", "ml", "alpha")]["endpoints"]] == \
        ["shared-s1"]
    assert ("unload", "http://10.0.0.0:8000", "a") in triton.calls  # version 3 left the pool
    reasons = [e.reason for _, e in world.kube.events]
    assert reasons.index("CanaryStarted") < reasons.index("Promoted")


def test_a_model_service_moving_into_a_pool_keeps_its_pods_until_a_copy_serves(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_service("alpha"))
    converged(world, "ModelService", "alpha")
    [revision] = [name for kind, _, name in world.kube.objects if kind == "Deployment"]
    world.add(model_pool())
    alpha = world.kube.objects[("ModelService", "ml", "alpha")]
    spec = {**alpha["spec"], "pool": "shared", "replicas": 1, "resources": {"memory": "500Mi"},
            "model": {**alpha["spec"]["model"], "name": "a"}}
    world.add({**alpha, "spec": spec, "metadata": {**alpha["metadata"], "generation": 2}})
    world.reconcile("ModelService", "alpha")
    assert ("Deployment", "ml", revision) in world.kube.objects  # nothing in the pool serves it yet
    settle(world, "alpha")
    assert ("Deployment", "ml", revision) not in world.kube.objects and ("ConfigMap", "ml", revision) not in \
        world.kube.objects
    assert [e["targetRef"]["name"] for e in world.kube.objects[("EndpointSlice", "ml", "alpha")]["endpoints"]] == \
        ["shared-s0"]


def test_a_pooled_canary_step_lists_a_copy_of_each_version_and_a_settled_pass_writes_nothing(pool_world) -> None:  # type: ignore[no-untyped-def]
    world, triton = pool_world
    world.add(model_pool())
    world.add(pooled("alpha", "a", 500, rollout={"steps": [{"weight": 50, "pauseSeconds": 600}],
                                                 "gates": {"evaluation": {"enabled": False}}}))
    settle(world, "alpha")
    alpha = world.kube.objects[("ModelService", "ml", "alpha")]
    world.add({**alpha, "spec": {**alpha["spec"], "model": {**alpha["spec"]["model"], "version": 4}},
               "metadata": {**alpha["metadata"], "generation": 2}})
    settle(world, "alpha")
    endpoint_slice = world.kube.objects[("EndpointSlice", "ml", "alpha")]
    assert [e["targetRef"]["name"] for e in endpoint_slice["endpoints"]] == ["shared-s0", "shared-s1"]  # v3, v4
    assert {m["version"] for s in world.status("ModelPool", "shared")["servers"] for m in s["models"]} == {3, 4}
    status = world.status("ModelService", "alpha")
    assert status["canary"]["weight"] == 50 and status["pool"]["canaryServers"] == ["shared-s1"]
    assert world.reconcile("ModelService", "alpha") == []  # settled mid-step: not one write


# ---- identity: what makes a child ours survives hand edits of its labels and owner references ----------------


def running_worker(world: World, name: str = "train-a0-w0") -> Obj:
    """The job's worker as the server has it, running."""
    pod = world.kube.objects[("Pod", "ml", name)]
    return world.add({**pod, "status": {"phase": "Running"}})


def test_a_worker_whose_labels_were_overwritten_is_still_the_group_and_gets_them_back(world: World) -> None:
    world.add(training_job())
    world.reconcile("TrainingJob", "train")
    pod = running_worker(world)
    world.reconcile("TrainingJob", "train")
    labels = {**pod["metadata"]["labels"], "modelops.dev/rank": "x", "modelops.dev/attempt": "garbage"}
    del labels["app.kubernetes.io/managed-by"]
    world.add({**pod, "metadata": {**pod["metadata"], "labels": labels}})
    writes = world.reconcile("TrainingJob", "train")
    assert ("create", "Pod", "train-a1-w0") not in writes and ("delete", "Pod", "train-a0-w0") not in writes
    assert ("patch", "Pod", "train-a0-w0") in writes
    restored = world.kube.objects[("Pod", "ml", "train-a0-w0")]["metadata"]["labels"]
    assert (restored["modelops.dev/rank"], restored["modelops.dev/attempt"]) == ("0", "0")
    assert restored["app.kubernetes.io/managed-by"] == "modelops"
    status = world.status("TrainingJob", "train")
    assert status["phase"] == "Running" and status.get("preemptions", 0) == 0 and status["attempt"] == 0
    converged(world, "TrainingJob", "train")


def test_a_worker_whose_owner_reference_was_removed_is_adopted_back_not_replaced(world: World) -> None:
    world.add(training_job())
    world.reconcile("TrainingJob", "train")
    pod = running_worker(world)
    world.reconcile("TrainingJob", "train")
    world.add({**pod, "metadata": {**pod["metadata"], "ownerReferences": []}})
    writes = world.reconcile("TrainingJob", "train")
    assert [w for w in writes if w[1] == "Pod"] == [("patch", "Pod", "train-a0-w0")]
    owner = world.kube.objects[("Pod", "ml", "train-a0-w0")]["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"], r["controller"]) for r in owner] == [("TrainingJob", "uid-train", True)]
    assert world.status("TrainingJob", "train").get("preemptions", 0) == 0
    converged(world, "TrainingJob", "train")


def test_an_orphaned_worker_of_a_job_that_is_gone_or_replaced_is_ended(world: World) -> None:
    world.add(training_job())
    world.reconcile("TrainingJob", "train")
    pod = running_worker(world)
    world.add({**pod, "metadata": {**pod["metadata"], "ownerReferences": []}})
    world.kube.objects.pop(("TrainingJob", "ml", "train"))  # deleted before it adopted its worker back
    world.sync()
    assert world.reconcile("TrainingJob", "train") == [("delete", "Pod", "train-a0-w0")]
    # a job of the same name made again: a worker claiming the earlier one is not its own, and is ended
    world.add(pod | {"metadata": {**pod["metadata"], "ownerReferences": []}})
    world.add(training_job() | {"metadata": {**training_job()["metadata"], "uid": "uid-train-2"}})
    writes = world.reconcile("TrainingJob", "train")
    assert ("delete", "Pod", "train-a0-w0") in writes and ("patch", "Pod", "train-a0-w0") not in writes


def test_an_orphan_another_controller_owns_is_left_to_it(world: World) -> None:
    world.add(training_job())
    world.reconcile("TrainingJob", "train")
    pod = running_worker(world)
    theirs = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "rs-1", "controller": True}]
    world.add({**pod, "metadata": {**pod["metadata"], "ownerReferences": theirs}})
    writes = world.reconcile("TrainingJob", "train")
    assert ("patch", "Pod", "train-a0-w0") not in writes and ("delete", "Pod", "train-a0-w0") not in writes
    assert world.kube.objects[("Pod", "ml", "train-a0-w0")]["metadata"]["ownerReferences"] == theirs


def test_an_orphaned_revision_is_adopted_back_by_its_model_service(world: World) -> None:
    world.add(model_service())
    converged(world, "ModelService", "digits")
    deployment = next(o for (kind, _, _), o in world.kube.objects.items() if kind == "Deployment")
    world.add({**deployment, "metadata": {**deployment["metadata"], "ownerReferences": []}})
    writes = world.reconcile("ModelService", "digits")
    assert ("apply", "Deployment", deployment["metadata"]["name"]) in writes
    adopted = world.kube.objects[("Deployment", "ml", deployment["metadata"]["name"])]["metadata"]
    assert adopted["ownerReferences"][0]["uid"] == "uid-digits"
    assert "NameConflict" not in str(world.status("ModelService", "digits"))


def test_a_worker_stripped_of_owner_and_claim_is_ended_and_replaced_only_once_gone(world: World) -> None:
    world.add(training_job())
    world.reconcile("TrainingJob", "train")
    pod = running_worker(world)
    world.reconcile("TrainingJob", "train")
    annotations = {k: v for k, v in pod["metadata"]["annotations"].items() if k != "modelops.dev/owner"}
    world.add({**pod, "metadata": {**pod["metadata"], "ownerReferences": [], "annotations": annotations}})
    writes = world.reconcile("TrainingJob", "train")
    assert ("delete", "Pod", "train-a0-w0") in writes
    assert not [w for w in writes if w[0] == "create"]  # not while it may still run
    assert world.status("TrainingJob", "train")["preemptions"] == 1
    writes = world.reconcile("TrainingJob", "train")  # it is gone now: the next attempt starts
    assert ("create", "Pod", "train-a1-w0") in writes


def test_a_serving_pod_its_replicaset_let_go_of_is_ended(world: World) -> None:
    """A serving pod whose labels were edited: its ReplicaSet releases it (and makes another); it would
    serve on, holding its GPU, owned by nothing."""
    world.add(model_service())
    converged(world, "ModelService", "digits")
    deployment = next(o for (kind, _, _), o in world.kube.objects.items() if kind == "Deployment")
    template = deployment["spec"]["template"]["metadata"]
    labels = {**template["labels"], build.LABEL_SERVICE: "x", "app.kubernetes.io/managed-by": "someone"}
    world.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{deployment['metadata']['name']}-abcde", "namespace": "ml", "labels": labels,
        "annotations": template["annotations"]}, "status": {"phase": "Running"}})
    writes = world.reconcile("ModelService", "digits")
    assert ("delete", "Pod", f"{deployment['metadata']['name']}-abcde") in writes
    # one its ReplicaSet still owns is never touched
    world.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "kept", "namespace": "ml", "labels": template["labels"], "annotations": template["annotations"],
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1",
                             "controller": True}]}, "status": {"phase": "Running"}})
    assert ("delete", "Pod", "kept") not in world.reconcile("ModelService", "digits")
