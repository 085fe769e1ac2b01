"""Model-repository layout: numbered version directories under `<repository>/<model>/`."""

from __future__ import annotations

import re
from pathlib import Path

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VERSION = re.compile(r"^[1-9][0-9]*$")


def validate_model_name(name: str) -> str:
    """Return `name` if Triton and a file system accept it as a model directory, else raise ValueError."""
    if not _MODEL_NAME.match(name or ""):
        raise ValueError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-' "
                         "(at most 63, not starting with '.' or '-')")
    return name


def list_versions(model_dir: str | Path) -> list[int]:
    """The numeric version directories of a model, ascending; hidden and other entries are ignored."""
    path = Path(model_dir)
    if not path.is_dir():
        return []
    return sorted(int(p.name) for p in path.iterdir() if _VERSION.match(p.name) and p.is_dir())


def next_version(model_dir: str | Path) -> int:
    """One more than the highest existing version (1 for a new model)."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1
