"""A pooled ModelService's rollout (resources/pooled_service_plan.py, pure): weighted canary steps realised as
shares of its EndpointSlice, analysis per model version, the evaluation gate scored on a pool server holding
the candidate, promote and rollback by the dedicated path's decision code; the rollout recorded on the
EndpointSlice so the next pass (or a restarted operator) continues it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelops.api.modelservice import ModelServiceSpec
from modelops.controllers.modelservice import sample_pooled_analysis
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import AnalysisSample
from modelops.resources.pooled_service_plan import (ANNOTATION_ROLLOUT, PooledObservation, decode_rollout,
                                                    endpoints_for, plan_pooled_service)
from modelops.rollout.analysis import CanarySample
from modelops.rollout.canary import ANNOTATION as ROLLOUT_ANNOTATION, RolloutState

SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [4]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [2]}]}
META = build.ServiceMeta("churn", "ml", "uid-churn", 2)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
STEPS = [{"weight": 20, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}]
PASSING = AnalysisSample(CanarySample(200, 0, 8.0), CanarySample(800, 0, 8.0))
SERVING = {"conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "",
                           "lastTransitionTime": "2026-06-01T11:00:00Z"}]}
"""The status of a ModelService already serving (its Serving Event is in the past)."""
FAILING = AnalysisSample(CanarySample(150, 50, 8.0), CanarySample(800, 0, 8.0))


def spec(gate: bool = False, replicas: int = 5, **rollout: Any) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate({
        "pool": "shared", "model": {"name": "churn", "version": 4, "signature": SIGNATURE},
        "repository": {"hostPath": {"path": "/srv/models"}}, "replicas": replicas,
        "rollout": {"steps": STEPS, "gates": {"evaluation": {"enabled": gate}}, **rollout}})


def pool(stable: int, canary: int = 0, *, leaving: int = 0) -> dict[str, Any]:
    """Servers s0.. hold version 3 (`stable` of them), then version 4 (`canary`); the last `leaving` stable
    copies are about to be unloaded."""
    servers = [{"name": f"shared-s{i}", "models": [{"name": "churn", "version": 3, "ready": True,
                                                    "leaving": i >= stable - leaving}]} for i in range(stable)]
    servers += [{"name": f"shared-s{stable + i}", "models": [{"name": "churn", "version": 4, "ready": True}]}
                for i in range(canary)]
    return {"metadata": {"name": "shared", "namespace": "ml", "uid": "uid-shared"}, "status": {"servers": servers}}


def pods(count: int) -> list[dict[str, Any]]:
    return [{"metadata": {"name": f"shared-s{i}"}, "status": {"phase": "Running", "podIP": f"10.0.0.{i}"}}
            for i in range(count)]


def rolling(step: int = 0, started: datetime = NOW, **fields: Any) -> dict[str, Any]:
    """The EndpointSlice's record of a rollout of version 4 over version 3."""
    return {"stable": "churn-v3", "stableVersion": 3, "canary": "churn-v4", "canaryVersion": 4, "step": step,
            "stepStartedAt": started.isoformat().replace("+00:00", "Z"),
            "startedAt": started.isoformat().replace("+00:00", "Z"), **fields}


def observe(s: ModelServiceSpec, the_pool: dict[str, Any], recorded: dict[str, Any], now: datetime = NOW,
            **fields: Any) -> PooledObservation:
    servers = len(the_pool["status"]["servers"])
    return PooledObservation(meta=META, spec=s, previous=fields.pop("previous", SERVING), now=now,
                             target=build.Target(4, SIGNATURE, {"testAccuracy": 0.9}), waiting="", pool=the_pool,
                             servers=pods(servers), owned=[], recorded=recorded, **fields)


def listed(plan: Any) -> list[str]:
    endpoint_slice = next(o for o in plan.apply if o["kind"] == "EndpointSlice")
    return [e["targetRef"]["name"] for e in endpoint_slice["endpoints"]]


