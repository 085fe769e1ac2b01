"""ModelPool: the server pod builder and the pure placement planner (plan_pool), pass by pass."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from modelops.api.modelpool import ModelPoolSpec
from modelops.resources import modelpool as build
from modelops.triton.pool import POOL_REPOSITORY, server_args

POOL = build.PoolMeta("shared", "ml", "uid-pool", 1)


def pool_spec(**overrides: Any) -> ModelPoolSpec:
    base = {"repository": {"persistentVolumeClaim": {"claimName": "models"}}, "capacity": "1Gi",
            "resources": {"cpu": "2", "memory": "4Gi"}}
    return ModelPoolSpec.model_validate(base | overrides)


# ---- server pods ---------------------------------------------------------------------------------------


def test_a_server_pod_is_triton_with_no_model_owned_by_its_pool() -> None:
    pod = build.server_pod(POOL, pool_spec(nodeSelector={"pool": "cpu"}, priorityClassName="serving"), 2)
    meta = pod["metadata"]
    assert meta["name"] == "shared-s2" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelPool", "name": "shared",
                                        "uid": "uid-pool", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"][build.LABEL_POOL] == "shared" and meta["labels"][build.LABEL_SERVER_INDEX] == "2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "modelops"
    assert build.server_index(pod) == 2
    [container] = pod["spec"]["containers"]
    assert container["args"] == server_args(8000, 8001, 8002)
    assert not any(a.startswith("--load-model") for a in container["args"])
    assert container["volumeMounts"] == [{"name": "model-repository", "mountPath": POOL_REPOSITORY, "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "model-repository",
                                       "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}]
    assert container["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "2", "memory": "4Gi"}}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"} and pod["spec"]["priorityClassName"] == "serving"


def test_gpu_servers_tolerate_the_gpu_taint_and_host_paths_mount_as_directories() -> None:
    pod = build.server_pod(POOL, pool_spec(resources={"gpus": 1}, repository={"hostPath": {"path": "/srv/m"}}), 0)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert pod["spec"]["volumes"][0]["hostPath"] == {"path": "/srv/m", "type": "Directory"}


def test_the_template_hash_follows_what_shapes_the_pods_only() -> None:
    base = build.template_hash(pool_spec())
    assert base == build.template_hash(pool_spec(minServers=3, capacity="2Gi", overcommit=0.5))
    assert base != build.template_hash(pool_spec(image="example.com/triton:25.01"))
    assert base != build.template_hash(pool_spec(resources={"cpu": "4"}))
    assert build.server_pod(POOL, pool_spec(), 0)["metadata"]["annotations"][build.ANNOTATION_TEMPLATE] == base


# ---- the placement planner --------------------------------------------------------------------------------

from dataclasses import replace  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402

from modelops.api.modelservice import Autoscaling  # noqa: E402
from modelops.autoscale.decision import ScaleMemory  # noqa: E402
from modelops.resources.plan import ModelLoad, ModelUnload  # noqa: E402
from modelops.resources.pool_plan import (CopyMemory, Demand, Ledger, PoolMemory, PoolObservation, Server,  # noqa: E402
                                          ledger_after, plan_pool)
from modelops.triton.pool import ModelToLoad, ResidentModel, ServerReport, load_config  # noqa: E402

Mi = 1 << 20
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def resident(name: str, version: int = 1, mib: int | None = 100, *, ready: bool = True, last: int = 0,
             count: int = 0, queue_ns: int = 0) -> ResidentModel:
    return ResidentModel(name, version, ready, last, count, queue_ns, None if mib is None else mib * Mi)


def server(index: int, *models: ResidentModel, ready: bool = True, ledger: Ledger | None = None,
           current: bool = True, failed: bool = False) -> Server:
    return Server(f"shared-s{index}", index, ready, current=current, failed=failed, ledger=ledger or Ledger(),
                  report=ServerReport(True, tuple(models), None) if ready else None)


SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [4]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [3]}]}


def demand(service: str, model: str | None = None, versions: tuple[int, ...] = (1,), *, copies: int = 1,
           max_copies: int | None = None, mib: int | None = 100, created: str = "2026-01-01T00:00:00Z",
           autoscaling: Autoscaling | None = None) -> Demand:
    return Demand(service, created, model or service, versions, copies, max_copies or copies,
                  None if mib is None else mib * Mi, autoscaling, {"backend": "python"}, SIGNATURE)


def observe(*servers: Server, demands: list[Demand], memory: PoolMemory | None = None, now: datetime = NOW,
            **spec: Any) -> PoolObservation:
    return PoolObservation(POOL, pool_spec(**({"minServers": 1, "maxServers": 2} | spec)), {}, now, list(servers),
                           demands, memory or PoolMemory())


def loads(plan: Any) -> list[tuple[str, str, int]]:
    return [(a.server, a.model.name, a.model.version) for a in plan.model_actions if isinstance(a, ModelLoad)]


def unloads(plan: Any) -> list[tuple[str, str, bool]]:
    return [(a.server, a.name, a.eviction) for a in plan.model_actions if isinstance(a, ModelUnload)]


def created(plan: Any) -> list[str]:
    return [o["metadata"]["name"] for o in plan.apply]


def test_a_new_pool_starts_its_minimum_of_servers_and_says_it_is_progressing() -> None:
    plan = plan_pool(observe(demands=[], minServers=2, maxServers=3))
    assert created(plan) == ["shared-s0", "shared-s1"] and plan.create_only == frozenset({"Pod"})
    assert plan.status["phase"] == "Progressing" and plan.status["serversReady"] == "0/2"
    assert plan.requeue_after == 1.0
    starting = plan_pool(observe(server(0, ready=False), server(1, ready=False), demands=[], minServers=2))
    assert starting.apply and starting.status["phase"] == "Progressing"
    assert starting.requeue_after == 10.0  # their pods' events wake the pool


def test_copies_go_on_the_fullest_server_that_has_room_one_load_per_server() -> None:
    plan = plan_pool(observe(server(0, resident("a", mib=800)), server(1, resident("b", mib=200)),
                             demands=[demand("a", mib=800), demand("b", mib=200), demand("c", mib=150),
                                      demand("d", mib=100)]))
    # c (150Mi) fits on s0 (800 used of 1024) best; d would too, but s0 is busy this pass: d goes to s1
    assert loads(plan) == [("shared-s0", "c", 1), ("shared-s1", "d", 1)]
    first = plan.model_actions[0]
    assert isinstance(first, ModelLoad) and first.model == ModelToLoad("c", 1, "python", load_config(
        "c", 1, {"backend": "python"}, 2.0, signature=SIGNATURE))  # the pool's CPU limit (2 cores) sizes the copy's config
    assert plan.status["phase"] == "Progressing" and plan.requeue_after == 1.0


def test_a_server_never_holds_more_than_capacity_times_overcommit() -> None:
    full = server(0, resident("a", mib=900))
    assert loads(plan_pool(observe(full, demands=[demand("a", mib=900), demand("b", mib=200)], maxServers=1))) == []
    roomy = plan_pool(observe(full, demands=[demand("a", mib=900), demand("b", mib=200)], maxServers=1,
                              overcommit=0.25))
    assert loads(roomy) == [("shared-s0", "b", 1)]  # 1100Mi <= 1024Mi x 1.25


def test_a_missing_copy_with_no_room_adds_a_server_up_to_max_then_is_unplaced() -> None:
    full = server(0, resident("a", mib=900))
    grow = plan_pool(observe(full, demands=[demand("a", mib=900), demand("b", mib=500)], maxServers=2))
    assert created(grow) == ["shared-s0", "shared-s1"] and loads(grow) == [] and not grow.status["unplaced"]
    stuck = plan_pool(observe(full, demands=[demand("a", mib=900), demand("b", mib=500)], maxServers=1))
    assert created(stuck) == ["shared-s0"]
    [unplaced] = stuck.status["unplaced"]
    assert (unplaced["modelService"], unplaced["reason"]) == ("b", "NoRoom") and "maxServers (1)" in unplaced["message"]
    assert stuck.status["phase"] == "Degraded"
    assert {c["type"]: c["status"] for c in stuck.status["conditions"]} == \
        {"Ready": "False", "Reconciling": "False", "Stalled": "True"}
    assert [(e.reason, e.type) for e in stuck.events] == [("NoRoom", "Warning")]


def test_a_model_larger_than_a_server_is_unplaced_and_its_model_service_told_once() -> None:
    big = Demand("big", "2026-01-01T00:00:00Z", "big", (1,), 1, 1, 2048 * Mi, None, {}, SIGNATURE,
                 {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService", "metadata": {"name": "big"}})
    plan = plan_pool(observe(server(0), demands=[big]))
    [unplaced] = plan.status["unplaced"]
    assert unplaced["reason"] == "TooLarge" and "needs 2Gi (declared)" in unplaced["message"]
    assert [n.event.reason for n in plan.notices] == ["TooLarge"] and loads(plan) == []
    again = plan_pool(PoolObservation(POOL, pool_spec(), plan.status, NOW, [server(0)], [big], PoolMemory()))
    assert again.notices == [] and again.events == []  # already said


def test_two_versions_of_one_model_never_share_a_server() -> None:
    plan = plan_pool(observe(server(0, resident("a", 1)), server(1),
                             demands=[demand("a", versions=(1, 2))], maxServers=2))
    assert loads(plan) == [("shared-s1", "a", 2)]
    alone = plan_pool(observe(server(0, resident("a", 1)), demands=[demand("a", versions=(1, 2))], maxServers=2))
    assert loads(alone) == [] and created(alone) == ["shared-s0", "shared-s1"]  # the canary needs its own server


def test_a_version_no_longer_served_is_unloaded_before_anything_else_on_its_server() -> None:
    servers = (server(0, resident("a", 1), resident("gone")), server(1, resident("a", 2)))
    demands = [demand("a", versions=(2,), copies=2), demand("b")]
    plan = plan_pool(observe(*servers, demands=demands))
    # no ModelService serves "gone": it goes at once; a:1 may still be in kube-proxy's rules: it leaves first
    assert unloads(plan) == [("shared-s0", "gone", False)]
    assert [m["leaving"] for m in plan.status["servers"][0]["models"] if m["name"] == "a"] == [True]
    assert loads(plan) == [("shared-s1", "b", 1)]  # s0 is busy
    later = plan_pool(observe(server(0, resident("a", 1)), server(1, resident("a", 2), resident("b")),
                              demands=demands, memory=plan.memory, now=NOW + timedelta(seconds=6)))
    assert unloads(later) == [("shared-s0", "a", False)]


def test_a_copy_that_failed_to_load_is_unloaded_and_not_retried_on_that_server() -> None:
    ledger = Ledger(failed={"a:1": "load failed: bad model"})
    plan = plan_pool(observe(server(0, resident("a", ready=False), ledger=ledger), server(1), demands=[demand("a")]))
    assert unloads(plan) == [("shared-s0", "a", False)] and loads(plan) == [("shared-s1", "a", 1)]
    everywhere = plan_pool(observe(server(0, ledger=ledger), demands=[demand("a")], maxServers=1))
    assert everywhere.status["unplaced"][0]["reason"] == "LoadFailed"
    assert "bad model" in everywhere.status["unplaced"][0]["message"]


def test_lru_copy_beyond_its_minimum_is_evicted_for_a_model_below_its_minimum() -> None:
    s0 = server(0, resident("hot", mib=400, last=9_000), resident("old", mib=400, last=1_000))
    s1 = server(1, resident("hot", mib=400, last=8_000), resident("old", mib=400, last=2_000))
    scaling = Autoscaling(min_replicas=1, max_replicas=2, target=1000)
    demands = [demand("hot", mib=400, copies=1, max_copies=2, autoscaling=scaling),
               demand("old", mib=400, copies=1, max_copies=2, autoscaling=scaling), demand("new", mib=400)]
    # both asked for 2 copies within the scale-down window: they keep 2 while idle for a while
    recent = CopyMemory(desired=2, scale=ScaleMemory(recommendations=((NOW, 2),)))
    two_each = PoolMemory({"hot:1": recent, "old:1": recent})
    plan = plan_pool(observe(s0, s1, demands=demands, maxServers=2, memory=two_each))
    # old's copy on s0 is the least recently used of all copies beyond their minimum: it leaves, then goes
    assert plan.model_actions == [] and plan.status["servers"][0]["models"][1]["leaving"] is True
    evict = plan_pool(observe(s0, s1, demands=demands, maxServers=2, memory=plan.memory,
                              now=NOW + timedelta(seconds=6)))
    assert unloads(evict) == [("shared-s0", "old", True)] and loads(evict) == []
    after = plan_pool(observe(server(0, resident("hot", mib=400, last=9_000)), s1, demands=demands, maxServers=2,
                              memory=evict.memory, now=NOW + timedelta(seconds=7)))
    assert loads(after) == [("shared-s0", "new", 1)]


def test_copies_at_their_minimum_are_never_evicted_to_place_something_new() -> None:
    s0 = server(0, resident("a", mib=500, last=1), resident("b", mib=500, last=2))
    plan = plan_pool(observe(s0, demands=[demand("a", mib=500), demand("b", mib=500), demand("c", mib=500)],
                             maxServers=1))
    assert plan.model_actions == [] and plan.status["unplaced"][0]["modelService"] == "c"


def test_surplus_copies_go_least_recently_used_first() -> None:
    s0, s1 = server(0, resident("a", last=5)), server(1, resident("a", last=9))
    plan = plan_pool(observe(s0, s1, demands=[demand("a", copies=1)]))
    assert unloads(plan) == [] and plan.requeue_after == 1.0
    later = plan_pool(observe(s0, s1, demands=[demand("a", copies=1)], memory=plan.memory,
                              now=NOW + timedelta(seconds=6)))
    assert unloads(later) == [("shared-s0", "a", False)]


def test_a_copy_in_its_services_endpoints_is_never_unloaded_until_it_left_them() -> None:
    """The pool marks it leaving (the ModelService drops it from its EndpointSlice), then waits the grace."""
    s0, s1 = server(0, resident("a", last=5)), server(1, resident("a", last=9))
    routed = replace(demand("a", copies=1), routed=("shared-s0", "shared-s1"), routed_version=1)
    plan = plan_pool(observe(s0, s1, demands=[routed]))
    for seconds in (6, 60):  # however long: still listed, never unloaded
        plan = plan_pool(observe(s0, s1, demands=[routed], memory=plan.memory, now=NOW + timedelta(seconds=seconds)))
        assert unloads(plan) == [] and plan.status["servers"][0]["models"][0]["leaving"] is True
    left = replace(routed, routed=("shared-s1",))
    plan = plan_pool(observe(s0, s1, demands=[left], memory=plan.memory, now=NOW + timedelta(seconds=61)))
    assert unloads(plan) == []  # out of the slice just now: kube-proxy may not know yet
    plan = plan_pool(observe(s0, s1, demands=[left], memory=plan.memory, now=NOW + timedelta(seconds=67)))
    assert unloads(plan) == [("shared-s0", "a", False)]
    # written after the unload ran: the copy stays out of the endpoints (leaving), not routed to again
    assert plan.status["servers"][0]["models"][0]["leaving"] is True


def test_a_version_served_without_a_known_signature_keeps_its_copies_and_loads_none() -> None:
    """Its followed TrainingJob is gone or training again: what serves stays, nothing new can be configured."""
    s0, s1 = server(0, resident("a")), server(1)
    unknown = replace(demand("a", copies=2), signature={})
    plan = plan_pool(observe(s0, s1, demands=[unknown]))
    assert plan.model_actions == [] and plan.status["unplaced"] == []
    assert [m["name"] for m in plan.status["servers"][0]["models"]] == ["a"]


def test_a_server_whose_unloads_leak_is_drained_then_replaced() -> None:
    leaky = server(0, resident("a", mib=400), ledger=Ledger(leaks=1))
    plan = plan_pool(observe(leaky, server(1), demands=[demand("a", mib=400)], maxServers=2))
    assert loads(plan) == [("shared-s1", "a", 1)]  # its copy is placed elsewhere first
    assert plan.delete == [] and "shared-s0" not in created(plan)
    assert plan.status["servers"][0]["draining"] is True
    assert [e.reason for e in plan.events] == ["Draining"]
    placed = server(1, resident("a", mib=400))
    moved = plan_pool(observe(leaky, placed, demands=[demand("a", mib=400)], maxServers=2))
    # a is ready elsewhere: its copy on s0 leaves the Service first, and s0 goes once no Service routes to it
    assert moved.delete == [] and moved.status["servers"][0]["models"][0]["leaving"] is True
    gone = plan_pool(observe(leaky, placed, demands=[demand("a", mib=400)], maxServers=2, memory=moved.memory,
                             now=NOW + timedelta(seconds=6)))
    assert [d.name for d in gone.delete] == ["shared-s0"] and gone.model_actions == []


def test_leaks_are_judged_from_what_an_unload_gave_back() -> None:
    unload = ModelUnload("shared-s0", "a", 1, expected_bytes=400 * Mi, eviction=True)
    assert ledger_after(Ledger(), unload, 390 * Mi) == Ledger(unloads=1, evictions=1)
    assert ledger_after(Ledger(), unload, 1 * Mi).leaks == 1
    assert ledger_after(Ledger(), unload, None).leaks == 0  # not measured: not judged
    load = ModelLoad("shared-s0", ModelToLoad("a", 1, "python", {}))
    assert ledger_after(Ledger(), load, 123).sizes == {"a:1": 123}
    assert ledger_after(Ledger(), load, None, "no such model").failed == {"a:1": "no such model"}
    assert Ledger.parse(ledger_after(Ledger(loads=2), load, 5).wire()) == Ledger(sizes={"a:1": 5}, loads=3)
    assert Ledger.parse("not json") == Ledger()


def test_measured_sizes_replace_the_declared_estimate() -> None:
    ledger = Ledger(sizes={"a:1": 900 * Mi})
    plan = plan_pool(observe(server(0, ledger=ledger), server(1, resident("x", mib=300)),
                             demands=[demand("a", mib=100), demand("x", mib=300)]))
    # declared 100Mi would fit beside x on s1; measured 900Mi does not
    assert loads(plan) == [("shared-s0", "a", 1)]


def test_an_outdated_server_is_replaced_and_an_empty_one_beyond_the_minimum_removed() -> None:
    plan = plan_pool(observe(server(0, current=False), server(1), demands=[], minServers=1))
    assert [d.name for d in plan.delete] == ["shared-s0"] and created(plan) == ["shared-s1"]
    idle = plan_pool(observe(server(0, resident("a")), server(1), demands=[demand("a")], minServers=1))
    assert [d.name for d in idle.delete] == ["shared-s1"]
    unready = plan_pool(observe(server(0), server(1), server(2, ready=False), demands=[], minServers=1, maxServers=3))
    assert sorted(d.name for d in unready.delete) == ["shared-s1", "shared-s2"]  # the one not serving yet first
    floor = plan_pool(observe(server(0, resident("a")), server(1), demands=[demand("a")], minServers=2))
    assert floor.delete == [] and floor.status["phase"] == "Ready" and floor.requeue_after == 10.0


def test_a_failed_server_pod_is_deleted_and_built_again() -> None:
    plan = plan_pool(observe(server(0, failed=True, ready=False), demands=[demand("a")]))
    assert [d.name for d in plan.delete] == ["shared-s0"]
    assert created(plan) == ["shared-s1"]  # s0's name is free once it is gone


def test_the_second_model_service_with_a_taken_model_name_is_refused() -> None:
    first = demand("first", "digits", created="2026-01-01T00:00:00Z")
    second = demand("second", "digits", versions=(7,), created="2026-01-02T00:00:00Z")
    plan = plan_pool(observe(server(0), demands=[second, first]))
    assert loads(plan) == [("shared-s0", "digits", 1)]
    [refused] = plan.status["unplaced"]
    assert (refused["modelService"], refused["reason"]) == ("second", "ModelNameTaken")
    assert "ModelService first" in refused["message"]


def test_copies_follow_load_between_min_and_max() -> None:
    scaling = Autoscaling(min_replicas=1, max_replicas=3, metric="queueTimeMicroseconds", target=1000)
    hot = demand("hot", copies=1, max_copies=3, autoscaling=scaling)
    first = plan_pool(observe(server(0, resident("hot", count=100, queue_ns=0)), server(1), demands=[hot]))
    assert loads(first) == []  # no earlier sample: held
    # 1000 requests queued 5 ms each since then: 5x the target -> as many copies as allowed at once
    busy = [server(0, resident("hot", count=1100, queue_ns=5_000_000_000)), server(1)]
    second = plan_pool(observe(*busy, demands=[hot], memory=first.memory, now=NOW + timedelta(seconds=15)))
    assert second.memory.copies["hot:1"].desired == 3
    assert loads(second) == [("shared-s1", "hot", 1)]  # one copy per server: the third fits on no server...
    assert created(second) == ["shared-s0", "shared-s1"]  # ...and the pool is at maxServers: it waits, unrefused
    assert second.status["unplaced"] == []
    grown = plan_pool(observe(*busy, demands=[hot], memory=first.memory, now=NOW + timedelta(seconds=15),
                              maxServers=3))
    assert created(grown) == ["shared-s0", "shared-s1", "shared-s2"]


def test_a_canary_gets_the_copies_its_rollout_step_asks_within_its_maximum() -> None:
    """status.canary.replicas of a pooled ModelService: the endpoints its step's weight takes (pooled_service_plan)."""
    rolling = replace(demand("churn", versions=(3, 4), copies=1, max_copies=2), canary_version=4, canary_copies=3)
    plan = plan_pool(observe(server(0, resident("churn", 3)), server(1), server(2), server(3),
                             demands=[rolling], maxServers=4))
    assert sorted(loads(plan)) == [("shared-s1", "churn", 4), ("shared-s2", "churn", 4)]  # 2: its maximum


