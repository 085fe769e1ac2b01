"""The sample version checked in at model_repo/digits/1 is what the current trainer publishes: its README's
recipe, run again, gives the same files and the same metadata, weights and timings aside."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "model_repo"
VARIES = {("createdAt",), ("uri",), ("framework",), ("metrics",), ("evaluation", "accuracy"),
          ("trainer", "stateSha256"), ("trainer", "device"), ("trainer", "args", "repository"),
          ("trainer", "args", "checkpoint_dir")}
"""What differs between two runs of the recipe, or between machines: the time, paths, the Python/torch build,
the device `--device auto` picks, and what follows from the weights (float rounding differs between CPUs)."""


def recipe(repository: Path, checkpoints: Path) -> list[str]:
    """The trainer command of model_repo/README.md's "Regenerate" section, writing to `repository`."""
    text = (SAMPLE / "README.md").read_text()
    match = re.search(r"^OMP_NUM_THREADS=1 (python -m modelops\.trainer [^`]*)```", text, re.M)
    assert match, "model_repo/README.md has no trainer command"
    argv = shlex.split(match.group(1).replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "modelops.trainer"] and "model_repo" in argv
    paths = {"--repository": str(repository), "--checkpoint-dir": str(checkpoints)}
    return [sys.executable, *(paths.get(flag, arg) for flag, arg in zip(argv, argv[1:]))]


def comparable(document: Any, path: tuple[str, ...] = ()) -> Any:
    """`document` with the VARIES values replaced by their type (so their presence is still compared)."""
    if path in VARIES:
        return type(document).__name__
    if isinstance(document, dict):
        return {key: comparable(value, (*path, key)) for key, value in document.items()}
    return document


def test_the_sample_is_what_the_trainer_publishes(tmp_path: Path) -> None:
    command = recipe(tmp_path / "model_repo", tmp_path / "checkpoints")
    run = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]

    fresh, sample = tmp_path / "model_repo" / "digits", SAMPLE / "digits"

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("."))
    assert files(sample) == files(fresh) == ["1", "1/eval.npz", "1/metadata.json", "1/model.pt", "config.pbtxt"]
    assert (sample / "config.pbtxt").read_text() == (fresh / "config.pbtxt").read_text()
    assert (sample / "1" / "eval.npz").read_bytes() == (fresh / "1" / "eval.npz").read_bytes()
    published = json.loads((fresh / "1" / "metadata.json").read_text())
    checked_in = json.loads((sample / "1" / "metadata.json").read_text())
    assert comparable(checked_in) == comparable(published)