def record(plan: Any) -> dict[str, Any]:
    endpoint_slice = next(o for o in plan.apply if o["kind"] == "EndpointSlice")
    return decode_rollout(endpoint_slice["metadata"]["annotations"][ANNOTATION_ROLLOUT])


@pytest.mark.parametrize(("stable", "canary", "weight", "expected"), [
    (5, 1, 20, (4, 1, 1)),    # the example: weight 20 over 5 endpoints
    (5, 2, 50, (3, 2, 2)),    # split_replicas(5, 50): stable keeps 3, the canary takes 2
    (5, 1, 50, (4, 1, 2)),    # a canary copy still loading: stable keeps its endpoint meanwhile
    (5, 0, 20, (5, 0, 1)),    # none ready yet: all stable
    (1, 1, 20, (1, 1, 1)),    # one copy each: at least one of each while both serve
    (3, 3, 100, (0, 3, 3)),   # weight 100 moves every endpoint to the canary
    (4, 0, 0, (4, 0, 0)),     # no rollout
])
def test_a_weight_is_a_share_of_the_endpoints(stable: int, canary: int, weight: int,
                                              expected: tuple[int, int, int]) -> None:
    stable_servers = [f"s{i}" for i in range(stable)]
    canary_servers = [f"c{i}" for i in range(canary)]
    kept, taken, wanted = endpoints_for(stable_servers, canary_servers, weight)
    assert (len(kept), len(taken), wanted) == expected


def test_a_new_version_starts_a_canary_that_asks_the_pool_for_its_copies() -> None:
    plan = plan_pooled_service(observe(spec(), pool(5), {"stable": "churn-v3", "stableVersion": 3}))
    assert listed(plan) == [f"shared-s{i}" for i in range(5)]  # nothing of version 4 is ready yet
    canary = plan.status["canary"]
    assert (canary["version"], canary["weight"], canary["replicas"], canary["readyReplicas"]) == (4, 20, 1, 0)
    assert record(plan)["canary"] == "churn-v4" and record(plan)["step"] == 0
    assert [e.reason for e in plan.events] == ["CanaryStarted"]
    assert plan.status["modelVersion"] == 3 and plan.status["phase"] == "Progressing"


def test_step_one_lists_one_canary_copy_among_five_then_analysis_moves_it_to_fifty_percent() -> None:
    s = spec()
    plan = plan_pooled_service(observe(s, pool(5, 1), rolling(), NOW + timedelta(seconds=10)))
    assert listed(plan) == ["shared-s0", "shared-s1", "shared-s2", "shared-s3", "shared-s5"]  # 4 + 1
    assert plan.status["pool"]["canaryServers"] == ["shared-s5"]
    assert "pausing" in next(c["message"] for c in plan.status["conditions"] if c["type"] == "Progressing")

    later = NOW + timedelta(seconds=61)
    waiting = plan_pooled_service(observe(s, pool(5, 1), rolling(), later))  # the controller samples when due
    assert "analysing" in next(c["message"] for c in waiting.status["conditions"] if c["type"] == "Progressing")
    assert waiting.status["canary"]["step"] == 0 and not waiting.events
    stepped = plan_pooled_service(observe(s, pool(5, 1), rolling(), later, analysis=PASSING))
    assert [e.reason for e in stepped.events] == ["CanaryStepped"]
    assert stepped.status["canary"]["weight"] == 50 and stepped.status["canary"]["replicas"] == 2
    assert stepped.status["lastAnalysis"]["verdict"] == "Passed" and stepped.status["lastAnalysis"]["requests"] == 200
    assert record(stepped)["step"] == 1
    # the pool has placed one canary copy so far: stable keeps four endpoints, the step waits for the second
    assert listed(stepped) == ["shared-s0", "shared-s1", "shared-s2", "shared-s3", "shared-s5"]
    two = plan_pooled_service(observe(s, pool(5, 2), record(stepped), later + timedelta(seconds=5)))
    assert listed(two) == ["shared-s0", "shared-s1", "shared-s2", "shared-s5", "shared-s6"]  # 3 + 2


