"""`kubectl modelops`: the pure formatting (tables, ages, the progress bar, describe), the argument
parsing, and the command logic against a small in-memory stand-in for modelops.kube."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from modelops.kube import ApiError
from modelops.plugin import commands
from modelops.plugin import format as fmt
from modelops.plugin.watch import LineView, job_states, watch_job

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SIGNATURE = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
             "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def job(name: str = "digits", phase: str | None = "Running", progress: dict[str, Any] | None = None,
        **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob",
                            "metadata": {"name": name, "namespace": "ml", "creationTimestamp": ago(300),
                                         "resourceVersion": "1"},
                            "spec": {"output": {"modelName": "digits"}}, "status": dict(status)}
    if phase:
        body["status"]["phase"] = phase
    if progress:
        body["status"]["progress"] = progress
    return body


def service(name: str = "digits", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": name, "namespace": "ml", "uid": "ms-uid", "creationTimestamp": ago(7200)},
            "spec": {"model": {"name": "digits", "fromTrainingJob": "digits"},
                     "rollout": {"steps": [{"weight": 20}, {"weight": 50}]}},
            "status": status}


CANARY_STATUS = {
    "phase": "Progressing", "modelVersion": 2, "ready": "3/4",
    "stable": {"name": "digits-v2-aaaaa", "version": 2, "replicas": 3, "readyReplicas": 3, "accuracy": 0.955},
    "canary": {"name": "digits-v3-bbbbb", "version": 3, "replicas": 1, "readyReplicas": 0, "step": 1, "weight": 50,
               "stepStartedAt": ago(20), "startedAt": ago(90)},
    "lastAnalysis": {"time": ago(25), "verdict": "Passed", "errorRate": 0.0, "p99LatencyMs": 12.5, "requests": 140,
                     "stableErrorRate": 0.001, "stableP99LatencyMs": 10.0, "stableRequests": 420, "latencyRatio": 1.25,
                     "message": "error rate 0.0000 <= 0.01"},
    "autoscaling": {"metric": "queueTimeMicroseconds", "value": 812.5, "target": 500, "desiredReplicas": 4,
                    "lastScaleTime": ago(600), "reason": "812.5 over target 500"},
    "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "3/4 replicas serving version 2",
                    "lastTransitionTime": ago(3600)}],
}


# ---- ages, tables, bars -----------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (119, "119s"), (120, "2m"), (310, "5m10s"), (42 * 60, "42m"), (200 * 60, "3h20m"),
    (8 * 3600, "8h"), (20 * 3600, "20h"), (4 * 86400 + 5 * 3600, "4d5h"), (30 * 86400, "30d"), (800 * 86400, "2y"),
    (-5, "0s"),
])
def test_human_duration_reads_like_kubectl(seconds: float, text: str) -> None:
    assert fmt.human_duration(seconds) == text


def test_age_of_stamps_with_and_without_fractions() -> None:
    assert fmt.age(ago(90), NOW) == "90s"
    assert fmt.age("2026-01-01T11:59:00.123456Z", NOW) == "60s"
    assert fmt.age(None, NOW) == fmt.age("yesterday", NOW) == "-"


def test_table_aligns_columns_three_spaces_apart() -> None:
    assert fmt.table(["A", "LONGER"], [["xyz", "1"], ["q", "22"]]).splitlines() == [
        "A     LONGER", "xyz   1", "q     22"]


@pytest.mark.parametrize(("fraction", "text"), [(0, "[----]"), (0.5, "[##--]"), (1, "[####]"), (7, "[####]")])
def test_bar(fraction: float, text: str) -> None:
    assert fmt.bar(fraction, width=4) == text


# ---- get --------------------------------------------------------------------------------------------


def test_get_table_lists_jobs_then_services() -> None:
    jobs = [job("digits", progress={"epoch": 3, "epochs": 10, "step": 1200, "checkpointedEpoch": 2},
                workersReady="2/2"),
            job("tabular", phase="Succeeded", workersReady="0/1",
                model={"name": "tabular", "version": 4, "uri": "/models/tabular/4"})]
    services = [service(**CANARY_STATUS), service("idle")]
    lines = fmt.get_table(jobs, services, NOW).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "MODEL", "VERSION", "CANARY", "READY", "AGE"]
    assert lines[1].split() == ["tj/digits", "Running", "epoch", "3/10", "step", "1200", "checkpoint", "2", "digits",
                                "-", "-", "2/2", "5m"]
    assert lines[2].split() == ["tj/tabular", "Succeeded", "-", "tabular", "4", "-", "0/1", "5m"]
    assert lines[3].split() == ["ms/digits", "Progressing", "step", "2/2", "digits", "2", "v3", "50%", "3/4", "120m"]
    assert lines[4].split() == ["ms/idle", "-", "-", "digits", "-", "-", "-", "120m"]


def test_get_table_all_namespaces_has_a_namespace_column() -> None:
    other = job("b")
    other["metadata"]["namespace"] = "a-team"
    lines = fmt.get_table([job("a"), other], [], NOW, all_namespaces=True).splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [line.split()[:2] for line in lines[1:]] == [["a-team", "tj/b"], ["ml", "tj/a"]]


# ---- watch ------------------------------------------------------------------------------------------


def test_epoch_clock_learns_the_length_of_an_epoch() -> None:
    clock = fmt.EpochClock()
    first = {"epoch": 1, "epochs": 4, "step": 30}
    clock.observe(first)
    assert clock.fraction(first) == 0.0  # the length of an epoch is not known yet
    clock.observe({"epoch": 1, "epochs": 4, "step": 90})
    clock.observe({"epoch": 2, "epochs": 4, "step": 102})  # the first report of epoch 2: an epoch is <= 102
    assert (clock.steps_per_epoch, clock.at_least) == (102, 90)
    later = {"epoch": 3, "epochs": 4, "step": 255}
    clock.observe(later)
    assert clock.steps_per_epoch == 102
    assert clock.fraction(later) == pytest.approx((2 + (255 - 204) / 102) / 4)
    assert clock.fraction({"epoch": 4, "epochs": 4, "step": 10_000}) == 0.999  # full only once it succeeded


def test_epoch_clock_without_steps_counts_finished_epochs() -> None:
    assert fmt.EpochClock().fraction({"epoch": 3, "epochs": 4}) == 0.5
    assert fmt.EpochClock().fraction({}) == 0.0


def test_watch_line_shows_bar_progress_loss_accuracy_throughput() -> None:
    clock = fmt.EpochClock()
    running = job(progress={"epoch": 5, "epochs": 10, "step": 1200, "loss": 0.23149, "valAccuracy": 0.9121,
                            "samplesPerSecond": 1850.4})
    line = fmt.watch_line(running, clock)
    assert line == ("tj/digits Running   [##########--------------]  40%  epoch 5/10 step 1200  loss 0.231  "
                    "acc 0.912  1,850 samples/s")
    done = job(phase="Succeeded", progress={"epoch": 10, "epochs": 10, "step": 3000})
    assert "[" + "#" * fmt.BAR_WIDTH + "] 100%" in fmt.watch_line(done, clock)


def test_watch_line_shows_the_checkpointed_epoch_and_a_failed_save() -> None:
    progress = {"epoch": 3, "epochs": 10, "step": 90, "checkpointedEpoch": 1,
                "checkpointError": "epoch 2 not saved: [Errno 28] No space left on device"}
    line = fmt.watch_line(job(progress=progress), fmt.EpochClock())
    assert "epoch 3/10 step 90 checkpoint 1 (last save failed)" in line


@pytest.mark.parametrize(("progress", "cost"), [
    ({"epoch": 3, "checkpointedEpoch": 2}, "epoch 3, resuming after the checkpoint of epoch 2"),
    ({"epoch": 4, "checkpointedEpoch": 2}, "epochs 3-4, resuming after the checkpoint of epoch 2"),
    ({"epoch": 1, "checkpointedEpoch": 0}, "epoch 1, resuming from the start"),
    ({"epoch": 2, "checkpointedEpoch": 2}, "nothing: epoch 2 is checkpointed"),
    ({"epoch": 2}, "the trainer reports no checkpoint: a restart trains from the start"),
    ({}, "-"),
])
def test_preemption_cost(progress: dict[str, Any], cost: str) -> None:
    assert fmt.preemption_cost(progress) == cost


def test_watch_line_of_a_waiting_job_says_why() -> None:
    waiting = job(phase="Pending", workersReady="0/2", conditions=[
        {"type": "Ready", "status": "False", "reason": "Unschedulable",
         "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu"}])
    assert fmt.watch_line(waiting, fmt.EpochClock()) == (
        "tj/digits Pending   workers 0/2  (Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu)")


def test_outcome_lines() -> None:
    done = job(phase="Succeeded", model={"name": "digits", "version": 3, "uri": "/m/3", "testAccuracy": 0.9612})
    assert fmt.outcome_line(done) == "tj/digits succeeded: published digits version 3, test accuracy 0.961"
    failed = job(phase="Failed", conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                              "message": "worker 1 exit code 3"}])
    assert fmt.outcome_line(failed) == "tj/digits failed: BackoffLimitExceeded: worker 1 exit code 3"


def test_line_view_prints_one_line_per_change_without_a_terminal() -> None:
    out = io.StringIO()
    view = LineView(out, tty=False)
    for line in ("a", "a", "b"):
        view.show(line, "Running")
    view.done("end")
    assert out.getvalue() == "a\nb\nend\n"


def test_line_view_redraws_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    view = LineView(out, tty=True)
    view.show("pending", "Pending")
    view.show("run 1", "Running")
    view.show("run 2", "Running")
    view.done("end")
    assert out.getvalue() == "\r\x1b[2Kpending\n\r\x1b[2Krun 1\r\x1b[2Krun 2\nend\n"


# ---- describe ---------------------------------------------------------------------------------------


def deployment(name: str, version: int, role: str, replicas: int, ready: int, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": ago(1000 - 100 * version),
                         "labels": {"modelops.dev/model-version": str(version)},
                         "annotations": {"modelops.dev/rollout-role": role, **annotations},
                         "ownerReferences": [{"kind": "ModelService", "uid": "ms-uid", "controller": True}]},
            "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def describe_inputs() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    evaluated = {"modelops.dev/evaluation": json.dumps({"verdict": "Passed", "accuracy": 0.961, "stableAccuracy": 0.955,
                                                        "samples": 180})}
    deployments = [deployment("digits-v3-bbbbb", 3, "canary", 1, 0, **evaluated),
                   deployment("digits-v2-aaaaa", 2, "stable", 3, 3)]
    pods = [{"metadata": {"name": "digits-v3-bbbbb-x", "labels": {"modelops.dev/revision": "digits-v3-bbbbb"}},
             "status": {"conditions": [{"type": "modelops.dev/model-ready", "status": "False",
                                        "reason": "ModelCheckFailed", "message": "version 3 not loaded"}]}}]
    events = [{"type": "Normal", "reason": "CanaryStarted", "message": "canary digits-v3-bbbbb (version 3) started",
               "lastTimestamp": ago(90)},
              {"type": "Normal", "reason": "Scaled", "message": "3 -> 4 replicas: queue time",
               "lastTimestamp": ago(600)},
              {"type": "Normal", "reason": "CanaryStepped", "message": "step 2/2: canary at 50%",
               "lastTimestamp": ago(20)}]
    status = {**CANARY_STATUS, "evaluationGate": {"verdict": "Passed", "accuracy": 0.97}, "conditions": [
        *CANARY_STATUS["conditions"], {"type": "EvaluationGate", "status": "False", "reason": "Pending",
                                       "message": "waiting for a pod", "lastTransitionTime": ago(5)}]}
    return service(**status), deployments, pods, events


def test_describe_data_has_revisions_with_roles_and_weights() -> None:
    data = fmt.describe_service_data(*describe_inputs())
    assert [(r["name"], r["version"], r["role"], r["weight"]) for r in data["revisions"]] == [
        ("digits-v2-aaaaa", "2", "stable", 50), ("digits-v3-bbbbb", "3", "canary", 50)]
    assert [e["reason"] for e in data["rollout"]] == ["CanaryStarted", "CanaryStepped"]
    assert [e["reason"] for e in data["scalingDecisions"]] == ["Scaled"]
    assert data["analysisHistory"] == [CANARY_STATUS["lastAnalysis"]]
    assert [(r["accuracy"], (r["evaluation"] or {}).get("verdict")) for r in data["revisions"]] == [
        (0.955, None), (0.961, "Passed")]
    assert data["gates"] == {"evaluationGate": {"verdict": "Passed", "accuracy": 0.97},
                             "EvaluationGate": data["conditions"][-1]}
    assert data["modelChecks"][0]["reason"] == "ModelCheckFailed"
    json.dumps(data)  # what -o json prints


def test_describe_text_sections() -> None:
    text = fmt.describe_service(fmt.describe_service_data(*describe_inputs()), NOW)
    assert "Model:      digits, following TrainingJob digits" in text
    assert "Serving:    version 2, 3/4 replicas ready" in text
    lines = text.splitlines()
    revisions = lines.index("Revisions:")
    assert lines[revisions + 1].split() == ["REVISION", "VERSION", "ROLE", "WEIGHT", "READY", "ACCURACY", "EVALUATION",
                                            "AGE"]
    assert lines[revisions + 2].split() == ["digits-v2-aaaaa", "2", "stable", "50%", "3/3", "0.955", "-", "13m"]
    assert lines[revisions + 3].split() == ["digits-v3-bbbbb", "3", "canary", "50%", "0/1", "0.961", "Passed", "11m"]
    assert "canary at step 2, step started 20s ago, rollout started 90s ago" in text
    assert ("Passed 25s ago: canary error rate 0.0000, p99 12.5 ms, 140 requests; "
            "stable error rate 0.0010, p99 10.0 ms, 420 requests; p99 ratio 1.25 (error rate 0.0000 <= 0.01)") in text
    assert "evaluationGate: Passed: accuracy 0.970" in text
    assert "EvaluationGate: False Pending: waiting for a pod" in text
    assert "digits-v3-bbbbb-x   digits-v3-bbbbb   False    ModelCheckFailed   version 3 not loaded" in text
    assert "queueTimeMicroseconds = 812.50 (target 500) -> 4 replicas; last scaled 10m ago" in text
    assert "10m ago: 3 -> 4 replicas: queue time" in text
    assert ["Ready", "True", "Serving", "60m", "3/4", "replicas", "serving", "version", "2"] in \
        [line.split() for line in lines]


def test_describe_of_a_fresh_service_says_none() -> None:
    text = fmt.describe_service(fmt.describe_service_data(service(), [], [], []), NOW)
    assert "Revisions:\n  <none>" in text and "Events:\n  <none>" in text and "Phase:      -" in text


def training(**progress: Any) -> dict[str, Any]:
    running = job(progress={"phase": "Training", "epoch": 5, "epochs": 10, "step": 1200, "loss": 0.23149,
                            "valAccuracy": 0.9121, "samplesPerSecond": 1850.4, **progress},
                  workersReady="2/2", attempt=1, restarts=0, preemptions=1,
                  conditions=[{"type": "Running", "status": "True", "reason": "WorkersRunning",
                               "message": "2/2 workers running", "lastTransitionTime": ago(60)}])
    running["metadata"]["uid"] = "tj-uid"
    return running


def test_describe_job_shows_progress_checkpoint_and_what_a_preemption_costs() -> None:
    events = [{"type": "Warning", "reason": "WorkerPreempted", "message": "worker 0 evicted", "lastTimestamp": ago(90)}]
    data = fmt.describe_job_data(training(checkpointedEpoch=4), events)
    assert data["preemptionCost"] == "epoch 5, resuming after the checkpoint of epoch 4"
    json.dumps(data)  # what -o json prints
    lines = fmt.describe_job(data, NOW).splitlines()
    assert "Workers:         2/2 running, attempt 1, 0 restarts, 1 preemptions" in lines
    assert "Progress:        epoch 5/10 step 1200, loss 0.231, acc 0.912, 1,850 samples/s" in lines
    assert "Checkpoint:      epoch 4" in lines
    assert "Preemption cost: epoch 5, resuming after the checkpoint of epoch 4" in lines
    assert ["Running", "True", "WorkersRunning", "60s", "2/2", "workers", "running"] in [x.split() for x in lines]
    assert ["90s", "Warning", "WorkerPreempted", "worker", "0", "evicted"] in [x.split() for x in lines]


def test_describe_job_shows_a_failed_save_and_a_job_without_checkpoints() -> None:
    failing = fmt.describe_job(fmt.describe_job_data(
        training(checkpointedEpoch=3, checkpointError="epoch 4 not saved: [Errno 28] No space left on device"), []),
        NOW)
    assert "Preemption cost: epochs 4-5, resuming after the checkpoint of epoch 3" in failing
    assert "Last save:       failed: epoch 4 not saved: [Errno 28] No space left on device" in failing
    fresh = fmt.describe_job(fmt.describe_job_data(training(checkpointedEpoch=0), []), NOW)
    assert "Checkpoint:      none yet" in fresh and "Events:\n  <none>" in fresh
    done = job(phase="Succeeded", progress={"epoch": 10, "epochs": 10, "checkpointedEpoch": 10},
               model={"name": "digits", "version": 3, "uri": "/m/3", "testAccuracy": 0.9612})
    text = fmt.describe_job(fmt.describe_job_data(done, []), NOW)
    assert "Preemption cost: -" in text and "Model:           digits version 3 at /m/3, test accuracy 0.961" in text


def test_describe_takes_a_training_job(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    event = {"kind": "Event", "type": "Normal", "reason": "WorkersRunning", "message": "2/2 workers running",
             "metadata": {"name": "e1"}, "lastTimestamp": ago(30)}
    kube = fake(training(checkpointedEpoch=4), event)
    monkeypatch.setattr(commands, "session", lambda args: commands.Session(kube, "ml"))
    assert commands.main(["describe", "tj/digits"]) == 0
    out = capsys.readouterr().out
    assert "Preemption cost: epoch 5, resuming after the checkpoint of epoch 4" in out and "WorkersRunning" in out
    assert commands.main(["describe", "tj", "digits", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["progress"]["checkpointedEpoch"] == 4
    assert commands.main(["describe", "tj", "missing"]) == 1


# ---- arguments --------------------------------------------------------------------------------------


def test_flags_count_before_and_after_the_command() -> None:
    parser = commands.build_parser()
    args = parser.parse_args(["-n", "ml", "--context", "dev", "get", "-o", "yaml"])
    assert (args.namespace, args.context, args.output, args.kind) == ("ml", "dev", "yaml", "all")
    args = parser.parse_args(["get", "ms", "-A", "--kubeconfig", "/k"])
    assert (args.kind, args.all_namespaces, args.kubeconfig) == ("ms", True, "/k")
    assert not hasattr(args, "namespace")
    args = parser.parse_args(["rollback", "ms/digits", "--to-version", "3", "-n", "ml"])
    assert (args.target, args.to_version, args.namespace) == (["ms/digits"], 3, "ml")


@pytest.mark.parametrize(("words", "kind", "name"), [
    (["tj", "digits"], "TrainingJob", "digits"), (["trainingjob/digits"], "TrainingJob", "digits"),
    (["MS", "web"], "ModelService", "web"), (["modelservices/web"], "ModelService", "web"),
])
def test_target_accepts_kind_name_and_kind_slash_name(words: list[str], kind: str, name: str) -> None:
    assert commands.target(words, kind) == name


@pytest.mark.parametrize("words", [["ms", "web"], ["tj"], ["tj", "a", "b"], ["pod/x"]])
def test_target_refuses_other_kinds_and_shapes(words: list[str]) -> None:
    with pytest.raises(commands.CommandError):
        commands.target(words, "TrainingJob")


def test_modelops_cli_has_the_same_commands() -> None:
    from modelops import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["describe", "--help"])
    assert exit_info.value.code == 0


# ---- command logic against an in-memory API ---------------------------------------------------------


class FakeKube:
    """list_objects/get/patch/watch_objects over a dict of objects, as modelops.kube.Kube answers them."""

    def __init__(self, *objects: dict[str, Any], watches: list[list[dict[str, Any]] | ApiError] | None = None) -> None:
        self.objects = list(objects)
        self.watches = list(watches or [])
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.lists = 0

    def path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        return f"/{kind}/{namespace}/{name}"

    def _kind(self, obj: dict[str, Any]) -> str:
        return obj.get("kind", "")

    def list_objects(self, api_version: str, kind: str, namespace: str | None, *, labels: str | None = None,
                     fields: str | None = None) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        name = fields.split("=", 1)[1] if fields and fields.startswith("metadata.name=") else None
        key, _, value = (labels or "").partition("=")
        found = [o for o in self.objects if self._kind(o) == kind and (name is None or o["metadata"]["name"] == name)
                 and (not labels or (o["metadata"].get("labels") or {}).get(key) == value)]
        return found, "10"

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return next((o for o in self.objects if self._kind(o) == kind and o["metadata"]["name"] == name), None)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((kind, name, patch))
        return {}

    def watch_objects(self, api_version: str, kind: str, namespace: str | None, resource_version: str, *,
                      fields: str | None = None, timeout_seconds: int = 300) -> Any:
        stream = self.watches.pop(0)
        if isinstance(stream, ApiError):
            raise stream
        yield from stream


def fake(*objects: dict[str, Any], watches: list[list[dict[str, Any]] | ApiError] | None = None) -> Any:
    """A FakeKube where the commands take a Kube."""
    return FakeKube(*objects, watches=watches)


def configmap(revision: str, version: int, signature: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {
        "name": revision, "namespace": "ml", "labels": {"modelops.dev/model-service": "digits"},
        "annotations": {"modelops.dev/model": f"digits:{version}", "modelops.dev/signature": json.dumps(signature)},
        "ownerReferences": [{"kind": "ModelService", "uid": "ms-uid", "controller": True}]}}


def test_rollback_signature_comes_from_the_revision_that_served_the_version() -> None:
    other = {"inputs": SIGNATURE["inputs"], "outputs": [{"name": "OUT", "datatype": "FP32", "dims": [3]}]}
    ms = service(stable={"name": "digits-v2-aaaaa", "version": 2})
    kube = fake(ms, configmap("digits-v1-ccccc", 1, other), configmap("digits-v2-aaaaa", 2, SIGNATURE))
    assert commands.signature_for(kube, ms, 1) == (other, "revision digits-v1-ccccc, which served version 1")
    signature, source = commands.signature_for(kube, ms, 7)
    assert signature == SIGNATURE and source.startswith("revision digits-v2-aaaaa (version 2)")


def test_rollback_signature_falls_back_to_the_followed_jobs_report() -> None:
    ms = service()
    trained = job(model={"name": "digits", "version": 1, "uri": "/m/1", "signature": SIGNATURE})
    assert commands.signature_for(fake(ms, trained), ms, 1) == (SIGNATURE, "TrainingJob digits's report")
    assert commands.signature_for(fake(ms), ms, 1) == (None, "")


def pod(name: str, attempt: int, rank: int) -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "labels": {
        "modelops.dev/training-job": "digits", "modelops.dev/attempt": str(attempt), "modelops.dev/rank": str(rank)}}}


def test_logs_read_the_worker_of_the_newest_attempt() -> None:
    kube = fake(pod("digits-a0-w0", 0, 0), pod("digits-a0-w1", 0, 1), pod("digits-a1-w0", 1, 0),
                    pod("digits-a1-w1", 1, 1))
    assert commands.worker_pod(kube, "ml", "digits", 1) == ("digits-a1-w1", 1)
    with pytest.raises(commands.CommandError, match="attempt 1 has no worker of rank 5 \\(ranks: 0, 1\\)"):
        commands.worker_pod(kube, "ml", "digits", 5)
    with pytest.raises(commands.CommandError, match="no worker pods"):
        commands.worker_pod(fake(), "ml", "digits", 0)


def modified(obj: dict[str, Any], version: str) -> dict[str, Any]:
    changed = json.loads(json.dumps(obj))
    changed["metadata"]["resourceVersion"] = version
    return {"type": "MODIFIED", "object": changed}


def test_job_states_follow_the_watch_and_list_again_after_410() -> None:
    start = job(progress={"epoch": 1, "epochs": 2, "step": 5})
    middle = job(progress={"epoch": 2, "epochs": 2, "step": 12})
    done = job(phase="Succeeded", progress={"epoch": 2, "epochs": 2, "step": 20})
    kube = fake(start, watches=[
        [modified(middle, "11"), {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}],
        [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}],
        [modified(done, "30"), modified(done, "31")],
    ])
    states = list(job_states(kube, "ml", "digits"))
    assert [s["status"]["progress"]["step"] for s in states] == [5, 12, 5, 20]  # the re-list gives the first again
    assert kube.lists == 2 and kube.watches == []


def test_watch_job_exit_codes() -> None:
    failed = job(phase="Failed", conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                             "message": "too slow"}])
    out = io.StringIO()
    assert watch_job(fake(job(), watches=[[modified(failed, "2")]]), "ml", "digits", out, tty=False) == 1
    assert out.getvalue().splitlines()[-1] == "tj/digits failed: DeadlineExceeded: too slow"
    gone = fake(job(), watches=[[{"type": "DELETED", "object": job()}]])
    assert watch_job(gone, "ml", "digits", io.StringIO(), tty=False) == 2
    assert watch_job(fake(), "ml", "digits", io.StringIO(), tty=False) == 1
    unreachable = fake(job(), watches=[ApiError(403, "Forbidden", "no watch for you")])
    with pytest.raises(ApiError):
        watch_job(unreachable, "ml", "digits", io.StringIO(), tty=False)


def test_promote_and_abort_annotate_only_while_a_canary_runs(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    idle, rolling = service("idle"), service("rolling", **CANARY_STATUS)
    rolling["spec"]["rollout"]["steps"][1]["approval"] = True
    kube = fake(idle, rolling)
    monkeypatch.setattr(commands, "session", lambda args: commands.Session(kube, "ml"))
    assert commands.main(["promote", "ms", "idle"]) == 1
    assert "has no canary in progress: nothing to promote" in capsys.readouterr().err
    assert commands.main(["promote", "ms/rolling"]) == 0
    assert "approves step 2 (it waits for approval)" in capsys.readouterr().out
    assert commands.main(["abort", "ms", "rolling"]) == 0
    assert "the operator rolls it back" in capsys.readouterr().out
    assert kube.patches == [("ModelService", "rolling", {"metadata": {"annotations": {"modelops.dev/rollout": a}}})
                            for a in ("promote", "abort")]


def test_an_unreachable_api_server_is_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "gone",
              "clusters": [{"name": "gone", "cluster": {"server": "https://127.0.0.1:1"}}],
              "users": [{"name": "u", "user": {"token": "t"}}],
              "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u", "namespace": "ml"}}]}
    (tmp_path / "config").write_text(json.dumps(config))
    assert commands.main(["get", "--kubeconfig", str(tmp_path / "config")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach the API server: ")
    assert commands.main(["get", "--kubeconfig", str(tmp_path / "config"), "--context", "other"]) == 1
    assert "other" in capsys.readouterr().err


# ---- pools ------------------------------------------------------------------------------------------

MiB = 1 << 20
POOL_STATUS = {
    "phase": "Ready", "serversReady": "2/2", "models": 3, "copies": 4, "memory": "1.4Gi/2Gi",
    "totals": {"loads": 6, "unloads": 2, "evictions": 1},
    "servers": [
        {"name": "shared-s0", "ready": True, "bytesUsed": 900 * MiB, "capacityBytes": 1024 * MiB, "models": [
            {"name": "digits", "version": 2, "ready": True, "bytes": 600 * MiB, "measured": True,
             "lastInference": ago(30)},
            {"name": "churn", "version": 1, "ready": True, "bytes": 300 * MiB, "measured": True}]},
        {"name": "shared-s1", "ready": True, "draining": True, "bytesUsed": 556 * MiB, "capacityBytes": 1024 * MiB,
         "models": [{"name": "digits", "version": 3, "ready": True, "bytes": 256 * MiB, "measured": False},
                    {"name": "eu", "version": 1, "ready": False, "bytes": 300 * MiB, "leaving": True}]}],
    "unplaced": [{"modelService": "big", "model": "big", "version": 1, "reason": "TooLarge",
                  "message": "4Gi does not fit a server of 1Gi"}],
    "conditions": [{"type": "Ready", "status": "True", "reason": "Placed", "message": "every copy placed",
                    "lastTransitionTime": ago(600)}],
}


def model_pool(**status: Any) -> dict[str, Any]:
    return {"apiVersion": "modelops.dev/v1alpha1", "kind": "ModelPool",
            "metadata": {"name": "shared", "namespace": "ml", "uid": "mp-uid", "creationTimestamp": ago(3600)},
            "spec": {"capacity": "1Gi", "overcommit": 0.25, "minServers": 1, "maxServers": 4}, "status": status}


def pooled_service() -> dict[str, Any]:
    ms = service(phase="Progressing", modelVersion=2, ready="2/1",
                 stable={"name": "digits-v2", "version": 2, "replicas": 1, "readyReplicas": 1},
                 canary={"name": "digits-v3", "version": 3, "replicas": 1, "readyReplicas": 1, "step": 0,
                         "weight": 20, "startedAt": ago(40), "stepStartedAt": ago(40)},
                 pool={"name": "shared", "copies": 1, "servers": ["shared-s0", "shared-s1"],
                       "canaryServers": ["shared-s1"]})
    ms["spec"]["pool"] = "shared"
    return ms


def test_get_table_shows_pools_and_where_a_pooled_service_lives() -> None:
    lines = fmt.get_table([], [pooled_service()], NOW, pools=[model_pool(**POOL_STATUS)]).splitlines()
    assert lines[1].split() == ["ms/digits", "Progressing", "step", "1/2", "digits@mp/shared", "2", "v3", "20%", "2/1",
                                "120m"]
    assert lines[2].split() == ["mp/shared", "Ready", "1.4Gi/2Gi", "3", "models/4", "copies", "-", "-", "2/2", "60m"]


def test_get_lists_pools_and_tolerates_a_cluster_without_them(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    kube = fake(model_pool(**POOL_STATUS), pooled_service())
    monkeypatch.setattr(commands, "session", lambda args: commands.Session(kube, "ml"))
    assert commands.main(["get", "mp"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "mp/shared"

    class NoPools(FakeKube):
        def list_objects(self, api_version: str, kind: str, namespace: str | None, **kw: Any) -> Any:
            if kind == "ModelPool":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return super().list_objects(api_version, kind, namespace, **kw)

    monkeypatch.setattr(commands, "session", lambda args: commands.Session(NoPools(service()), "ml"))
    assert commands.main(["get"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["NAME", "ms/digits"]
    assert commands.main(["get", "mp"]) == 1  # asked for by name: the missing CRD is worth saying


def test_describe_of_a_pooled_service_shows_its_copies_on_the_pool_servers() -> None:
    data = fmt.describe_service_data(pooled_service(), [], [], [], model_pool(**POOL_STATUS))
    assert [(c["server"], c["version"], c["listed"]) for c in data["pool"]["copies"]] == [
        ("shared-s0", 2, True), ("shared-s1", 3, True)]
    assert [(r["name"], r["role"], r["weight"]) for r in data["revisions"]] == [
        ("digits-v2", "stable", 80), ("digits-v3", "canary", 20)]
    text = fmt.describe_service(data, NOW)
    lines = text.splitlines()
    assert "Serving:    version 2, 2/1 copies ready" in text
    assert "  mp/shared; its Service lists shared-s0, shared-s1" in lines
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["SERVER", "VERSION"])
    assert lines[header + 1].split() == ["shared-s0", "2", "true", "600Mi", "30s", "listed"]
    assert lines[header + 2].split() == ["shared-s1", "3", "true", "256Mi", "(declared)", "-", "listed"]
    json.dumps(data)


def test_describe_pool_shows_each_servers_memory_and_resident_copies(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    event = {"kind": "Event", "type": "Normal", "reason": "Evicted", "message": "churn:1 evicted from shared-s0",
             "metadata": {"name": "e1"}, "lastTimestamp": ago(30)}
    kube = fake(model_pool(**POOL_STATUS), event)
    monkeypatch.setattr(commands, "session", lambda args: commands.Session(kube, "ml"))
    assert commands.main(["describe", "mp/shared"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Scale:      2/2 servers ready (min 1, max 4), capacity 1Gi each, overcommit 0.25" in lines
    assert "Resident:   3 model versions, 4 copies, memory 1.4Gi/2Gi" in lines
    assert "Totals:     6 loads, 2 unloads, 1 evictions" in lines
    servers = lines.index("Servers:")
    assert lines[servers + 2].split() == ["shared-s0", "true", "-", "900Mi/1Gi", "2"]
    assert lines[servers + 3].split() == ["shared-s1", "true", "draining", "556Mi/1Gi", "2"]
    copies = lines.index("Copies:")
    assert [line.split()[:3] for line in lines[copies + 2:copies + 6]] == [
        ["shared-s0", "digits:2", "true"], ["shared-s0", "churn:1", "true"], ["shared-s1", "digits:3", "true"],
        ["shared-s1", "eu:1", "false"]]
    assert lines[copies + 5].split()[-1] == "leaving"
    assert "  big (big:1): TooLarge: 4Gi does not fit a server of 1Gi" in lines
    assert any("Evicted" in line for line in lines[lines.index("Events:"):])
    assert commands.main(["describe", "mp", "shared", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["evictions"] == 1


@pytest.mark.parametrize(("value", "text"), [(0, "0"), (1023, "1023"), (600 * MiB, "600Mi"), (1536 * MiB, "1.5Gi"),
                                             (3 << 30, "3Gi"), (None, "-")])
def test_sizes_print_like_quantities(value: Any, text: str) -> None:
    assert fmt.size(value) == text
