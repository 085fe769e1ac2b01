"""The evaluation gate: reports judged against the rules, records on the revision Deployments, the pod that
evaluates, and what status and Events say."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelops.api.modelservice import EvaluationGate, ModelServiceSpec
from modelops.resources.modelservice_plan import with_evaluation
from modelops.resources import modelservice as build
from modelops.resources.modelservice_plan import ObservedRevision, PlanInputs, plan_revisions
from modelops.rollout import evaluation
from modelops.rollout.canary import Decision, RolloutState

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
MS = build.ServiceMeta("digits", "ml", "uid-9", 2)
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [64]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
LINEAGE = {"trainingJob": {"namespace": "ml", "name": "digits", "uid": "tj-uid-1"}, "image": "trainer:1",
           "datasetFingerprint": "abc123", "testAccuracy": 0.95}


def spec(**gate: Any) -> ModelServiceSpec:
    return ModelServiceSpec.model_validate({
        "model": {"name": "digits", "version": 3, "signature": SIGNATURE},
        "repository": {"hostPath": {"path": "/srv/models"}}, "rollout": {"gates": {"evaluation": gate}}})


def report(**fields: Any) -> str:
    return json.dumps({"accuracy": 0.95, "samples": 360, "sha256": "f" * 64, **fields})


@pytest.mark.parametrize(("message", "valid"), [
    (report(), True),
    (report(stableAccuracy=0.9), True),
    (json.dumps({"skipped": "version 3 has no evaluation set"}), True),
    (report(accuracy=1.5), False),          # impossible score
    (report(accuracy=float("nan")), False),
    (report(accuracy=True), False),
    (report(samples=0), False),
    ("not json", False),
    (json.dumps({"error": "unreachable"}), False),
    (json.dumps([1, 2]), False),
])
def test_reports_are_validated(message: str, valid: bool) -> None:
    assert (evaluation.parse_report(message) is not None) == valid


@pytest.mark.parametrize(("gate", "fields", "verdict", "words"), [
    ({}, {"stableAccuracy": 0.955}, "Passed", "stable digits-v2 0.9550"),
    ({}, {"stableAccuracy": 0.97}, "Failed", "worse than stable (maxRegression 0.01)"),
    ({"maxRegression": 0.05}, {"stableAccuracy": 0.97}, "Passed", "accuracy 0.9500"),
    ({"minAccuracy": 0.96}, {}, "Failed", "below minAccuracy 0.96"),
    ({"minAccuracy": 0.9}, {}, "Passed", "no ready stable pod"),
])
def test_judging_against_the_floor_and_the_stable_revision(gate: dict[str, Any], fields: dict[str, Any],
                                                           verdict: str, words: str) -> None:
    parsed = evaluation.parse_report(report(**fields))
    assert parsed is not None
    record = evaluation.judge(parsed, EvaluationGate.model_validate(gate), stable="digits-v2")
    assert record["verdict"] == verdict and words in record["message"], record
    assert record["accuracy"] == 0.95 and record["samples"] == 360


def test_a_version_without_an_evaluation_set_is_skipped_with_the_reason() -> None:
    parsed = evaluation.parse_report(json.dumps({"skipped": "version 3 has no evaluation set (eval.npz)"}))
    assert parsed is not None
    record = evaluation.judge(parsed, EvaluationGate(), stable=None)
    assert record == {"verdict": "Skipped", "message": "evaluation gate skipped: version 3 has no evaluation set "
                                                       "(eval.npz)"}


def test_evaluation_pods_that_end_without_a_report_are_retried_then_fail() -> None:
    record = None
    for attempt in range(1, evaluation.MAX_ATTEMPTS):
        record = evaluation.failed_attempt(record, "connection refused", NOW)
        assert record["verdict"] == "Pending" and record["attempts"] == attempt
        # the next pod waits, longer after each failure
        assert evaluation.retry_in(record, NOW) == evaluation.RETRY_SECONDS * attempt
        assert evaluation.retry_in(record, NOW + timedelta(seconds=evaluation.RETRY_SECONDS * attempt)) == 0
    record = evaluation.failed_attempt(record, "connection refused", NOW)
    assert record["verdict"] == "Failed" and "connection refused" in record["message"]
    assert evaluation.retry_in(record, NOW) == 0


def test_records_round_trip_through_the_deployment_annotation() -> None:
    record = {"verdict": "Passed", "accuracy": 0.95}
    assert evaluation.read({evaluation.ANNOTATION_EVALUATION: evaluation.encode(record)}) == record
    assert evaluation.read({evaluation.ANNOTATION_EVALUATION: '{"verdict": "Maybe"}'}) is None
    assert evaluation.read({}) is None
    assert evaluation.read_lineage({evaluation.ANNOTATION_LINEAGE: "[not, a, dict]"}) == {}


def test_a_failed_gate_fails_the_revision_like_a_failed_model_check() -> None:
    seen = ObservedRevision("digits-v3-x", 3, 1, 0, lineage={"image": "trainer:1"})
    failed = with_evaluation(seen, {"verdict": "Failed", "message": "accuracy 0.5 below minAccuracy 0.9"},
                             {"image": "other", "datasetFingerprint": "abc"})
    assert failed.model_failure == "evaluation gate failed: accuracy 0.5 below minAccuracy 0.9"
    assert failed.lineage == {"image": "trainer:1", "datasetFingerprint": "abc"}  # what was recorded wins
    assert with_evaluation(seen, {"verdict": "Passed"}, None).model_failure is None


def test_the_evaluation_pod_mounts_only_its_version_read_only_and_never_joins_the_service() -> None:
    pod = build.evaluation_pod(MS, spec(), "digits-v3-abcde", 3, "trainer:1", candidate="10.244.0.7:8000",
                               stable=("10.244.0.5:8000", 2))
    assert pod["metadata"]["name"] == "digits-v3-abcde-eval"
    assert build.LABEL_SERVICE not in pod["metadata"]["labels"]  # the Service selects serving pods by it
    assert pod["metadata"]["labels"][build.LABEL_EVALUATES] == "digits-v3-abcde"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    [container] = pod["spec"]["containers"]
    assert container["volumeMounts"] == [{"name": "model-repository", "mountPath": "/models/digits/3",
                                          "subPath": "digits/3", "readOnly": True}]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    args = container["args"]
    assert args[args.index("--candidate") + 1] == "10.244.0.7:8000"
    assert args[args.index("--stable") + 1] == "10.244.0.5:8000" and args[args.index("--stable-version") + 1] == "2"


def plan(s: ModelServiceSpec, observed: dict[str, ObservedRevision], state: RolloutState,
         recorded: dict[str, dict[str, Any] | None] | None = None) -> Any:
    target = build.Target(3, SIGNATURE, LINEAGE)
    desired = build.revision_name(MS, s, target)
    return desired, plan_revisions(PlanInputs(
        meta=MS, spec=s, desired=desired, target=target, decision=Decision(state, "Started", "canary started",
                                                                           weight=20),
        waiting="", observed=observed, total=4, previous={}, now=NOW, recorded_evaluations=recorded or {}))


def test_a_new_revision_starts_pending_with_its_lineage_and_status_says_so() -> None:
    s = spec()
    desired = build.revision_name(MS, s, build.Target(3, SIGNATURE))
    state = RolloutState(stable="digits-v2-old00", stable_version=2, canary=desired, canary_version=3,
                         step_started_at=NOW, started_at=NOW)
    observed = {"digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 4, 4)}
    _, result = plan(s, observed, state)
    deployment = next(o for o in result.apply if o["kind"] == "Deployment")
    annotations = deployment["metadata"]["annotations"]
    assert json.loads(annotations[evaluation.ANNOTATION_EVALUATION]) == {"verdict": "Pending"}
    assert json.loads(annotations[evaluation.ANNOTATION_LINEAGE]) == LINEAGE
    # the old stable predates the gate: it is not gated, and nothing is written about it
    assert evaluation.ANNOTATION_EVALUATION not in json.dumps(result.patch)
    canary = result.status["canary"]
    assert canary["evaluation"] == {"verdict": "Pending", "message": ""} and canary["lineage"] == LINEAGE
    assert canary["accuracy"] == 0.95  # the trainer's, until the gate measures it
    gate = next(c for c in result.status["conditions"] if c["type"] == "EvaluationGate")
    assert (gate["status"], gate["reason"]) == ("False", "Pending")


def test_with_the_gate_off_new_revisions_are_not_gated() -> None:
    s = spec(enabled=False)
    desired = build.revision_name(MS, s, build.Target(3, SIGNATURE))
    state = RolloutState(stable=desired, stable_version=3)
    _, result = plan(s, {}, state)
    deployment = next(o for o in result.apply if o["kind"] == "Deployment")
    assert evaluation.ANNOTATION_EVALUATION not in deployment["metadata"]["annotations"]
    gate = next(c for c in result.status["conditions"] if c["type"] == "EvaluationGate")
    assert (gate["status"], gate["reason"]) == ("True", "NotGated")


def test_a_verdict_is_written_on_the_deployment_shown_in_status_and_announced_once() -> None:
    s = spec()
    desired = build.revision_name(MS, s, build.Target(3, SIGNATURE))
    state = RolloutState(stable="digits-v2-old00", stable_version=2, canary=desired, canary_version=3,
                         step_started_at=NOW, started_at=NOW)
    pending = {"verdict": "Pending"}
    failed = {"verdict": "Failed", "accuracy": 0.61, "stableAccuracy": 0.95, "samples": 360,
              "message": "accuracy 0.6100 ...: 0.3400 worse than stable (maxRegression 0.01)"}
    annotations = {evaluation.ANNOTATION_EVALUATION: evaluation.encode(pending)}
    canary = ObservedRevision(desired, 3, 1, 0, annotations=annotations, evaluation=pending, lineage=LINEAGE)
    observed = {"digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 3, 3),
                desired: with_evaluation(canary, failed, None)}
    _, result = plan(s, observed, state, recorded={desired: pending, "digits-v2-old00": None})
    deployment = next(o for o in result.apply if o["kind"] == "Deployment")
    assert json.loads(deployment["metadata"]["annotations"][evaluation.ANNOTATION_EVALUATION]) == failed
    assert result.status["canary"]["evaluation"]["stableAccuracy"] == 0.95
    assert result.status["canary"]["accuracy"] == 0.61
    assert result.status["lastEvaluation"]["revision"] == desired and result.status["lastEvaluation"]["version"] == 3
    assert [(e.type, e.reason) for e in result.events if e.reason.startswith("Evaluation")] == \
        [("Warning", "EvaluationFailed")]
    # the next pass sees the same record: no second Event
    _, again = plan(s, observed, state, recorded={desired: failed})
    assert not [e for e in again.events if e.reason.startswith("Evaluation")]


def test_the_published_held_out_set_travels_with_the_version(tmp_path: Any) -> None:
    import hashlib
    import io

    import numpy as np
    import torch

    from modelops.trainer.cli import EVAL_MAX_SAMPLES, held_out_set, lineage

    model = torch.nn.Linear(4, 3)
    x = np.random.default_rng(1).normal(size=(EVAL_MAX_SAMPLES + 10, 4)).astype(np.float32)
    y = np.random.default_rng(2).integers(0, 3, size=len(x))
    raw, described = held_out_set(x, y, model, torch.device("cpu"))
    with np.load(io.BytesIO(raw)) as data:
        assert data["x"].shape == (EVAL_MAX_SAMPLES, 4) and data["y"].dtype == np.int64
        expected = float((model(torch.from_numpy(data["x"])).argmax(1).numpy() == data["y"]).mean())
    assert described["samples"] == EVAL_MAX_SAMPLES and described["of"] == len(x)
    assert described["sha256"] == hashlib.sha256(raw).hexdigest()
    assert described["accuracy"] == pytest.approx(expected)
    assert held_out_set(x[:0], y[:0], model, torch.device("cpu")) == (b"", {})
    env = {"POD_NAMESPACE": "ml", "MODELOPS_JOB_NAME": "digits", "MODELOPS_JOB_UID": "u1",
           "MODELOPS_TRAINER_IMAGE": "trainer:1"}
    assert lineage(env) == {"trainingJob": {"namespace": "ml", "name": "digits", "uid": "u1"}, "image": "trainer:1"}
    assert lineage({}) == {}


def test_a_model_that_answers_its_held_out_set_with_errors_fails_at_once() -> None:
    parsed = evaluation.parse_report(json.dumps({"failed": "digits version 4 answered the held-out set with 500"}))
    assert parsed is not None
    record = evaluation.judge(parsed, EvaluationGate(), stable="digits-v3")
    assert record == {"verdict": "Failed", "message": "digits version 4 answered the held-out set with 500"}


def test_statuses_are_what_the_api_server_stores_so_a_converged_pass_writes_nothing() -> None:
    """The API server fills in schema defaults; a status lacking one would differ from the stored one and be
    written again on every pass."""
    from modelops.api.modelservice import ModelServiceStatus

    s = spec()
    desired = build.revision_name(MS, s, build.Target(3, SIGNATURE))
    state = RolloutState(stable="digits-v2-old00", stable_version=2, canary=desired, canary_version=3,
                         step_started_at=NOW, started_at=NOW)
    failed = {"verdict": "Failed", "accuracy": 0.61, "stableAccuracy": 0.95, "samples": 360}
    canary = ObservedRevision(desired, 3, 1, 0, evaluation={"verdict": "Pending"}, lineage=LINEAGE)
    observed = {"digits-v2-old00": ObservedRevision("digits-v2-old00", 2, 3, 3, evaluation={"verdict": "Passed"}),
                desired: with_evaluation(canary, failed, None)}
    _, result = plan(s, observed, state, recorded={desired: {"verdict": "Pending"}})
    status = result.status
    stored = ModelServiceStatus.model_validate(status).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert stored == status
