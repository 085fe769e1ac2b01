"""The evaluation gate on real models: versions trained for real by the trainer on two data drops, each served by
the real tritonserver (one server per version, as one pod per revision), scored by the evaluation pod's program
with the arguments and mounts the operator gives the pod, and judged by the operator's judge.

A new data drop whose pipeline broke (labels permuted, image rows and columns swapped, features rescaled
upstream) trains a model that looks excellent on its own held-out set; it is refused before traffic because it
loses on the stable version's held-out set and on the reference set. A version genuinely better on every set
passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelops.api.modelservice import ModelServiceSpec
from modelops.resources import modelservice as build
from modelops.rollout import evaluation
from modelops.triton.config import render_config
from modelops.triton.repository import stage_python_model
from modelops.triton.server import TritonServer, find_triton
from modelops.triton.signature import load_signature

pytestmark = [pytest.mark.triton, pytest.mark.slow,
              pytest.mark.skipif(find_triton() is None, reason="tritonserver binary absent (pip install nvidia-pytriton)")]

MS = build.ServiceMeta("digits", "ml", "uid-1", 1)
REFERENCE = "reference/digits.npz"
PERMUTATION = np.random.default_rng(3).permutation(10)
"""The broken pipeline's label mapping: no class keeps its label."""
assert not (PERMUTATION == np.arange(10)).any()

BROKEN = {
    "labels permuted": lambda x, y: (x, PERMUTATION[y]),
    "image rows and columns swapped": lambda x, y: (x.transpose(0, 1, 3, 2).copy(), y),
    "features rescaled upstream": lambda x, y: (x / 16.0, y),
}


