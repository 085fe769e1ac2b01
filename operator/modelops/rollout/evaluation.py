"""The evaluation gate (pure): what a revision's evaluation pod reported, judged against the gate's rules.

The candidate is scored on its own held-out set and on evidence it did not produce (the stable version's
held-out set, the spec's reference set); a regression beyond maxRegression on any of them refuses it, and a
candidate that matches stable on its own set but loses on the others is refused as a likely data or label
shift: its training data disagrees with the data the stable version was checked on.

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


SET_NAMES = ("candidate", "stable", "reference")
SET_WORDS = {"candidate": "its own held-out set", "stable": "the stable version's held-out set",
             "reference": "the reference set"}


@dataclass(frozen=True)
class SetScore:
    """Both revisions on one evaluation set, as the pod measured them (the same rows for both)."""

    name: str
    """candidate (the version's own held-out set), stable (the stable version's) or reference."""
    source: str = ""
    accuracy: float | None = None
    stable_accuracy: float | None = None
    samples: int = 0
    sha256: str = ""
    note: str = ""

    @property
    def gap(self) -> float:
        """How far the candidate is below stable on this set (0 when not both were scored)."""
        if self.accuracy is None or self.stable_accuracy is None:
            return 0.0
        return self.stable_accuracy - self.accuracy

    @property
    def label(self) -> str:
        return f"{SET_WORDS[self.name]} ({self.source})" if self.source else SET_WORDS[self.name]

    def to_dict(self) -> dict[str, Any]:
        fields = {"name": self.name, "source": self.source, "sha256": self.sha256 or None, "note": self.note or None,
                  "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
                  "stableAccuracy": None if self.stable_accuracy is None else round(self.stable_accuracy, 6),
                  "samples": self.samples or None}
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class Report:
    """What an evaluation pod wrote to its termination message."""

    sets: tuple[SetScore, ...] = ()
    skipped: str = ""
    failed: str = ""
    """The model answered with errors, or the reference set is missing or not the pinned file."""
    lineage: dict[str, Any] | None = None

    @property
    def own(self) -> SetScore | None:
        """The candidate's own held-out set, when it was scored."""
        return next((s for s in self.sets if s.name == "candidate" and s.accuracy is not None), None)


