"""The per-resource series the dashboards read: set from the published status, counted on change, and gone
with the resource (also one deleted while the watch was away)."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from modelops import metrics
from modelops.autoscale.prometheus import Prometheus
from modelops.controllers.trainingjob import TrainingJobController
from modelops.engine.engine import Engine, EngineOptions
from modelops.metrics import record_phase, record_status

PER_RESOURCE = ("modelops_trainingjob_progress_epoch", "modelops_trainingjob_progress_checkpointed_epoch",
                "modelops_trainingjob_progress_epochs",
                "modelops_trainingjob_progress_step", "modelops_trainingjob_loss", "modelops_trainingjob_val_accuracy",
                "modelops_trainingjob_samples_per_second", "modelops_trainingjob_restarts",
                "modelops_trainingjob_preemptions", "modelops_modelservice_replicas",
                "modelops_modelservice_canary_weight", "modelops_modelservice_model_version",
                "modelops_rollout_analysis_total", "modelops_autoscale_decisions_total", "modelops_modelpool_servers",
                "modelops_modelpool_copies", "modelops_modelpool_models", "modelops_modelpool_memory_bytes",
                "modelops_modelpool_operations", "modelops_modelpool_unplaced")


def value(metric: str, namespace: str, name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"namespace": namespace, "name": name, **labels})


def series_of(namespace: str, name: str) -> list[str]:
    """Every sample of one resource in the whole registry (what a scrape would show of it)."""
    return [f"{s.name}{s.labels}" for family in REGISTRY.collect() for s in family.samples
            if s.labels.get("namespace") == namespace and s.labels.get("name") == name]


def job_status(phase: str, epoch: int, restarts: int = 0, preemptions: int | None = None) -> dict[str, Any]:
    return {"phase": phase, "restarts": restarts, **({"preemptions": preemptions} if preemptions is not None else {}),
            "progress": {"epoch": epoch, "checkpointedEpoch": epoch - 1, "epochs": 5, "step": 40 * epoch,
                         "loss": 0.5 / epoch,
                         "valAccuracy": 0.8, "samplesPerSecond": 1200.0}}


def test_training_series_follow_the_status_and_go_with_the_job() -> None:
    record_phase("TrainingJob", "ml", "digits", "Running")
    record_status("TrainingJob", "ml", "digits", job_status("Running", 2))
    assert value("modelops_trainingjob_progress_epoch", "ml", "digits") == 2
    assert value("modelops_trainingjob_progress_checkpointed_epoch", "ml", "digits") == 1  # what a preemption keeps
    assert value("modelops_trainingjob_progress_epochs", "ml", "digits") == 5
    assert value("modelops_trainingjob_progress_step", "ml", "digits") == 80
    assert value("modelops_trainingjob_samples_per_second", "ml", "digits") == 1200
    assert value("modelops_trainingjob_restarts", "ml", "digits") == 0
    assert value("modelops_trainingjob_preemptions", "ml", "digits") == 0  # not in status yet: 0, not "no data"

    record_status("TrainingJob", "ml", "digits", job_status("Succeeded", 5, restarts=1, preemptions=2))
    assert value("modelops_trainingjob_progress_epoch", "ml", "digits") == 5
    assert value("modelops_trainingjob_restarts", "ml", "digits") == 1
    assert value("modelops_trainingjob_preemptions", "ml", "digits") == 2
    # a finished job's last throughput is not current throughput: its series ends
    assert value("modelops_trainingjob_samples_per_second", "ml", "digits") is None

    record_phase("TrainingJob", "ml", "digits", None)
    assert series_of("ml", "digits") == []


def test_only_namespace_and_name_label_a_job() -> None:
    record_phase("TrainingJob", "ml", "labels", "Running")
    record_status("TrainingJob", "ml", "labels", job_status("Running", 1))
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.labels.get("name") == "labels":
                assert set(sample.labels) == {"namespace", "name"}, sample
    record_phase("TrainingJob", "ml", "labels", None)


def test_an_unchanged_status_changes_nothing() -> None:
    record_phase("TrainingJob", "ml", "same", "Running")
    record_status("TrainingJob", "ml", "same", job_status("Running", 1))
    recorded = metrics._recorded[("TrainingJob", "ml", "same")]
    gauges = recorded.gauges
    record_status("TrainingJob", "ml", "same", job_status("Running", 1))
    assert metrics._recorded[("TrainingJob", "ml", "same")] is recorded and recorded.gauges is gauges
    record_phase("TrainingJob", "ml", "same", None)


def service_status(*, analysed_at: str | None = None, verdict: str = "Passed", desired: int = 1,
                   canary: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Ready", "replicas": desired, "readyReplicas": desired, "modelVersion": 3,
                              "autoscaling": {"desiredReplicas": desired}}
    if analysed_at:
        status["lastAnalysis"] = {"time": analysed_at, "verdict": verdict}
    if canary is not None:
        status["canary"] = {"name": "rev", "weight": canary}
    return status


def test_service_series_count_new_analyses_and_scaling_decisions() -> None:
    record_phase("ModelService", "web", "ms", "Ready")
    # the first status seen (e.g. after a restart) is old news: nothing counted, the directions start at 0
    record_status("ModelService", "web", "ms", service_status(analysed_at="2026-01-01T00:00:00Z", desired=1))
    assert value("modelops_rollout_analysis_total", "web", "ms", verdict="Passed") is None
    assert value("modelops_autoscale_decisions_total", "web", "ms", direction="up") == 0
    assert value("modelops_autoscale_decisions_total", "web", "ms", direction="down") == 0
    assert value("modelops_modelservice_replicas", "web", "ms", state="desired") == 1
    assert value("modelops_modelservice_canary_weight", "web", "ms") == 0
    assert value("modelops_modelservice_model_version", "web", "ms") == 3

    # a canary: its verdicts exist at 0 before the first analysis (so increase() sees the first one)
    record_status("ModelService", "web", "ms", service_status(analysed_at="2026-01-01T00:00:00Z", desired=2, canary=50))
    assert value("modelops_modelservice_canary_weight", "web", "ms") == 50
    assert value("modelops_autoscale_decisions_total", "web", "ms", direction="up") == 1
    assert {v: value("modelops_rollout_analysis_total", "web", "ms", verdict=v)
            for v in ("Passed", "Failed", "Inconclusive")} == {"Passed": 0, "Failed": 0, "Inconclusive": 0}
    record_status("ModelService", "web", "ms", service_status(analysed_at="2026-01-01T00:01:00Z", desired=2, canary=50))
    record_status("ModelService", "web", "ms", service_status(analysed_at="2026-01-01T00:01:00Z", desired=2, canary=50))
    record_status("ModelService", "web", "ms", service_status(analysed_at="2026-01-01T00:02:00Z", verdict="Failed",
                                                              desired=1))
    assert value("modelops_rollout_analysis_total", "web", "ms", verdict="Passed") == 1
    assert value("modelops_rollout_analysis_total", "web", "ms", verdict="Failed") == 1
    assert value("modelops_autoscale_decisions_total", "web", "ms", direction="down") == 1

    record_phase("ModelService", "web", "ms", None)
    assert series_of("web", "ms") == []


class ListsNothing:
    """The API as a resync sees it after a resource was deleted while the watch was away."""

    def has_kind(self, api_version: str, kind: str) -> bool:
        return True

    def list_objects(self, api_version: str, kind: str, namespace: str | None, **_: Any) -> tuple[list[Any], str]:
        return [], "100"


def test_a_resource_deleted_while_the_watch_was_away_loses_its_series() -> None:
    kube: Any = ListsNothing()
    engine = Engine(kube, Prometheus(""), [TrainingJobController()], EngineOptions())
    engine.caches.store("TrainingJob").upsert({"apiVersion": "modelops.dev/v1alpha1", "kind": "TrainingJob",
                                               "metadata": {"name": "gone", "namespace": "ml", "uid": "u2",
                                                            "resourceVersion": "50"}})
    # other tests in this process may have left Running jobs counted: compare with what was there before
    running_before = REGISTRY.get_sample_value("modelops_resources", {"kind": "TrainingJob", "phase": "Running"}) or 0
    record_phase("TrainingJob", "ml", "gone", "Running")
    record_status("TrainingJob", "ml", "gone", job_status("Running", 1))
    engine.resync()
    assert len(engine.queue) == 1  # the pruned key gets a pass, which finds it gone and forgets it
    engine._reconcile(("TrainingJob", "ml", "gone"))
    assert series_of("ml", "gone") == []
    assert (REGISTRY.get_sample_value("modelops_resources", {"kind": "TrainingJob", "phase": "Running"}) or 0) \
        == running_before


def test_every_per_resource_family_is_exposed_with_help() -> None:
    names = {family.name for family in REGISTRY.collect()}
    assert {n.removesuffix("_total") for n in PER_RESOURCE} <= names


def test_pool_series_follow_its_status_and_go_with_it() -> None:
    status = {"replicas": 2, "readyServers": 1, "copies": 3, "models": 2,
              "servers": [{"name": "p-s0", "bytesUsed": 600, "capacityBytes": 1000},
                          {"name": "p-s1", "bytesUsed": 300, "capacityBytes": 1000}],
              "totals": {"loads": 4, "unloads": 1, "evictions": 1},
              "unplaced": [{"modelService": "x", "model": "x", "reason": "NoRoom"}]}
    record_status("ModelPool", "ml", "p", status)
    assert value("modelops_modelpool_servers", "ml", "p", state="desired") == 2
    assert value("modelops_modelpool_servers", "ml", "p", state="ready") == 1
    assert value("modelops_modelpool_copies", "ml", "p") == 3
    assert value("modelops_modelpool_memory_bytes", "ml", "p", state="used") == 900
    assert value("modelops_modelpool_memory_bytes", "ml", "p", state="capacity") == 2000
    assert value("modelops_modelpool_operations", "ml", "p", operation="evictions") == 1
    assert value("modelops_modelpool_unplaced", "ml", "p") == 1
    record_phase("ModelPool", "ml", "p", None)
    assert series_of("ml", "p") == []
