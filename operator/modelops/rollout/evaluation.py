"""The evaluation gate (pure): what a revision's evaluation pod reported, judged against the gate's rules.

The verdict is recorded on the revision's Deployment (annotation modelops.dev/evaluation), so it is rebuilt
from the world after a restart and outlives the evaluation pod, which is deleted once read."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from modelops.clock import parse_rfc3339, rfc3339

from modelops.api.modelservice import EvaluationGate

ANNOTATION_EVALUATION = "modelops.dev/evaluation"
ANNOTATION_LINEAGE = "modelops.dev/lineage"
MAX_ATTEMPTS = 3
"""Evaluation pods that end without a report (the pod could not reach Triton, ...) before the gate fails."""

Verdict = Literal["Pending", "Passed", "Failed", "Skipped"]
FINAL: frozenset[str] = frozenset({"Passed", "Failed", "Skipped"})


@dataclass(frozen=True)
class Report:
    """What an evaluation pod wrote to its termination message."""

    accuracy: float | None = None
    stable_accuracy: float | None = None
    samples: int = 0
    sha256: str = ""
    trained_accuracy: float | None = None
    skipped: str = ""
    failed: str = ""
    """The model answered the held-out set with errors."""
    lineage: dict[str, Any] | None = None


def parse_report(message: str) -> Report | None:
    """The pod's JSON report, or None when it is missing, not JSON, or has impossible numbers."""
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None

    def score(key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 1:
            raise ValueError(key)
        return float(value)

    try:
        report = Report(accuracy=score("accuracy"), stable_accuracy=score("stableAccuracy"),
                        samples=int(data.get("samples") or 0), sha256=str(data.get("sha256") or "")[:64],
                        trained_accuracy=score("trainedAccuracy"), skipped=str(data.get("skipped") or "")[:500],
                        failed=str(data.get("failed") or "")[:500],
                        lineage=data["lineage"] if isinstance(data.get("lineage"), dict) else None)
    except (ValueError, TypeError):
        return None
    if not (report.skipped or report.failed) and (report.accuracy is None or report.samples < 1):
        return None
    return report


def judge(report: Report, gate: EvaluationGate, *, stable: str | None) -> dict[str, Any]:
    """The record of a finished evaluation: verdict, both scores and why."""
    if report.skipped:
        return {"verdict": "Skipped", "message": f"evaluation gate skipped: {report.skipped}"}
    if report.failed:
        return {"verdict": "Failed", "message": report.failed}
    assert report.accuracy is not None
    record: dict[str, Any] = {"accuracy": round(report.accuracy, 6), "samples": report.samples,
                              "sha256": report.sha256, "metric": "accuracy"}
    if report.stable_accuracy is not None:
        record |= {"stableAccuracy": round(report.stable_accuracy, 6), "stableRevision": stable}
    scores = f"accuracy {report.accuracy:.4f} on {report.samples} held-out samples"
    if report.stable_accuracy is not None:
        scores += f", stable {stable} {report.stable_accuracy:.4f} on the same set"
    if gate.min_accuracy is not None and report.accuracy < gate.min_accuracy:
        return record | {"verdict": "Failed",
                         "message": f"{scores}: below minAccuracy {gate.min_accuracy}"}
    if report.stable_accuracy is not None and report.accuracy < report.stable_accuracy - gate.max_regression:
        return record | {"verdict": "Failed", "message": f"{scores}: {report.stable_accuracy - report.accuracy:.4f} "
                                                         f"worse than stable (maxRegression {gate.max_regression})"}
    if report.stable_accuracy is None and stable:
        scores += " (no ready stable pod to compare with)"
    return record | {"verdict": "Passed", "message": scores}


RETRY_SECONDS = 10.0
"""Wait before the next evaluation pod: this much times the attempts so far."""


def failed_attempt(record: dict[str, Any] | None, why: str, now: datetime) -> dict[str, Any]:
    """An evaluation pod ended without a report: try again after a pause, until MAX_ATTEMPTS."""
    attempts = int((record or {}).get("attempts") or 0) + 1
    if attempts >= MAX_ATTEMPTS:
        return {"verdict": "Failed", "attempts": attempts,
                "message": f"evaluation failed {attempts} times; last: {why}"}
    return {"verdict": "Pending", "attempts": attempts, "message": f"evaluation attempt {attempts} failed: {why}",
            "retryAfter": rfc3339(now + timedelta(seconds=RETRY_SECONDS * attempts))}


def retry_in(record: dict[str, Any] | None, now: datetime) -> float:
    """Seconds until the next evaluation pod may start (0: now)."""
    try:
        moment = parse_rfc3339(str((record or {}).get("retryAfter") or ""))
    except ValueError:
        return 0.0
    return max(0.0, (moment - now).total_seconds())


def read(annotations: dict[str, str]) -> dict[str, Any] | None:
    """The record on a revision Deployment (None: the revision is not gated)."""
    try:
        record = json.loads(annotations.get(ANNOTATION_EVALUATION, ""))
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("verdict") not in ("Pending", *FINAL):
        return None
    return record


def read_lineage(annotations: dict[str, str]) -> dict[str, Any]:
    try:
        lineage = json.loads(annotations.get(ANNOTATION_LINEAGE, ""))
    except ValueError:
        return {}
    return lineage if isinstance(lineage, dict) else {}


def encode(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
