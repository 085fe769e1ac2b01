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
    """A report from an evaluator before per-set reports (its own set only): still understood."""
    return json.dumps({"accuracy": 0.95, "samples": 360, "sha256": "f" * 64, **fields})


def own(accuracy: float, stable: float | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "candidate", "source": "version 4", "accuracy": accuracy, "samples": 360, "sha256": "a" * 64,
            **({"stableAccuracy": stable} if stable is not None else {}), **extra}


def stables(accuracy: float | None, stable: float | None = None, **extra: Any) -> dict[str, Any]:
    scores = {"accuracy": accuracy, "stableAccuracy": stable, "samples": 359 if accuracy is not None else None}
    return {"name": "stable", "source": "version 3", "sha256": "b" * 64,
            **{k: v for k, v in scores.items() if v is not None}, **extra}


def reference(accuracy: float, stable: float | None = None) -> dict[str, Any]:
    return {"name": "reference", "source": "digits/reference.npz", "accuracy": accuracy, "samples": 500,
            "sha256": "c" * 64, **({"stableAccuracy": stable} if stable is not None else {})}


def judged(*sets: dict[str, Any], stable: str | None = "digits-v3-abcde", **gate: Any) -> dict[str, Any]:
    parsed = evaluation.parse_report(json.dumps({"sets": list(sets), "lineage": {"image": "trainer:1"}}))
    assert parsed is not None
    return evaluation.judge(parsed, EvaluationGate.model_validate(gate), stable=stable)


@pytest.mark.parametrize(("message", "valid"), [
    (report(), True),
    (report(stableAccuracy=0.9), True),
    (json.dumps({"sets": [own(0.95, 0.9), stables(0.94, 0.96), reference(0.9)]}), True),
    (json.dumps({"sets": [own(0.95), stables(None, note="version 3 has no evaluation set (eval.npz)")]}), True),
    (json.dumps({"skipped": "version 3 has no evaluation set"}), True),
    (report(accuracy=1.5), False),          # impossible score
    (report(accuracy=float("nan")), False),
    (report(accuracy=True), False),
    (report(samples=0), False),
    (json.dumps({"sets": [own(0.95), own(0.9)]}), False),                      # a set twice
    (json.dumps({"sets": [own(0.95) | {"name": "mine"}]}), False),              # a set of nobody
    (json.dumps({"sets": [stables(None, note="not comparable")]}), False),      # nothing scored
    (json.dumps({"sets": [own(0.95, 2.0)]}), False),
    (json.dumps({"sets": {"name": "candidate"}}), False),
    ("not json", False),
    (json.dumps({"error": "unreachable"}), False),
    (json.dumps([1, 2]), False),
])
def test_reports_are_validated(message: str, valid: bool) -> None:
    assert (evaluation.parse_report(message) is not None) == valid


def test_a_candidate_trained_on_shifted_labels_is_refused_as_a_likely_data_shift_with_both_scores() -> None:
    """It beats stable on the held-out set its own (broken) run produced, and fails on stable's: the gate says
    what that disagreement means, not just a number."""
    record = judged(own(0.975, 0.103), stables(0.094, 0.961))
    assert record["verdict"] == "Failed"
    message = record["message"]
    assert message.startswith("likely data or label shift: on its own held-out set it scores 0.9750 (stable 0.1030), "
                              "but on the stable version's held-out set (version 3) it is up to 0.8670 worse than "
                              "stable (maxRegression 0.01)"), message
    assert "labels shifted or permuted" in message
    assert "its own held-out set (version 4): 0.9750 vs 0.1030 on 360 samples" in message
    assert "the stable version's held-out set (version 3): 0.0940 vs 0.9610 on 359 samples" in message
    assert "candidate vs stable digits-v3-abcde" in message
    # status carries every set's two scores; the top-level ones stay the candidate's own set
    assert record["sets"] == [own(0.975, 0.103), stables(0.094, 0.961)]
    assert (record["accuracy"], record["stableAccuracy"], record["samples"]) == (0.975, 0.103, 360)
    assert record["stableRevision"] == "digits-v3-abcde"


def test_a_reference_set_catches_a_shift_the_stable_set_cannot_show() -> None:
    record = judged(own(0.97, 0.95), stables(None, note="version 3 has no evaluation set (eval.npz)"),
                    reference(0.41, 0.93))
    assert record["verdict"] == "Failed"
    assert "likely data or label shift" in record["message"]
    assert "on the reference set (digits/reference.npz) it is up to 0.5200 worse than stable" in record["message"]
    assert "the stable version's held-out set (version 3): not scored (version 3 has no evaluation set " \
           "(eval.npz))" in record["message"]


