"""The trainer's command line on bad input: non-zero exit, one clear line on stderr, no traceback, nothing published."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run_trainer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MODELOPS_MODEL_NAME", None)
    return subprocess.run([sys.executable, "-m", "modelops.trainer", *args, "--log-level", "ERROR"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("python -m modelops.trainer: error: ") and fragment in lines[0], lines[0]


def nothing_published(repository: Path) -> bool:
    return not any(p.name.isdigit() or p.name.startswith(".publishing") for p in repository.rglob("*"))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "ok.csv").write_text("a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n")
    (tmp_path / "nan.csv").write_text("a,b,label\n,,x\nnan,NA,y\n")
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 2)))
    return tmp_path


@pytest.mark.parametrize("args, fragment", [
    (["--data-path", "missing.csv", "--label-column", "label"], "data file missing.csv does not exist"),
    (["--data-path", "ok.csv", "--label-column", "target"], "label column 'target' not in ok.csv"),
    (["--data-path", "ok.csv"], "--label-column is required"),
    (["--data-path", "nan.csv", "--label-column", "label"], "no usable rows left"),
    (["--data-path", "nan.csv", "--label-column", "label", "--missing", "fill"], "no values at all"),
    (["--data-path", "noy.npz"], "must hold arrays 'x' and 'y'"),
    (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist'"),
    (["--dataset", "digits", "--model", "rnn"], "argument --model: invalid choice: 'rnn'"),
    (["--dataset", "digits", "--model", "gru"], "model gru does not fit image data"),
    (["--dataset", "synthetic-sequence", "--model", "mlp"], "use --model gru or transformer"),
    (["--dataset", "synthetic-sequence", "--model", "transformer", "--embedding-dim", "10", "--heads", "4"],
     "--embedding-dim 10 must be a multiple of --heads 4"),
    (["--data-path", "ok.csv", "--label-column", "label", "--model", "gru"], "a sequence .csv has two columns"),
    (["--dataset", "digits", "--epochs", "0"], "argument --epochs: 0 must be >= 1"),
    (["--dataset", "digits", "--hidden-sizes", "64,x"], "not a comma-separated list"),
    ([], "one of the arguments --dataset --data-path is required"),
])
def test_bad_input_fails_fast_with_one_line(files: Path, args: list[str], fragment: str) -> None:
    result = run_trainer(*args, "--repository", str(files / "repo"), "--model-name", "m", cwd=files)
    assert_one_line_error(result, fragment)
    assert nothing_published(files)


def test_missing_model_name(files: Path) -> None:
    assert_one_line_error(run_trainer("--dataset", "digits", "--repository", str(files), cwd=files),
                          "--model-name is required")


def test_unwritable_repository(files: Path) -> None:
    result = run_trainer("--dataset", "synthetic-tabular", "--repository", str(files / "ok.csv"),
                         "--model-name", "m", "--checkpoint-dir", str(files / "ckpt"), cwd=files)
    assert_one_line_error(result, "is not writable: Not a directory")
    assert nothing_published(files)
