"""Distributed setup from the environment the operator or torchrun sets, and device selection."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from modelops.trainer import TrainerError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT (torchrun's
    names); a world of one means no torch.distributed."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    master_addr: str = ""
    master_port: str = ""
    local_world_size: int = 1
    group_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistEnv:
        env = os.environ if env is None else env
        try:
            world_size = int(env.get("WORLD_SIZE", "1") or "1")
            rank = int(env.get("RANK", "0") or "0")
            local_rank = int(env.get("LOCAL_RANK", "0") or "0")
            local_world_size = int(env.get("LOCAL_WORLD_SIZE", "1") or "1")
            group_rank = int(env.get("GROUP_RANK", "") or rank // max(local_world_size, 1))
        except ValueError:
            raise TrainerError("WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE and GROUP_RANK must be integers") from None
        if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < max(local_world_size, 1) or \
                not 1 <= local_world_size <= world_size:
            raise TrainerError(f"invalid distributed environment: WORLD_SIZE={world_size} RANK={rank} "
                               f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world_size}")
        addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
        if world_size > 1 and not (addr and port):
            raise TrainerError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT")
        return cls(world_size, rank, local_rank, addr, port, local_world_size, group_rank)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(requested: str, dist: DistEnv) -> torch.device:
    """auto: CUDA (this process's LOCAL_RANK GPU) when present, else CPU."""
    import torch

    if requested not in ("auto", "cpu", "cuda"):
        raise TrainerError(f"unknown device {requested!r}; choose from auto, cpu, cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainerError("--device cuda requested but CUDA is not available")
    visible = torch.cuda.device_count()
    if dist.local_rank >= visible:  # two ranks on one GPU would deadlock NCCL: refuse instead
        raise TrainerError(f"LOCAL_RANK {dist.local_rank} needs GPU {dist.local_rank} but {visible} GPU(s) are "
                           f"visible: set nprocPerNode to at most the pod's GPUs")
    torch.cuda.set_device(dist.local_rank)
    return torch.device("cuda", dist.local_rank)


def init_process_group(dist: DistEnv, device: torch.device, timeout_s: float) -> None:
    """Join the process group (NCCL on GPU, gloo on CPU) through the env:// rendezvous."""
    import torch.distributed as torch_dist

    if not dist.distributed:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    log.info("joining process group: rank %d/%d (local rank %d/%d, group rank %d) via %s:%s (%s)", dist.rank,
             dist.world_size, dist.local_rank, dist.local_world_size, dist.group_rank, dist.master_addr,
             dist.master_port, backend)
    try:
        torch_dist.init_process_group(backend=backend, init_method="env://",
                                      world_size=dist.world_size, rank=dist.rank,
                                      timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise TrainerError(f"cannot join the process group at {dist.master_addr}:{dist.master_port}: "
                           f"{str(exc).splitlines()[0]}") from None


def destroy_process_group() -> None:
    """Leave the process group if one was joined."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