@pytest.mark.parametrize(("sets", "gate", "verdict", "words"), [
    # genuinely better: ahead on every set
    ([own(0.97, 0.90), stables(0.96, 0.95), reference(0.93, 0.91)], {}, "Passed",
     "no worse than stable (maxRegression 0.01) on its own held-out set (version 4) and the stable version's "
     "held-out set (version 3) and the reference set (digits/reference.npz)"),
    # within maxRegression everywhere
    ([own(0.95, 0.955), stables(0.95, 0.957)], {}, "Passed", "0.9500 vs 0.9550"),
    ([own(0.95, 0.96), stables(0.95, 0.96)], {}, "Passed", "no worse than stable"),  # exactly maxRegression
    # a weaker model: behind on every set, not a shift
    ([own(0.80, 0.95), stables(0.79, 0.96)], {}, "Failed",
     "worse than stable on every set both were scored on, by up to 0.1700 (maxRegression 0.01)"),
    ([own(0.80, 0.95), stables(0.79, 0.96), reference(0.95, 0.95)], {}, "Failed",
     "0.1700 worse than stable on its own held-out set (version 4) and the stable version's held-out set"),
    # behind on its own set only
    ([own(0.90, 0.95), stables(0.96, 0.96)], {}, "Failed",
     "0.0500 worse than stable on its own held-out set (version 4) (maxRegression 0.01)"),
    ([own(0.90, 0.95), stables(0.90, 0.96)], {"maxRegression": 0.1}, "Passed", "no worse than stable"),
    # the floor holds on every set
    ([own(0.97, 0.90), stables(0.85, 0.84)], {"minAccuracy": 0.9}, "Failed",
     "below minAccuracy 0.9 on the stable version's held-out set (version 3)"),
    ([own(0.97, 0.90), stables(0.95, 0.99)], {"minAccuracy": 0.9}, "Failed",
     "likely data or label shift"),
])
def test_judging_each_set_against_stable_and_the_floor(sets: list[dict[str, Any]], gate: dict[str, Any],
                                                       verdict: str, words: str) -> None:
    record = judged(*sets, **gate)
    assert record["verdict"] == verdict and words in record["message"], record["message"]


def test_the_first_version_is_judged_without_a_stable_revision_and_says_so() -> None:
    record = judged(own(0.97), stable=None)
    assert record["verdict"] == "Passed" and "stableRevision" not in record
    assert record["message"] == ("first version: no stable revision to compare with, and it has been scored on its "
                                 "own held-out set only. Scores: its own held-out set (version 4): 0.9700 on 360 "
                                 "samples")
    # with a reference set, the floor applies to it too: a broken first version is refused
    record = judged(own(0.97), reference(0.12), stable=None, minAccuracy=0.8)
    assert record["verdict"] == "Failed"
    assert record["message"].startswith("below minAccuracy 0.8 on the reference set (digits/reference.npz)")
    assert judged(own(0.97), reference(0.9), stable=None, minAccuracy=0.8)["message"].startswith(
        "first version: no stable revision to compare with. Scores")


def test_a_shift_is_named_even_when_stable_could_not_score_the_candidates_own_set() -> None:
    """No ready stable pod: the stable version's set carries the score its training run recorded."""
    recorded = "the stable score is the one its training run recorded on this set (no ready stable pod)"
    record = judged(own(0.95), stables(0.10, 0.96, note=recorded))
    assert record["verdict"] == "Failed"
    assert record["message"].startswith("likely data or label shift: on its own held-out set it scores 0.9500, but "
                                        "on the stable version's held-out set (version 3) it is up to 0.8600 worse")
    assert f"0.1000 vs 0.9600 on 359 samples ({recorded})" in record["message"]
    # a candidate poor on its own set too is a weaker model, not a shift
    assert judged(own(0.50), stables(0.45, 0.96))["message"].startswith("0.5100 worse than stable on the stable")


def test_sets_with_other_shapes_or_classes_are_explained() -> None:
    record = judged(own(0.97, None, note="the stable version takes inputs of shape [64], the set's rows are "
                                         "[1, 8, 8]"),
                    stables(None, note="not comparable: the candidate takes inputs of shape [1, 8, 8], the set's "
                                       "rows are [64]"))
    assert record["verdict"] == "Passed"
    assert record["message"].startswith("not compared with stable digits-v3-abcde: no ready stable pod, or no set "
                                        "both could take, and it has been scored on its own held-out set only")
    assert "the stable version's held-out set (version 3): not scored (not comparable: the candidate takes inputs " \
           "of shape [1, 8, 8]" in record["message"]
    # rows of classes one version does not know are left out of both scores, and that is said
    note = "36 of 360 rows left out: their class is unknown to the candidate or the stable version"
    record = judged(own(0.97, 0.96, note=note), stables(0.95, 0.96))
    assert record["verdict"] == "Passed" and f"0.9700 vs 0.9600 on 360 samples ({note})" in record["message"]


def test_a_report_from_an_older_evaluator_is_judged_on_its_own_set() -> None:
    parsed = evaluation.parse_report(report(stableAccuracy=0.97))
    assert parsed is not None
    record = evaluation.judge(parsed, EvaluationGate(), stable="digits-v2")
    assert record["verdict"] == "Failed" and "0.0200 worse than stable on its own held-out set" in record["message"]
    assert record["accuracy"] == 0.95 and record["stableAccuracy"] == 0.97 and record["samples"] == 360


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