def train(repository: Path, data: Path, epochs: int, seed: int = 0) -> int:
    """Train on `data` with the trainer's command line and publish the next version; return its number."""
    run = subprocess.run(
        [sys.executable, "-m", "modelops.trainer", "--data-path", str(data), "--epochs", str(epochs),
         "--batch-size", "32", "--lr", "0.003", "--seed", str(seed), "--num-threads", "1",
         "--repository", str(repository), "--model-name", "digits",
         "--checkpoint-dir", str(repository.parent / "checkpoints" / data.stem)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    final = [json.loads(line.removeprefix("PROGRESS ")) for line in run.stdout.splitlines()
             if line.startswith("PROGRESS ")][-1]
    return int(final["model"]["version"])


def serve(repository: Path, version: int, root: Path) -> TritonServer:
    """A Triton serving one published version the way a python-backend revision pod does."""
    version_dir = repository / "digits" / str(version)
    config = render_config("digits", load_signature(version_dir), backend="python", max_batch_size=64,
                           instance_kind="KIND_CPU", version=version, version_directory=str(version_dir))
    serving = root / f"serving-{version}"
    stage_python_model(serving, "digits", version, config)
    return TritonServer(serving, models=["digits"], env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Digits split three ways: a curated reference set (in the repository, with its class names), the data
    drop the stable version 1 was trained on, and a new drop for the candidates. The stable revision serves."""
    from modelops.trainer.data import load_builtin

    root = tmp_path_factory.mktemp("gate")
    repository = root / "models"
    raw = load_builtin("digits", 0)
    order = np.random.default_rng(7).permutation(len(raw.labels))
    reference, first, second = order[:240], order[240:1020], order[1020:]
    (repository / "reference").mkdir(parents=True)
    np.savez(repository / REFERENCE, x=raw.x[reference], y=raw.labels[reference], classes=np.array(raw.class_names))
    np.savez(root / "drop-1.npz", x=raw.x[first], y=raw.labels[first])
    drop = {"x": raw.x[second], "y": raw.labels[second]}
    assert train(repository, root / "drop-1.npz", epochs=4) == 1
    with serve(repository, 1, root) as stable:
        yield {"root": root, "repository": repository, "drop": drop, "stable": stable}


def gate_verdict(world: dict[str, Any], version: int, candidate: TritonServer) -> dict[str, Any]:
    """Run the evaluation pod the operator builds for this candidate (its version folders and reference file
    are the repository's own here) and judge its report as the operator does."""
    spec = ModelServiceSpec.model_validate({
        "model": {"name": "digits", "version": version, "signature": {
            k: v for k, v in json.loads((world["repository"] / "digits" / str(version) / "metadata.json")
                                        .read_text())["signature"].items() if k in ("inputs", "outputs")}},
        "repository": {"hostPath": {"path": str(world["repository"])}},
        "rollout": {"gates": {"evaluation": {"referenceSet": {"path": REFERENCE}}}}})
    pod = build.evaluation_pod(MS, spec, f"digits-v{version}-abcde", version, "trainer:1",
                               candidate=candidate.http_url.removeprefix("http://"),
                               stable=(world["stable"].http_url.removeprefix("http://"), 1))
    [container] = pod["spec"]["containers"]
    mounted = {m["mountPath"]: world["repository"] / m["subPath"] for m in container["volumeMounts"]}
    args = [str(mounted.get(a, a)) for a in container["args"]]
    report = world["root"] / f"report-{version}.json"
    run = subprocess.run([sys.executable, "-m", "modelops.trainer.evaluate", *args, "--report", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    parsed = evaluation.parse_report(report.read_text())
    assert parsed is not None, report.read_text()
    return evaluation.judge(parsed, spec.rollout.gates.evaluation, stable="digits-v1-abcde")


def scores(record: dict[str, Any]) -> dict[str, tuple[float, float, int]]:
    return {s["name"]: (s["accuracy"], s["stableAccuracy"], s["samples"]) for s in record["sets"]}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_a_candidate_trained_on_a_broken_data_drop_is_refused_with_both_scores(world: dict[str, Any],
                                                                              breakage: str) -> None:
    x, y = BROKEN[breakage](world["drop"]["x"], world["drop"]["y"])
    data = world["root"] / f"{breakage.replace(' ', '-')}.npz"
    np.savez(data, x=x, y=y)
    version = train(world["repository"], data, epochs=8)
    with serve(world["repository"], version, world["root"]) as candidate:
        record = gate_verdict(world, version, candidate)
    measured = scores(record)
    print(breakage, json.dumps(measured), record["message"], sep="\n")
    assert record["verdict"] == "Failed", record["message"]
    own, stables, reference = measured["candidate"], measured["stable"], measured["reference"]
    # it learned its broken drop well, and its own exam says it beats the stable version...
    assert own[0] >= 0.8 and own[0] > own[1]
    # ...while on evidence it did not produce it loses, far beyond maxRegression (0.01)
    assert stables[0] < stables[1] - 0.1 and reference[0] < reference[1] - 0.1
    assert record["message"].startswith(f"likely data or label shift: on its own held-out set it scores "
                                        f"{own[0]:.4f} (stable {own[1]:.4f}), but on the stable version's held-out "
                                        f"set (version 1) and the reference set ({REFERENCE}) it is up to "), \
        record["message"]
    for accuracy, stable_accuracy, samples in measured.values():
        assert f"{accuracy:.4f} vs {stable_accuracy:.4f} on {samples} samples" in record["message"]


def test_a_candidate_better_on_every_set_passes(world: dict[str, Any]) -> None:
    data = world["root"] / "drop-2.npz"
    np.savez(data, **world["drop"])
    version = train(world["repository"], data, epochs=12)
    with serve(world["repository"], version, world["root"]) as candidate:
        record = gate_verdict(world, version, candidate)
    measured = scores(record)
    print(json.dumps(measured), record["message"], sep="\n")
    assert record["verdict"] == "Passed", record["message"]
    assert set(measured) == {"candidate", "stable", "reference"}
    assert all(accuracy > stable_accuracy for accuracy, stable_accuracy, _ in measured.values())
    assert record["message"].startswith("no worse than stable (maxRegression 0.01) on its own held-out set")
    reference = next(s for s in record["sets"] if s["name"] == "reference")
    assert reference["source"] == REFERENCE and reference["samples"] == 240
