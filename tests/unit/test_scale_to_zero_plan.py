"""Scale to zero for a dedicated ModelService (autoscaling.minReplicas 0), one pure pass at a time: when the
last replica goes, demand bringing it back at once, the Service's slice flipping between the pods and the
activator, the activator-target slice, and status.coldStart. The demand reader's pure parts too."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from modelops.activator import routing as activator
from modelops.api.modelservice import ModelServiceSpec
from modelops.clock import rfc3339
from modelops.engine.demand import admin_port, merge, ready_addresses, woken
from modelops.resources import modelservice as build
from modelops.resources import scale_to_zero as zero
from modelops.resources.modelservice_plan import (ANNOTATION_ROLE, MetricReading, ObservedRevision,
                                                  ServiceMemory, ServiceObservation, plan_service)
from modelops.resources.pods import Wait
from modelops.rollout.canary import RolloutState

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
MS = build.ServiceMeta("digits", "ml", "uid-9", 2)
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
ACTIVATORS = ("10.0.9.1", "10.0.9.2")
TARGET = build.Target(3, SIGNATURE)


def spec(**scaling: Any) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate({
        "model": {"name": "digits", "version": 3, "signature": SIGNATURE},
        "repository": {"hostPath": {"path": "/srv/models"}},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 3, "metric": "queueTimeMicroseconds", "target": 1000,
                        "scaleToZeroAfterSeconds": 60, **scaling}})


REVISION = build.revision_name(MS, spec(), TARGET)


def pod(name: str, *, ready: bool) -> dict[str, Any]:
    conditions = [{"type": build.MODEL_READY_GATE, "status": "True" if ready else "False"},
                  {"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": {"name": name, "namespace": "ml",
                         "labels": {build.LABEL_SERVICE: "digits", build.LABEL_REVISION: REVISION}},
            "status": {"phase": "Running", "podIP": f"10.1.0.{len(name)}", "conditions": conditions}}


def seen(replicas: int, ready: int, *, pods: list[dict[str, Any]] | None = None, now: datetime = NOW,
         previous: dict[str, Any] | None = None, **kw: Any) -> ServiceObservation:
    revision = ObservedRevision(REVISION, 3, replicas, ready, annotations={ANNOTATION_ROLE: "stable"},
                                wait=kw.pop("wait", None), wait_pod=kw.pop("wait_pod", ""),
                                waiting=kw.pop("waiting", 0))
    base = {"autoscaling": {"metric": "queueTimeMicroseconds", "target": 1000, "desiredReplicas": replicas,
                            "lastScaleTime": rfc3339(NOW - timedelta(hours=1))}}
    return ServiceObservation(
        meta=MS, spec=kw.pop("spec", spec()), previous=base if previous is None else previous, now=now,
        target=TARGET, waiting="", desired=REVISION, observed={REVISION: revision},
        state=RolloutState(stable=REVISION, stable_version=3), serving_pods=pods or [],
        activators=kw.pop("activators", ACTIVATORS), **kw)


def replicas_written(plan: Any) -> int:
    return next(o for o in plan.apply if o["kind"] == "Deployment")["spec"]["replicas"]


def slices(plan: Any) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in plan.apply if o["kind"] == "EndpointSlice"}


def addresses(endpoint_slice: dict[str, Any]) -> list[str]:
    return [a for e in endpoint_slice["endpoints"] for a in e["addresses"]]


def test_idle_for_the_whole_period_routes_to_the_activator_first_then_drops_the_last_replica() -> None:
    serving = [pod("digits-a", ready=True)]
    plan = plan_service(seen(1, 1, pods=serving, metric=MetricReading(0.0), requests=MetricReading(0.0)))
    assert plan.status["autoscaling"]["desiredReplicas"] == 0
    assert "no request for 60s" in plan.status["autoscaling"]["reason"]
    service = next(o for o in plan.apply if o["kind"] == "Service")
    assert service["spec"]["selector"] == MS.selector  # the EndpointSlice controller keeps listing ready pods
    routed = slices(plan)["digits-activator"]  # a second slice of the same Service: kube-proxy merges them
    assert addresses(routed) == list(ACTIVATORS) and {p["name"] for p in routed["ports"]} == {"http", "grpc"}
    assert routed["metadata"]["labels"]["kubernetes.io/service-name"] == "digits"
    assert replicas_written(plan) == 1 and plan.requeue_after == zero.DRAIN_SECONDS  # kube-proxy's lag first

    later = NOW + timedelta(seconds=6)
    again = plan_service(seen(1, 1, pods=serving, now=later, previous=plan.status, memory=plan.memory))
    assert replicas_written(again) == 0 and addresses(slices(again)["digits-activator"]) == list(ACTIVATORS)
    left = plan_service(seen(0, 0, now=later, previous=again.status, memory=plan.memory,
                             slices=("digits", "digits-activator", "digits-activator-targets")))
    assert [(d.kind, d.name) for d in left.delete] == [("EndpointSlice", "digits")]  # (from serving in a pool)
    ready = next(c for c in left.status["conditions"] if c["type"] == "Ready")
    assert (left.status["phase"], ready["status"], ready["reason"]) == ("Ready", "True", "ScaledToZero")


def test_missing_metrics_recent_scaling_or_no_activator_never_scale_to_zero() -> None:
    serving = [pod("digits-a", ready=True)]
    for case, why in [(dict(requests=MetricReading(None)), ""), (dict(requests=MetricReading(2.0)), ""),
                      (dict(requests=MetricReading(0.0), activators=()), "no activator endpoints"),
                      (dict(requests=MetricReading(0.0), previous={"autoscaling": {
                          "metric": "queueTimeMicroseconds", "target": 1000, "desiredReplicas": 1,
                          "lastScaleTime": rfc3339(NOW - timedelta(seconds=30))}}), "")]:
        plan = plan_service(seen(1, 1, pods=serving, metric=MetricReading(0.0), **case))  # type: ignore[arg-type]
        assert plan.status["autoscaling"]["desiredReplicas"] == 1, case
        assert why in plan.status["autoscaling"]["reason"]
        assert replicas_written(plan) == 1


def test_demand_at_zero_scales_up_at_once_and_the_activator_learns_why_the_pod_waits() -> None:
    at_zero = ServiceMemory(evaluated_at=NOW - timedelta(seconds=2), desired=0,
                            status={"metric": "queueTimeMicroseconds", "target": 1000, "desiredReplicas": 0})
    quiet = plan_service(seen(0, 0, memory=at_zero))  # not due, nothing held: stays at zero
    assert replicas_written(quiet) == 0 and quiet.memory is None

    held = zero.Demand(3, (NOW - timedelta(seconds=1)).timestamp())
    plan = plan_service(seen(0, 0, memory=at_zero, demand=held))  # not due for the metric: demand does not wait
    assert replicas_written(plan) == 1 and plan.memory.desired == 1
    assert plan.status["autoscaling"]["reason"] == "3 requests held by the activator"
    cold = plan.status["coldStart"]
    assert cold["held"] == 3 and cold["wokenAt"] == rfc3339(NOW) and cold["heldSince"] == rfc3339(NOW - timedelta(seconds=1))

    # the pod is scheduled nowhere: the Service still goes to the activator, which is told why
    stuck = Wait("Unschedulable", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    waiting = seen(1, 0, memory=plan.memory, demand=held, previous=plan.status, pods=[pod("digits-b", ready=False)],
                   wait=stuck, wait_pod="digits-b", waiting=1, now=NOW + timedelta(seconds=3))
    plan = plan_service(waiting)
    routed, targets = slices(plan)["digits-activator"], slices(plan)["digits-activator-targets"]
    assert addresses(routed) == list(ACTIVATORS)
    backend = activator.backend_from_slice(targets)
    assert backend is not None and (backend.namespace, backend.name, backend.model, backend.version) == \
        ("ml", "digits", "digits", 3)
    assert [t.host for t in backend.targets] == ["10.1.0.8"] and "Insufficient nvidia.com/gpu" in backend.reason
    assert targets["metadata"]["labels"][activator.TARGETS_LABEL] == "true"
    assert "kubernetes.io/service-name" not in targets["metadata"]["labels"]  # kube-proxy ignores it

    # Triton says the model is ready (the model check's condition): back to the pod; the cold start measured
    ready = replace(waiting, serving_pods=[pod("digits-b", ready=True)], now=NOW + timedelta(seconds=7.5),
                    observed={REVISION: replace(waiting.observed[REVISION], ready_replicas=1, wait=None)},
                    demand=zero.Demand(), previous=plan.status)
    plan = plan_service(ready)
    assert addresses(slices(plan)["digits-activator"]) == []  # the pod, listed by the EndpointSlice controller
    assert plan.status["coldStart"] == {"lastSeconds": 7.5, "lastTime": rfc3339(NOW + timedelta(seconds=7.5))}


def test_without_zero_the_service_selects_its_pods_and_leftover_slices_go() -> None:
    observation = seen(1, 1, pods=[pod("digits-a", ready=True)], activators=(), spec=spec(minReplicas=1),
                       slices=("digits-activator", "digits-activator-targets"))
    plan = plan_service(observation)
    service = next(o for o in plan.apply if o["kind"] == "Service")
    assert service["spec"]["selector"] == MS.selector and not slices(plan)
    assert {(d.kind, d.name) for d in plan.delete} == {("EndpointSlice", "digits-activator"),
                                                       ("EndpointSlice", "digits-activator-targets")}
    assert "coldStart" not in plan.status


def test_the_operator_writes_what_the_activator_reads() -> None:
    assert (zero.TARGETS_LABEL, zero.SERVICE_LABEL, zero.MODEL_ANNOTATION, zero.VERSION_ANNOTATION,
            zero.REASON_ANNOTATION) == (activator.TARGETS_LABEL, activator.SERVICE_LABEL, activator.MODEL_ANNOTATION,
                                        activator.VERSION_ANNOTATION, activator.REASON_ANNOTATION)


def test_demand_is_summed_over_activators_and_a_rise_wakes_the_modelservice() -> None:
    one = {"seq": 4, "demand": {"ml/digits": {"held": 2, "since": 100.0, "last": 101.0},
                                "ml/other": {"held": 0, "since": None, "last": 90.0}}}
    two = {"seq": 9, "demand": {"ml/digits": {"held": 1, "since": 99.5, "last": 100.0}}}
    assert merge({"a": one, "b": two}, "ml/digits") == zero.Demand(3, 99.5)
    assert merge({"a": one}, "ml/other") == zero.Demand()
    assert woken({}, one) == ["ml/digits"] and woken(one, one) == []
    assert woken(one, {"seq": 5, "demand": {"ml/digits": {"held": 1}}}) == []
    slices_ = [{"endpoints": [{"addresses": ["10.0.9.2"], "conditions": {"ready": True}},
                              {"addresses": ["10.0.9.3"], "conditions": {"ready": False}}]},
               {"endpoints": [{"addresses": ["10.0.9.1"]}]}]
    assert ready_addresses(slices_) == ("10.0.9.1", "10.0.9.2")
    assert admin_port(slices_) == 9090 and admin_port([{"ports": [{"name": "admin", "port": 9191}]}]) == 9191