def test_the_last_step_promotes_and_the_service_routes_to_the_new_version_only() -> None:
    s = spec()
    later = NOW + timedelta(seconds=61)
    plan = plan_pooled_service(observe(s, pool(5, 2), rolling(step=1), later, analysis=PASSING))
    assert [e.reason for e in plan.events] == ["Promoted"]
    assert listed(plan) == ["shared-s5", "shared-s6"]
    assert plan.status["modelVersion"] == 4 and "canary" not in plan.status
    assert record(plan) == {"stable": "churn-v4", "stableVersion": 4, "step": 0,
                            "lineages": {"churn-v4": {"testAccuracy": 0.9}}}
    assert plan.status["stable"]["lineage"] == {"testAccuracy": 0.9}


def test_a_failed_analysis_rolls_back_and_the_rejected_version_is_not_retried() -> None:
    s = spec()
    later = NOW + timedelta(seconds=61)
    plan = plan_pooled_service(observe(s, pool(5, 1), rolling(), later, analysis=FAILING))
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "RolledBack")]
    assert listed(plan) == [f"shared-s{i}" for i in range(5)]
    assert "canary" not in plan.status and plan.status["rejectedRevision"] == "churn-v4"
    assert plan.status["phase"] == "Degraded"
    assert plan.status["lastAnalysis"]["verdict"] == "Failed"
    rolled_back = next(c for c in plan.status["conditions"] if c["type"] == "RolledBack")
    assert rolled_back["status"] == "True" and "error rate" in rolled_back["message"]
    assert record(plan)["rejected"] == "churn-v4" and "canary" not in record(plan)
    # the next pass: the spec still asks for version 4, which stays rejected (the pool unloads its copies)
    again = plan_pooled_service(observe(s, pool(5, 1), record(plan), later + timedelta(seconds=5),
                                        previous=plan.status))
    assert listed(again) == [f"shared-s{i}" for i in range(5)] and "canary" not in again.status
    assert not again.events


def test_a_person_can_promote_or_abort_and_the_annotation_is_removed() -> None:
    s = spec()
    promoted = plan_pooled_service(observe(s, pool(5, 1), rolling(), NOW + timedelta(seconds=5), action="promote"))
    assert promoted.status["modelVersion"] == 4 and promoted.own_patch == \
        {"metadata": {"annotations": {ROLLOUT_ANNOTATION: None}}}
    aborted = plan_pooled_service(observe(s, pool(5, 1), rolling(), NOW + timedelta(seconds=5), action="abort"))
    assert aborted.status["rejectedRevision"] == "churn-v4" and listed(aborted) == [f"shared-s{i}" for i in range(5)]


def test_a_canary_that_gets_no_ready_copy_before_its_deadline_is_rolled_back() -> None:
    s = spec(progressDeadlineSeconds=120)
    plan = plan_pooled_service(observe(s, pool(5), rolling(), NOW + timedelta(seconds=121)))
    assert plan.status["rejectedRevision"] == "churn-v4"
    assert "progressDeadlineSeconds" in next(c["message"] for c in plan.status["conditions"]
                                             if c["type"] == "RolledBack")


def test_a_canary_the_pool_cannot_load_is_rolled_back_at_once() -> None:
    the_pool = pool(5)
    the_pool["status"]["unplaced"] = [{"modelService": "churn", "model": "churn", "version": 4,
                                       "reason": "LoadFailed", "message": "Triton: failed to load 'churn'"}]
    plan = plan_pooled_service(observe(spec(), the_pool, rolling(), NOW + timedelta(seconds=5)))
    assert plan.status["rejectedRevision"] == "churn-v4"
    assert plan.status["conditions"][0]["type"] == "Ready" and plan.status["conditions"][0]["status"] == "True"


