"""A pod's local ranks: when the operator gives a pod LOCAL_WORLD_SIZE > 1 ranks (spec.nprocPerNode), the
trainer started in the pod becomes a small launcher (torchrun's job, without its agent): it starts one
trainer process per local rank with that rank's env, and ends when they all end. One failing rank stops
the others and fails the pod, so the operator restarts the whole group, as for a failed pod.

The launcher imports no torch: it only starts, watches and stops processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType

from modelops.trainer import TrainerError
from modelops.trainer.progress import TERMINATION_LOG, failure_message, write_termination_log

log = logging.getLogger("modelops.trainer.launch")

SPAWNED = "MODELOPS_LOCAL_RANK_PROCESS"
"""Set in the env of each local rank process (it must not launch again)."""
TORCHRUN_MARK = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in its workers: ranks already started by torchrun never launch."""
DEFAULT_MASTER_PORT = "29500"
POLL_S = 0.1
GRACE_S = 10.0


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise TrainerError(f"{name} must be an integer, not {env.get(name)!r}") from None


def local_world_size(env: Mapping[str, str]) -> int:
    return _int(env, "LOCAL_WORLD_SIZE", 1)


def should_launch(env: Mapping[str, str]) -> bool:
    """This process is a pod's entry point for more than one rank (not a rank itself, not under torchrun)."""
    return local_world_size(env) > 1 and SPAWNED not in env and TORCHRUN_MARK not in env


def rank_envs(env: Mapping[str, str]) -> list[dict[str, str]]:
    """The env of each local rank: RANK = GROUP_RANK x LOCAL_WORLD_SIZE + LOCAL_RANK, torchrun's variables."""
    nproc = local_world_size(env)
    world = _int(env, "WORLD_SIZE", nproc)
    group_rank = _int(env, "GROUP_RANK", _int(env, "PET_NODE_RANK", _int(env, "RANK", 0) // nproc))
    if nproc < 1 or group_rank < 0 or world < (group_rank + 1) * nproc:
        raise TrainerError(f"invalid local ranks: WORLD_SIZE={world} LOCAL_WORLD_SIZE={nproc} GROUP_RANK={group_rank}")
    base = dict(env)
    if world == nproc:  # the whole group is this pod: it meets on loopback unless told otherwise
        base.setdefault("MASTER_ADDR", "127.0.0.1")
        base.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)
    # one process per rank: share the cores (torchrun sets OMP_NUM_THREADS=1; this keeps what a pod has)
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    envs = []
    for local_rank in range(nproc):
        envs.append({**base, "RANK": str(group_rank * nproc + local_rank), "LOCAL_RANK": str(local_rank),
                     "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": str(group_rank), "WORLD_SIZE": str(world),
                     "ROLE_RANK": str(group_rank * nproc + local_rank), "ROLE_WORLD_SIZE": str(world),
                     SPAWNED: "1"})
    return envs


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _child_failure(path: os.PathLike[str] | None) -> str:
    """The message a failed rank left in the termination log ('' when none)."""
    try:
        report = json.loads(open(path).read()) if path else None  # noqa: SIM115 - tiny file
    except (OSError, ValueError):
        return ""
    return str(report.get("message", "")) if isinstance(report, dict) and report.get("phase") == "Failed" else ""


def launch(argv: list[str], env: Mapping[str, str] | None = None, *, grace_s: float = GRACE_S) -> int:
    """Start the local ranks (`python -m modelops.trainer argv` each), wait for all; the first rank that
    fails stops the rest and its exit code is the pod's."""
    envs = rank_envs(os.environ if env is None else env)
    log.info("starting %d local ranks (ranks %s..%s of %s)", len(envs), envs[0]["RANK"], envs[-1]["RANK"],
             envs[0]["WORLD_SIZE"])
    procs = [subprocess.Popen([sys.executable, "-m", "modelops.trainer", *argv], env=e) for e in envs]
    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed: tuple[int, int] | None = None  # (local rank, exit code)
        while failed is None and any(p.poll() is None for p in procs):
            for local_rank, proc in enumerate(procs):
                if proc.poll() not in (None, 0):
                    failed = (local_rank, _exit_code(proc.returncode))
                    break
            else:
                time.sleep(POLL_S)
        if failed is None:
            failed = next(((r, _exit_code(p.returncode)) for r, p in enumerate(procs) if p.returncode), None)
        if failed is None:
            return 0
        local_rank, code = failed
        _stop(procs, grace_s)
        rank = envs[local_rank]["RANK"]
        reason = _child_failure(TERMINATION_LOG if os.environ.get("KUBERNETES_SERVICE_HOST") else None)
        message = f"local rank {local_rank} (rank {rank}) exited with code {code}" + (f": {reason}" if reason else "")
        if stopping:
            message += f" after signal {stopping[0]}"
        log.error("%s; stopped the other local ranks", message)
        write_termination_log(failure_message(message))
        return code or 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM the ranks still running, SIGKILL what is left after `grace_s`."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