def test_with_the_prometheus_operator_a_pod_monitor_scrapes_the_pools_servers() -> None:
    plan = plan_pool(replace(observe(server(0), demands=[]), pod_monitor=True))
    [monitor] = [o for o in plan.apply if o["kind"] == "PodMonitor"]
    assert monitor["spec"]["selector"] == {"matchLabels": {"modelops.dev/model-pool": "shared"}}
    assert monitor["spec"]["podTargetLabels"] == ["modelops.dev/model-pool"]
    assert not [o for o in plan_pool(observe(server(0), demands=[])).apply if o["kind"] == "PodMonitor"]


def test_at_min_zero_a_copy_comes_on_demand_and_goes_after_the_idle_period_the_pool_staying_up() -> None:
    """autoscaling.minReplicas 0: no copy until the activator holds a request; then one at once; unloaded
    (leaving first, out of the Service's endpoints) once Triton's last inference is scaleToZeroAfterSeconds old."""
    scaling = Autoscaling(min_replicas=0, max_replicas=2, target=1000, scale_to_zero_after_seconds=60)
    idle = demand("a", copies=0, max_copies=2, autoscaling=scaling)
    quiet = plan_pool(observe(server(0), demands=[idle]))
    assert loads(quiet) == [] and quiet.memory.copies["a:1"].desired == 0
    asked = plan_pool(observe(server(0), demands=[replace(idle, held=4)], memory=quiet.memory))
    assert loads(asked) == [("shared-s0", "a", 1)]

    # loaded, answered a request at NOW + 10 s (Triton's last_inference), then nothing
    last_ms = int((NOW + timedelta(seconds=10)).timestamp() * 1000)
    loaded = server(0, resident("a", last=last_ms, count=1))
    busy = plan_pool(observe(loaded, demands=[idle], memory=asked.memory, now=NOW + timedelta(seconds=40)))
    assert busy.model_actions == [] and busy.memory.copies["a:1"].desired == 1
    gone = plan_pool(observe(loaded, demands=[idle], memory=busy.memory, now=NOW + timedelta(seconds=71)))
    assert gone.memory.copies["a:1"].desired == 0
    assert gone.status["servers"][0]["models"][0]["leaving"] is True  # out of the endpoints first
    unloaded = plan_pool(observe(loaded, demands=[idle], memory=gone.memory, now=NOW + timedelta(seconds=77)))
    assert unloads(unloaded) == [("shared-s0", "a", False)]
    assert [s["name"] for s in unloaded.status["servers"]] == ["shared-s0"]  # the pool stays
