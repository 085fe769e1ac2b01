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


# ---- ranks per pod: the operator's env, the trainer's launcher, torchrun -------------------------------------

def pod_env(workers: int, nproc: int, pod: int, port: str, command: list[str] | None = None) -> dict[str, str]:
    """The env the operator gives worker pod `pod`, with the rendezvous on loopback (the pods are processes here)."""
    from modelops.api.trainingjob import TrainingJobSpec
    from modelops.resources import trainingjob as tj

    spec = TrainingJobSpec.model_validate({"workers": workers, "nprocPerNode": nproc, "command": command,
                                           "output": {"modelName": "digits", "repository": {"hostPath": {"path": "/m"}}}})
    job = tj.JobMeta(name="digits", namespace="ml", uid="uid-1")
    env = {e["name"]: e["value"] for e in tj.worker_pod(job, spec, attempt=0, rank=pod)["spec"]["containers"][0]["env"]
           if "value" in e and not e["name"].startswith("MODELOPS_")}
    for name in ("MASTER_ADDR", "PET_MASTER_ADDR"):
        env[name] = "127.0.0.1"
    env["MASTER_PORT"] = env["PET_MASTER_PORT"] = port
    return base_env(**env)


def test_two_pods_of_two_ranks_train_identical_weights_and_publish_once(tmp_path: Path) -> None:
    port = str(free_port())
    pods = [subprocess.Popen(trainer(tmp_path, *FAST), env=pod_env(2, 2, pod, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for pod in (0, 1)]
    outputs = [proc.communicate(timeout=300) for proc in pods]
    for proc, (_, err) in zip(pods, outputs):
        assert proc.returncode == 0, err
    stderr = outputs[0][1] + outputs[1][1]
    joined = sorted(re.findall(r"joining process group: rank (\d)/(\d) \(local rank (\d)/(\d), group rank (\d)\)", stderr))
    # every rank's env: RANK = GROUP_RANK x LOCAL_WORLD_SIZE + LOCAL_RANK, WORLD_SIZE = 2 pods x 2 ranks
    assert joined == [("0", "4", "0", "2", "0"), ("1", "4", "1", "2", "0"), ("2", "4", "0", "2", "1"),
                      ("3", "4", "1", "2", "1")]
    assert stderr.count("(gloo)") == 4
    hashes = dict((rank, digest) for digest, rank in re.findall(r"final weights sha256 ([0-9a-f]{64}) \(rank (\d)\)", stderr))
    assert sorted(hashes) == ["0", "1", "2", "3"] and len(set(hashes.values())) == 1
    assert progress(outputs[1][0]) == []  # progress and publishing from global rank 0 (pod 0) only
    reports = progress(outputs[0][0])
    final = reports[-1]
    assert final["phase"] == "Succeeded" and final["worldSize"] == 4 and final["testAccuracy"] >= 0.9
    assert sorted(p.name for p in (tmp_path / "digits").iterdir() if not p.name.startswith(".")) == ["1", "config.pbtxt"]
    metadata = json.loads((tmp_path / "digits" / "1" / "metadata.json").read_text())
    assert metadata["trainer"]["worldSize"] == 4 and metadata["trainer"]["localWorldSize"] == 2
    assert metadata["trainer"]["stateSha256"] == hashes["0"]


def test_a_failing_local_rank_fails_the_pod_at_once(tmp_path: Path) -> None:
    # local rank 1 dies as it starts (a sitecustomize on its path); rank 0 would wait for it in the rendezvous
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\nif os.environ.get('MODELOPS_LOCAL_RANK_PROCESS') and os.environ.get('LOCAL_RANK') == '1':\n"
        "    os._exit(7)\n")
    env = pod_env(1, 2, 0, str(free_port()))
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
    started = time.monotonic()
    result = subprocess.run(trainer(tmp_path, *FAST), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, result.stderr
    assert "local rank 1 (rank 1) exited with code 7" in result.stderr
    assert time.monotonic() - started < 60  # not the 600 s collective timeout
    assert not (tmp_path / "digits" / "1").exists()


RANK_SCRIPT = """
import json, os, sys
import torch.distributed as dist
dist.init_process_group("gloo")
import torch
t = torch.tensor([1.0])
dist.all_reduce(t)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
record = {k: os.environ[k] for k in keys} | {"sum": float(t), "spawned": "MODELOPS_LOCAL_RANK_PROCESS" in os.environ}
open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w").write(json.dumps(record))
dist.destroy_process_group()
"""


def test_a_torchrun_command_gets_consistent_pet_variables(tmp_path: Path) -> None:
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    port = str(free_port())
    # the pod's command is torchrun with no rendezvous flags: it reads everything from PET_*
    command = [sys.executable, "-m", "torch.distributed.run", str(script), str(tmp_path)]
    agents = [subprocess.Popen(command, env=pod_env(2, 2, pod, port, command=command), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for pod in (0, 1)]
    for agent in agents:
        _, err = agent.communicate(timeout=240)
        assert agent.returncode == 0, err
    records = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)}
    for rank, record in records.items():
        assert record == {"RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                          "GROUP_RANK": str(rank // 2), "sum": 4.0, "spawned": False}