def finished(pod: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    return {**pod, "status": {"phase": "Succeeded", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 0, "message": json.dumps(report)}}}]}}


def sets(candidate: float, stable: float) -> dict[str, Any]:
    return {"sets": [{"name": "candidate", "source": "version 4", "accuracy": candidate, "stableAccuracy": stable,
                      "samples": 360, "sha256": "a" * 64}], "lineage": {"image": "trainer:1"}}


def test_the_gate_scores_a_pool_server_holding_the_candidate_before_it_takes_traffic() -> None:
    s = spec(gate=True)
    started = plan_pooled_service(observe(s, pool(5), {"stable": "churn-v3", "stableVersion": 3}))
    assert record(started)["evaluations"] == {"churn-v4": {"verdict": "Pending"}}
    # its copy is loaded and ready, but held out of the Service while the gate has not passed
    held = plan_pooled_service(observe(s, pool(5, 1), record(started), NOW + timedelta(seconds=2)))
    assert listed(held) == [f"shared-s{i}" for i in range(5)]
    assert held.status["canary"]["readyReplicas"] == 0
    [pod] = [o for o in held.apply if o["kind"] == "Pod"]
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("--candidate") + 1] == "10.0.0.5:8000"  # the server holding version 4
    assert args[args.index("--stable") + 1] == "10.0.0.0:8000" and args[args.index("--version") + 1] == "4"
    assert pod["metadata"]["labels"][build.LABEL_EVALUATES] == "churn-v4"

    passed = plan_pooled_service(observe(s, pool(5, 1), record(held), NOW + timedelta(seconds=30),
                                         evaluation_pods=[finished(pod, sets(0.95, 0.94))]))
    assert record(passed)["evaluations"]["churn-v4"]["verdict"] == "Passed"
    assert ("Normal", "EvaluationPassed") in [(e.type, e.reason) for e in passed.events]
    assert passed.status["lastEvaluation"]["version"] == 4 and passed.status["canary"]["accuracy"] == 0.95
    assert [d.name for d in passed.delete] == [pod["metadata"]["name"]]
    assert listed(passed) == ["shared-s0", "shared-s1", "shared-s2", "shared-s3", "shared-s5"]


def test_a_candidate_that_fails_the_gate_never_takes_traffic_and_is_rolled_back() -> None:
    s = spec(gate=True)
    pending = rolling(evaluations={"churn-v4": {"verdict": "Pending"}})
    held = plan_pooled_service(observe(s, pool(5, 1), pending, NOW + timedelta(seconds=2)))
    [pod] = [o for o in held.apply if o["kind"] == "Pod"]
    failed = plan_pooled_service(observe(s, pool(5, 1), pending, NOW + timedelta(seconds=30),
                                         evaluation_pods=[finished(pod, sets(0.55, 0.94))]))
    assert ("Warning", "EvaluationFailed") in [(e.type, e.reason) for e in failed.events]
    assert failed.status["rejectedRevision"] == "churn-v4"
    assert listed(failed) == [f"shared-s{i}" for i in range(5)]


def test_a_leaving_copy_is_out_of_the_endpoints_even_during_a_rollout() -> None:
    plan = plan_pooled_service(observe(spec(), pool(5, 1, leaving=1), rolling(), NOW + timedelta(seconds=10)))
    assert "shared-s4" not in listed(plan)
    assert listed(plan) == ["shared-s0", "shared-s1", "shared-s2", "shared-s5"]  # 4 stable ready: 3 + 1