def test_the_evaluation_pod_mounts_only_the_sets_it_scores_read_only_and_never_joins_the_service() -> None:
    reference = {"path": "digits/reference.npz", "sha256": "c" * 64}
    pod = build.evaluation_pod(MS, spec(referenceSet=reference), "digits-v3-abcde", 3, "trainer:1",
                               candidate="10.244.0.7:8000", stable=("10.244.0.5:8000", 2))
    assert pod["metadata"]["name"] == "digits-v3-abcde-eval"
    assert build.LABEL_SERVICE not in pod["metadata"]["labels"]  # the Service selects serving pods by it
    assert pod["metadata"]["labels"][build.LABEL_EVALUATES] == "digits-v3-abcde"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    [container] = pod["spec"]["containers"]
    # the candidate's version, the stable version (its held-out set) and the reference file: nothing else
    assert container["volumeMounts"] == [
        {"name": "model-repository", "mountPath": path, "subPath": path.removeprefix("/models/"), "readOnly": True}
        for path in ("/models/digits/3", "/models/digits/2", "/models/digits/reference.npz")]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
    args = container["args"]

    def arg(flag: str) -> str:
        return str(args[args.index(flag) + 1])

    assert arg("--candidate") == "10.244.0.7:8000" and arg("--version-dir") == "/models/digits/3"
    assert (arg("--stable"), arg("--stable-version"), arg("--stable-dir")) == ("10.244.0.5:8000", "2",
                                                                               "/models/digits/2")
    assert (arg("--reference"), arg("--reference-name"), arg("--reference-sha256")) == \
        ("/models/digits/reference.npz", "digits/reference.npz", "c" * 64)
    # a new revision of the same version (serving settings changed): its set is the stable's, mounted once
    same = build.evaluation_pod(MS, spec(), "digits-v3-fghij", 3, "trainer:1", candidate="10.244.0.7:8000",
                                stable=("10.244.0.5:8000", 3))
    assert [m["mountPath"] for m in same["spec"]["containers"][0]["volumeMounts"]] == ["/models/digits/3"]


@pytest.mark.parametrize("path", ["/srv/reference.npz", "../reference.npz", "digits/../../etc/x.npz",
                                  "digits/.hidden.npz", "digits/reference.csv", "a b.npz"])
def test_a_reference_set_must_be_an_npz_file_inside_the_repository(path: str) -> None:
    with pytest.raises(ValueError, match="referenceSet.path must be a relative path inside the model repository"):
        spec(referenceSet={"path": path})


def test_the_gate_runs_the_operators_evaluator_with_the_stable_set_even_without_a_ready_stable_pod() -> None:
    """The candidate's TrainingJob named its own trainer image; the exam is still the operator's."""
    from modelops.api.trainingjob import DEFAULT_TRAINER_IMAGE
    from modelops.resources.evaluation_plan import plan_gate

    s = spec()
    candidate = build.revision_name(MS, s, build.Target(3, SIGNATURE))
    state = RolloutState(stable="digits-v2-old00", stable_version=2, canary=candidate, canary_version=3)
    held = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": f"{candidate}-x", "labels": {build.LABEL_REVISION: candidate}},
        "status": {"phase": "Running", "podIP": "10.244.0.9", "conditions": [
            {"type": build.MODEL_READY_GATE, "status": "False", "reason": "EvaluationPending"}]}}
    gate = plan_gate(MS, s, {candidate: (3, {"verdict": "Pending"}), "digits-v2-old00": (2, {"verdict": "Passed"})},
                     state, [held], [], NOW)
    [pod] = gate.start
    [container] = pod["spec"]["containers"]
    assert container["image"] == DEFAULT_TRAINER_IMAGE
    args = container["args"]
    assert args[args.index("--stable") + 1] == "" and args[args.index("--stable-dir") + 1] == "/models/digits/2"
    assert plan_gate(MS, spec(image="registry.local/eval:2"), {candidate: (3, {"verdict": "Pending"})}, state,
                     [held], [], NOW).start[0]["spec"]["containers"][0]["image"] == "registry.local/eval:2"


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


def test_the_evaluator_matches_classes_by_name_and_explains_shapes_it_cannot_take() -> None:
    import numpy as np

    from modelops.trainer.evaluate import Served, mismatch, model_labels, reordered

    signature = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
                 "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [3]}]}
    labels = np.array([0, 1, 2, 3, -1])
    # a candidate trained on a data drop without class "b", its classes in another order
    served = Served("", 4, signature, ["c", "a", "d"])
    assert model_labels(labels, ["a", "b", "c", "d"], served).tolist() == [1, -1, 0, 2, -1]
    assert reordered(["a", "b", "c", "d"], served.classes) and not reordered(["a", "b"], ["a", "b", "c"])
    # without names: index for index, labels past the model's outputs left out
    assert model_labels(labels, None, Served("", 4, signature, None)).tolist() == [0, 1, 2, -1, -1]
    assert mismatch(signature, np.zeros((2, 1, 8, 8))) == ""
    assert mismatch({**signature, "inputs": [{"name": "x", "datatype": "FP32", "dims": [-1, 8, 8]}]},
                    np.zeros((2, 3, 8, 8))) == ""
    assert mismatch(signature, np.zeros((2, 64))) == "takes inputs of shape [1, 8, 8], the set's rows are [64]"