def _score(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        raise ValueError(key)
    return float(value)


def _set(data: Any) -> SetScore:
    if not isinstance(data, dict) or data.get("name") not in SET_NAMES:
        raise ValueError("set")
    scored = SetScore(name=data["name"], source=str(data.get("source") or "")[:300],
                      accuracy=_score(data, "accuracy"), stable_accuracy=_score(data, "stableAccuracy"),
                      samples=int(data.get("samples") or 0), sha256=str(data.get("sha256") or "")[:64],
                      note=str(data.get("note") or "")[:500])
    if (scored.accuracy is not None or scored.stable_accuracy is not None) and scored.samples < 1:
        raise ValueError("samples")
    return scored


def parse_report(message: str) -> Report | None:
    """The pod's JSON report, or None when it is missing, not JSON, or has impossible numbers."""
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    sets = data.get("sets")
    if sets is None and "accuracy" in data:  # an evaluator from before per-set reports: its own set only
        sets = [{**data, "name": "candidate"}]
    try:
        if not isinstance(sets or [], list) or len(sets or []) > len(SET_NAMES):
            return None
        report = Report(sets=tuple(_set(s) for s in sets or []), skipped=str(data.get("skipped") or "")[:500],
                        failed=str(data.get("failed") or "")[:500],
                        lineage=data["lineage"] if isinstance(data.get("lineage"), dict) else None)
    except (ValueError, TypeError):
        return None
    if len({s.name for s in report.sets}) != len(report.sets):
        return None
    if not (report.skipped or report.failed) and not any(s.accuracy is not None for s in report.sets):
        return None
    return report


def judge(report: Report, gate: EvaluationGate, *, stable: str | None) -> dict[str, Any]:
    """The record of a finished evaluation: verdict, each set's two scores, and why in words."""
    if report.skipped:
        return {"verdict": "Skipped", "message": f"evaluation gate skipped: {report.skipped}"}
    if report.failed:
        return {"verdict": "Failed", "message": report.failed}
    scored = [s for s in report.sets if s.accuracy is not None]
    compared = [s for s in scored if s.stable_accuracy is not None]
    record: dict[str, Any] = {"metric": "accuracy", "sets": [s.to_dict() for s in report.sets]}
    if own := report.own:
        record |= {"accuracy": round(own.accuracy or 0.0, 6), "samples": own.samples, "sha256": own.sha256 or None}
        if own.stable_accuracy is not None:
            record["stableAccuracy"] = round(own.stable_accuracy, 6)
    if compared:
        record["stableRevision"] = stable
    worse = [s for s in compared if round(s.gap, 9) > gate.max_regression]  # exactly maxRegression below passes
    floor = gate.min_accuracy
    below = [s for s in scored if floor is not None and (s.accuracy or 0.0) < floor]
    reasons = []
    if worse:
        reasons.append(_regression(worse, own, compared, gate.max_regression))
    if below:
        reasons.append(f"below minAccuracy {floor} on {_names(below)}")
    if not reasons:
        reasons.append(_passed(report, compared, stable, gate.max_regression))
    scores = "; ".join(_scores(s) for s in report.sets)
    versus = f" (candidate vs stable {stable})" if compared else ""
    message = f"{'; '.join(reasons)}. Scores{versus}: {scores}"
    return {k: v for k, v in record.items() if v is not None} | \
        {"verdict": "Failed" if worse or below else "Passed", "message": message}


def _names(sets: list[SetScore]) -> str:
    return " and ".join(s.label for s in sets)


def _regression(worse: list[SetScore], own: SetScore | None, compared: list[SetScore], max_regression: float) -> str:
    gap = max(s.gap for s in worse)
    independent = [s for s in worse if s.name != "candidate"]
    # Its own set says it is as good as stable there (or, with no stable score there, as good as stable elsewhere).
    bar = own.stable_accuracy if own and own.stable_accuracy is not None else \
        max((s.stable_accuracy or 0.0 for s in independent), default=1.0)
    if independent and own is not None and own not in worse and (own.accuracy or 0.0) >= bar - max_regression:
        versus = f" (stable {own.stable_accuracy:.4f})" if own.stable_accuracy is not None else ""
        return (f"likely data or label shift: on its own held-out set it scores {own.accuracy:.4f}{versus}, but on "
                f"{_names(independent)} it is up to {gap:.4f} worse than stable (maxRegression {max_regression}): "
                f"the data it was trained and tested on disagrees with data the stable version was checked on "
                f"(labels shifted or permuted, features swapped or rescaled?); check the new data before rolling "
                f"it out")
    if len(worse) > 1 and worse == compared:
        return (f"worse than stable on every set both were scored on, by up to {gap:.4f} "
                f"(maxRegression {max_regression})")
    return f"{gap:.4f} worse than stable on {_names(worse)} (maxRegression {max_regression})"


def _passed(report: Report, compared: list[SetScore], stable: str | None, max_regression: float) -> str:
    independent = any(s.name != "candidate" and s.accuracy is not None for s in report.sets)
    alone = "" if independent else ", and it has been scored on its own held-out set only"
    if compared:
        return f"no worse than stable (maxRegression {max_regression}) on {_names(compared)}{alone}"
    if stable is None:
        return f"first version: no stable revision to compare with{alone}"
    return f"not compared with stable {stable}: no ready stable pod, or no set both could take{alone}"


def _scores(s: SetScore) -> str:
    if s.accuracy is None:
        return f"{s.label}: not scored ({s.note})"
    text = f"{s.label}: {s.accuracy:.4f}"
    if s.stable_accuracy is not None:
        text += f" vs {s.stable_accuracy:.4f}"
    return text + f" on {s.samples} samples" + (f" ({s.note})" if s.note else "")


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