def test_a_pool_model_service_without_a_recorded_rollout_follows_its_status() -> None:
    """Pooled before rollouts were recorded: the status names the stable version, which is not gated."""
    previous = {"stable": {"name": "churn-v4", "version": 4}}
    plan = plan_pooled_service(observe(spec(gate=True), pool(0, 2), {}, previous=previous))
    assert listed(plan) == ["shared-s0", "shared-s1"] and plan.status["phase"] == "Ready"
    assert record(plan) == {"stable": "churn-v4", "stableVersion": 4, "step": 0,
                            "lineages": {"churn-v4": {"testAccuracy": 0.9}}}


class Answers:
    """Prometheus' side of the query API: an answer per selected model version (what a real Prometheus
    returns for these queries is tested in e2e; here, which series the analysis selects)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def scalar(self, promql: str) -> float | None:
        self.queries.append(promql)
        return 10.0 if 'version="4"' in promql else 90.0


def test_pooled_analysis_selects_the_model_the_version_and_the_pool() -> None:
    prometheus = Answers()
    state = RolloutState(stable="churn-v3", stable_version=3, canary="churn-v4", canary_version=4)
    sample = sample_pooled_analysis(prometheus, "churn", "shared", state, 60)  # type: ignore[arg-type]
    assert sample.canary.success == 10.0 and sample.stable.success == 90.0
    assert len(prometheus.queries) == 6
    for query in prometheus.queries:
        assert 'model="churn"' in query and 'modelops_dev_model_pool="shared"' in query
        assert 'version="3"' in query or 'version="4"' in query


def test_a_first_version_is_placed_then_waits_for_its_gate_before_it_serves() -> None:
    s = spec(gate=True)
    placing = plan_pooled_service(observe(s, pool(0), {}, previous={}))
    assert placing.status["conditions"][0]["reason"] == "Placing" and listed(placing) == []
    assert record(placing)["evaluations"] == {"churn-v4": {"verdict": "Pending"}}
    loaded = plan_pooled_service(observe(s, pool(0, 1), record(placing), previous=placing.status))
    assert loaded.status["conditions"][0]["reason"] == "EvaluationPending" and listed(loaded) == []
    [pod] = [o for o in loaded.apply if o["kind"] == "Pod"]
    assert "--stable" not in pod["spec"]["containers"][0]["args"]  # the first version: judged on its own


def test_at_zero_copies_the_service_goes_to_the_activator_which_asks_every_pool_server() -> None:
    """autoscaling.minReplicas 0: with no ready copy its slice lists the activator pods; the activator-target
    slice lists the running pool servers (the one that loads the copy answers ready first); back to the copy
    once it is ready."""
    from modelops.activator.routing import backend_from_slice

    at_zero = ModelServiceSpec.model_validate({**spec().wire(), "autoscaling": {"minReplicas": 0, "target": 1000}})
    stable = {"stable": "churn-v4", "stableVersion": 4}
    empty = {"metadata": {"name": "shared", "namespace": "ml", "uid": "uid-shared"},
             "status": {"servers": [{"name": "shared-s0", "models": []}, {"name": "shared-s1", "models": []}]}}
    plan = plan_pooled_service(observe(at_zero, empty, stable, activators=("10.9.0.2", "10.9.0.1"), held=2))
    slices = {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "EndpointSlice"}
    assert [e["addresses"] for e in slices["churn"]["endpoints"]] == [["10.9.0.1"], ["10.9.0.2"]]
    backend = backend_from_slice(slices["churn-activator-targets"])
    assert backend is not None and (backend.model, backend.version) == ("churn", 4)
    assert [t.host for t in backend.targets] == ["10.0.0.0", "10.0.0.1"]
    assert plan.status["coldStart"] == {"held": 2}

    loaded = {**empty, "status": {"servers": [{"name": "shared-s0", "models": [
        {"name": "churn", "version": 4, "ready": True}]}, {"name": "shared-s1", "models": []}]}}
    plan = plan_pooled_service(observe(at_zero, loaded, stable, activators=("10.9.0.1",)))
    assert listed(plan) == ["shared-s0"] and "coldStart" not in plan.status
