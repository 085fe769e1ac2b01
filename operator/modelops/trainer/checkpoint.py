"""Atomic checkpoint files on the output volume and the marker of a finished, published run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modelops.trainer.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PUBLISHED_FILE = "published.json"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """torch.save `state` to `<directory>/checkpoint.pt` atomically."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = directory / CHECKPOINT_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint, or None when there is none or it cannot be read (then training starts fresh)."""
    import torch

    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        # our own file on our own volume; it holds RNG states, which weights_only rejects
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        return state
    except Exception as exc:  # a corrupt checkpoint must not block a retrain
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None


def read_published(directory: Path) -> dict[str, Any] | None:
    """The marker a finished run leaves after publishing, so a restarted pod does not publish twice."""
    try:
        data: dict[str, Any] = json.loads((directory / PUBLISHED_FILE).read_text())
        return data
    except (OSError, ValueError):
        return None


def write_published(directory: Path, data: dict[str, Any]) -> None:
    """Record the published version for this run."""
    atomic_write_bytes(directory / PUBLISHED_FILE, json.dumps(data, indent=2).encode())


def clear(directory: Path) -> None:
    """Remove this run's checkpoint and marker (for --no-resume)."""
    for name in (CHECKPOINT_FILE, PUBLISHED_FILE):
        (directory / name).unlink(missing_ok=True)
