"""Real CPU training with `python -m modelops.trainer`: accuracy, 2-process DDP with gloo, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from modelops.trainer.data import Missing, load_builtin, prepare

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")]

FAST = ["--dataset", "digits", "--epochs", "4", "--batch-size", "32", "--lr", "0.003", "--num-threads", "1"]


def trainer(repository: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "modelops.trainer", "--repository", str(repository), "--model-name", "digits", *args]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "POD_NAME")}
    # gloo on loopback: no lookup of this machine's hostname, which could ask a DNS server off the machine
    return {**env, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **extra}


def progress(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line.removeprefix("PROGRESS ")) for line in stdout.splitlines() if line.startswith("PROGRESS ")]


def held_out_accuracy(version_dir: Path) -> float:
    """Accuracy of the published TorchScript on the test split, fed raw (unnormalised) pixels."""
    data = prepare(load_builtin("digits", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.2, seed=0)
    model = torch.jit.load(str(version_dir / "model.pt"))
    with torch.inference_mode():
        logits = model(torch.from_numpy(data.test.x))
    assert logits.dtype == torch.float32 and logits.shape == (len(data.test), 10)
    return float((logits.argmax(1).numpy() == data.test.y).mean())


def test_single_process_training_publishes_an_accurate_model(tmp_path: Path) -> None:
    result = subprocess.run(trainer(tmp_path, *FAST), env=base_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    reports = progress(result.stdout)
    assert reports[0]["phase"] == "Training" and reports[-1]["phase"] == "Succeeded"
    final = reports[-1]
    model = final["model"]
    assert {k: model[k] for k in ("name", "version", "uri")} == \
        {"name": "digits", "version": 1, "uri": str(tmp_path / "digits" / "1")}
    assert model["signature"] == {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}],
                                  "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]}
    assert final["epoch"] == final["epochs"] == 4 and final["testAccuracy"] >= 0.9
    assert any(r["phase"] == "Publishing" for r in reports)

    version_dir = tmp_path / "digits" / "1"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["metrics"]["testAccuracy"] == pytest.approx(final["testAccuracy"], abs=1e-6)
    assert metadata["dataset"]["fingerprint"].startswith("sha256:")
    assert metadata["signature"]["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "dims": [1, 8, 8]}]
    assert metadata["signature"]["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "dims": [10]}]
    assert metadata["framework"]["torch"] == torch.__version__
    assert metadata["trainer"]["args"]["epochs"] == 4
    assert held_out_accuracy(version_dir) == pytest.approx(final["testAccuracy"], abs=1e-6)
    assert 'platform: "pytorch_libtorch"' in (tmp_path / "digits" / "config.pbtxt").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_ddp_ends_with_identical_weights(tmp_path: Path) -> None:
    port = str(free_port())
    procs = [subprocess.Popen(trainer(tmp_path, *FAST),
                              env=base_env(WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    hashes = [re.findall(r"final weights sha256 ([0-9a-f]{64}) \(rank (\d)\)", err) for _, err in outputs]
    assert [h[0][1] for h in hashes] == ["0", "1"]
    assert hashes[0][0][0] == hashes[1][0][0]
    assert "gloo" in outputs[0][1]
    assert progress(outputs[1][0]) == []  # only rank 0 reports
    final = progress(outputs[0][0])[-1]
    assert final["phase"] == "Succeeded" and final["testAccuracy"] >= 0.9
    assert sorted(p.name for p in (tmp_path / "digits").iterdir() if not p.name.startswith(".")) == ["1", "config.pbtxt"]
    metadata = json.loads((tmp_path / "digits" / "1" / "metadata.json").read_text())
    assert metadata["trainer"]["worldSize"] == 2 and metadata["trainer"]["stateSha256"] == hashes[0][0][0]
    assert held_out_accuracy(tmp_path / "digits" / "1") >= 0.9


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    args = trainer(tmp_path, *FAST[:2], "--epochs", "12", "--num-threads", "1")
    checkpoint = tmp_path / "digits" / ".checkpoints" / "local" / "checkpoint.pt"
    first = subprocess.Popen(args, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    _, first_err = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, first_err
    done = [int(n) for n in re.findall(r"epoch (\d+)/12", first_err)]
    assert done and max(done) < 12
    assert not (tmp_path / "digits" / "1").exists()

    second = subprocess.run(args, env=base_env(), capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    resumed = int(re.search(r"resumed from checkpoint at epoch (\d+)", second.stderr).group(1))  # type: ignore[union-attr]
    assert 1 <= resumed <= max(done)
    trained = [int(n) for n in re.findall(r"epoch (\d+)/12", second.stderr)]
    assert trained == list(range(resumed + 1, 13))
    final = progress(second.stdout)[-1]
    assert final["phase"] == "Succeeded" and final["model"]["version"] == 1 and final["step"] > 0

    third = subprocess.run(args, env=base_env(), capture_output=True, text=True, timeout=180)
    assert third.returncode == 0 and "already published digits version 1" in third.stderr
    assert progress(third.stdout)[-1]["model"]["version"] == 1
    assert sorted(p.name for p in (tmp_path / "digits").iterdir() if not p.name.startswith(".")) == ["1", "config.pbtxt"]
