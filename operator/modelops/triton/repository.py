"""Model-repository layout: numbered version directories under `<repository>/<model>/`."""

from __future__ import annotations

import re
from pathlib import Path

from modelops.triton.config import PYTHON_MODEL_FILE, python_model_source

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


def stage_python_model(repository: Path, model: str, version: int, config: str) -> Path:
    """Lay out `<repository>/<model>/` as a python-backend ModelService pod sees Triton's repository: `config`
    as config.pbtxt (its VERSION_DIRECTORY names the published version folder, kept apart) and the operator's
    runtime as `<version>/model.py`. For serving a version locally (tests, benches, the sample's README).
    Returns the model directory."""
    model_dir = Path(repository) / validate_model_name(model)
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    (model_dir / str(version) / PYTHON_MODEL_FILE).write_text(python_model_source())
    return model_dir
