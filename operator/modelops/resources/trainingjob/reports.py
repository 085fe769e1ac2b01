"""What the trainer reports (rank 0's progress, the published model), checked before status shows it.

A report with wrong types or impossible values is ignored with a warning, never written."""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import ValidationError

from modelops.api.base import MODEL_NAME
from modelops.api.trainingjob import Progress, PublishedModel


def trainer_progress(recorded: Any, report: dict[str, Any] | None) -> tuple[Any, str]:
    """(status.progress, a warning or ''): the trainer's last report, else the progress status recorded."""
    if not report:
        return recorded, ""
    try:
        progress = Progress.model_validate(report).wire()
    except ValidationError as error:
        return recorded, f"ignored a progress report with wrong types: {_first_error(error)}"
    if not all(math.isfinite(v) for v in progress.values() if isinstance(v, float)):
        return recorded, "ignored a progress report with a non-finite number"
    return progress or recorded, ""


def published_model(report: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """(the model version the trainer says it published, a warning or ''); anything impossible (a version
    below 1, a name Triton cannot serve, a malformed signature) is never turned into a published version."""
    model = (report or {}).get("model")
    if not isinstance(model, dict):
        return None, ""
    accuracy = (report or {}).get("testAccuracy")
    try:
        published = PublishedModel.model_validate({**model, "testAccuracy": accuracy})
    except ValidationError as error:
        return None, f"ignored a published model report: {_first_error(error)}"
    if published.version < 1 or not re.fullmatch(MODEL_NAME, published.name) or \
            (published.test_accuracy is not None and not 0 <= published.test_accuracy <= 1):
        return None, f"ignored an impossible published model report: {published.name} version {published.version}"
    return published.wire(), ""


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    return f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
