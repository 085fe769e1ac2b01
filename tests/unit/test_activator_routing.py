"""The activator's pure decisions: which ModelService a request is for, the hold limits, the model name read
from gRPC request bytes, and a ModelService's targets from the operator's EndpointSlice."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from modelops.activator.main import parse_backend
from modelops.activator.routing import (Backend, Limits, Target, backend_from_slice, grpc_model, pick_backend,
                                        refusal, timed_out)

A = Backend("team-a", "digits", "digits", 1)
B = Backend("team-b", "digits", "digits", 2)
C = Backend("team-b", "churn", "churn-eu", 3)
ALL = {b.key: b for b in (A, B, C)}


def test_the_host_names_the_modelservice() -> None:
    for host in ("digits.team-b", "digits.team-b.svc:8000", "digits.team-b.svc.cluster.local", "DIGITS.TEAM-B"):
        assert pick_backend(ALL, host, "digits") == B
    assert pick_backend(ALL, "churn.team-b.svc:8000", None) == C


def test_a_bare_name_or_an_ip_falls_back_to_a_unique_name_then_a_unique_model() -> None:
    assert pick_backend(ALL, "churn:8000", "churn-eu") == C           # one ModelService named churn
    assert pick_backend(ALL, "10.96.0.12:8000", "churn-eu") == C      # a cluster IP: by the model
    assert pick_backend(ALL, "10.96.0.12:8000", "digits") is None     # two ModelServices serve digits
    assert pick_backend(ALL, "digits", "digits") is None              # two ModelServices named digits
    assert pick_backend(ALL, "", None) is None                        # server-level call, three candidates
    assert pick_backend({A.key: A}, "", None) == A                    # ... one candidate


def test_a_model_the_modelservice_does_not_serve_is_not_routed() -> None:
    assert pick_backend(ALL, "churn.team-b", "digits") is None
    assert pick_backend(ALL, "nothing.here", "unknown") is None


def test_limits_per_modelservice_and_in_all() -> None:
    limits = Limits(per_service=2, total=3)
    assert refusal(limits, 1, 2) is None
    assert "for this ModelService (limit 2)" in (refusal(limits, 2, 2) or "")
    assert "in all (limit 3)" in (refusal(limits, 0, 3) or "")


def test_a_timeout_names_the_operators_reason() -> None:
    limits = Limits(hold_seconds=30)
    assert timed_out(limits, A) == "no ready copy of model digits version 1 after 30s"
    unschedulable = Backend("a", "b", "m", 4, reason="Unschedulable: 0/3 nodes have nvidia.com/gpu")
    assert timed_out(limits, unschedulable).endswith(": Unschedulable: 0/3 nodes have nvidia.com/gpu")


def test_the_model_name_is_read_from_grpc_bytes_without_decoding_them() -> None:
    infer = service_pb2.ModelInferRequest(model_name="digits", model_version="3", id="x")
    infer.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 64])
    infer.raw_input_contents.append(b"\0" * 256)
    assert grpc_model(infer.SerializeToString()) == ("digits", "3")
    assert grpc_model(service_pb2.ModelMetadataRequest(name="churn-eu").SerializeToString()) == ("churn-eu", "")
    assert grpc_model(service_pb2.ModelReadyRequest(name="m", version="1").SerializeToString()) == ("m", "1")
    assert grpc_model(b"") == ("", "")
    assert grpc_model(b"\x0a\x05ab") == ("", "")  # truncated: no name rather than a wrong one


def test_targets_from_the_operators_endpointslice() -> None:
    slice_ = {"metadata": {"namespace": "team-a", "name": "digits-activator",
                           "labels": {"modelops.dev/activator-targets": "true", "modelops.dev/modelservice": "digits"},
                           "annotations": {"modelops.dev/model": "digits", "modelops.dev/model-version": "7",
                                           "modelops.dev/not-ready-reason": "Unschedulable: no GPU"}},
              "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}],
              "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": False}},
                            {"addresses": ["10.0.0.6"]}]}
    assert backend_from_slice(slice_) == Backend("team-a", "digits", "digits", 7,
                                                 (Target("10.0.0.5"), Target("10.0.0.6")), "Unschedulable: no GPU")
    assert backend_from_slice({"metadata": {"labels": {}}}) is None


def test_a_fixed_backend_from_the_command_line() -> None:
    assert parse_backend("ns/svc=digits:2@127.0.0.1:8000:8001,10.0.0.1:9000:9001") == Backend(
        "ns", "svc", "digits", 2, (Target("127.0.0.1", 8000, 8001), Target("10.0.0.1", 9000, 9001)))
