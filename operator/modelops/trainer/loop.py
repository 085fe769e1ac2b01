"""The training loop: optional DDP, mixed precision on GPU, per-epoch atomic checkpoints and resume, progress."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from modelops.trainer import checkpoint
from modelops.trainer.data import Augmentation, Prepared
from modelops.trainer.distributed import DistEnv
from modelops.trainer.progress import ProgressReporter, deferred_termination

log = logging.getLogger(__name__)
T = TypeVar("T")

EVAL_BATCH = 1024
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class LoopConfig:
    """How to train; `run_key` tells which checkpoints belong to this run (epochs excluded, so a run can be extended)."""

    epochs: int
    batch_size: int  # per process
    lr: float
    seed: int
    augmentation: Augmentation
    run_key: str
    weight_decay: float = 0.0
    checkpoint_dir: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    """What the loop achieved."""

    epoch: int
    step: int
    loss: float
    val_accuracy: float
    samples_per_second: float
    resumed_from_epoch: int | None
    state_sha256: str


def state_sha256(model: nn.Module) -> str:
    """sha256 over the state_dict (names and bytes, in order): equal on every DDP rank after training."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of `model` (in eval mode) on x, y; NaN for an empty split."""
    if len(y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        correct += int((logits.argmax(dim=1) == y[start:start + EVAL_BATCH]).sum())
    model.train(was_training)
    return correct / len(y)


def augment(x: torch.Tensor, aug: Augmentation, scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random per-sample shifts (edge-replicated) and gaussian noise of `noise_std * scale`, on raw image batches."""
    if aug.max_shift:
        s, (b, _, h, w) = aug.max_shift, x.shape
        padded = F.pad(x, (s, s, s, s), mode="replicate").permute(0, 2, 3, 1)  # [b, h+2s, w+2s, c]
        dy = torch.randint(0, 2 * s + 1, (b, 1, 1), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * s + 1, (b, 1, 1), generator=generator, device=x.device)
        rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
        cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        x = padded[batch, rows, cols].permute(0, 3, 1, 2)
    if aug.noise_std:
        x = x + torch.randn(x.shape, generator=generator, device=x.device) * (aug.noise_std * scale)
    return x


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state(), "augment": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _seed(seed: int, generator: torch.Generator) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    generator.manual_seed(seed)


def _gather(obj: Any, dist: DistEnv) -> list[Any]:
    if not dist.distributed:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, dist: DistEnv) -> T:
    """Rank 0's `obj` on every rank (a no-op without a process group)."""
    if not dist.distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def _load_resume_state(cfg: LoopConfig, dist: DistEnv) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to every rank (workers need not share its volume)."""
    state = None
    if dist.is_main and cfg.checkpoint_dir is not None:
        state = checkpoint.load_checkpoint(cfg.checkpoint_dir)
        if state is not None and state.get("runKey") != cfg.run_key:
            log.warning("checkpoint in %s belongs to another run configuration; starting fresh", cfg.checkpoint_dir)
            state = None
    return broadcast_object(state, dist)


def train(model: nn.Module, data: Prepared, cfg: LoopConfig, *, device: torch.device, dist: DistEnv,
          reporter: ProgressReporter) -> TrainResult:
    """Train `model` in place on data.train; every rank returns the same weights. Resumes from the last checkpoint."""
    generator = torch.Generator(device=device)
    _seed(cfg.seed + dist.rank, generator)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, step, loss_value, val_acc, train_time, samples_seen = 0, 0, float("nan"), float("nan"), 0.0, 0
    resumed: int | None = None
    state = _load_resume_state(cfg, dist)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        loss_value, val_acc = state["metrics"]["loss"], state["metrics"]["valAccuracy"]
        train_time, samples_seen = float(state["trainTime"]), int(state["samplesSeen"])
        rng = state["rng"]
        if len(rng) == dist.world_size:
            _set_rng_state(rng[dist.rank], generator)
        else:
            _seed(cfg.seed + 7919 * start_epoch + dist.rank, generator)
        resumed = start_epoch
        log.info("resumed from checkpoint at epoch %d (step %d)", start_epoch, step)
        del state

    train_x = torch.as_tensor(data.train.x, device=device)
    train_y = torch.as_tensor(data.train.y, device=device)
    val_x = torch.as_tensor(data.val.x, device=device)
    val_y = torch.as_tensor(data.val.y, device=device)
    noise_scale = torch.as_tensor(data.normalization.std, device=device)
    net: nn.Module = model
    if dist.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # The sampler only takes the data set's len(): the sample indices are enough.
    sampler: DistributedSampler[int] = DistributedSampler(
        cast("Dataset[int]", range(len(train_y))), num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
        seed=cfg.seed)
    loss_fn = nn.CrossEntropyLoss()
    # checkpointedEpoch: where a restart would resume now (0: from the start); unset without checkpoints
    reporter.update(phase="Training", epoch=start_epoch, epochs=cfg.epochs, step=step, worldSize=dist.world_size,
                    checkpointedEpoch=start_epoch if cfg.checkpoint_dir is not None else None, force=True)

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=device)
        loss_sum = torch.zeros((), device=device)
        count = 0
        started = time.perf_counter()
        for start in range(0, len(order), cfg.batch_size):
            index = order[start:start + cfg.batch_size]
            xb, yb = train_x[index], train_y[index]
            if cfg.augmentation.enabled:
                xb = augment(xb, cfg.augmentation, noise_scale, generator)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach() * len(yb)
            count += len(yb)
            if reporter.due():
                elapsed = time.perf_counter() - started
                reporter.update(phase="Training", epoch=epoch + 1, epochs=cfg.epochs, step=step,
                                loss=float(loss_sum) / count, valAccuracy=finite(val_acc),
                                samplesPerSecond=count * dist.world_size / max(elapsed, 1e-9))
        epoch_time = time.perf_counter() - started
        totals = torch.stack([loss_sum.double(), torch.tensor(float(count), device=device, dtype=torch.float64)])
        if dist.distributed:
            torch_dist.all_reduce(totals)
        loss_value = float(totals[0] / totals[1])
        epoch_samples = int(totals[1])
        train_time += epoch_time
        samples_seen += epoch_samples
        val_acc = accuracy(model, val_x, val_y)
        throughput = epoch_samples / max(epoch_time, 1e-9)
        log.info("epoch %d/%d step %d loss %.4f val_accuracy %.4f %.0f samples/s", epoch + 1, cfg.epochs, step,
                 loss_value, val_acc, throughput)
        report: dict[str, Any] = {"phase": "Training", "epoch": epoch + 1, "epochs": cfg.epochs, "step": step,
                                  "loss": loss_value, "valAccuracy": finite(val_acc), "samplesPerSecond": throughput}
        rng = _gather(_rng_state(generator), dist)
        if dist.is_main and cfg.checkpoint_dir is not None:
            state = {"format": 1, "runKey": cfg.run_key, "epoch": epoch + 1, "step": step,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "rng": rng, "metrics": {"loss": loss_value, "valAccuracy": val_acc},
                     "trainTime": train_time, "samplesSeen": samples_seen, "worldSize": dist.world_size}
            save_then_report(cfg.checkpoint_dir, state, reporter, report)
        else:
            reporter.update(**report)

    if dist.distributed:  # BatchNorm running stats are per rank; rank 0's are the ones DDP keeps
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=0)
    digest = state_sha256(model)
    log.info("final weights sha256 %s (rank %d)", digest, dist.rank)
    return TrainResult(epoch=max(cfg.epochs, start_epoch), step=step, loss=loss_value, val_accuracy=val_acc,
                       samples_per_second=samples_seen / train_time if train_time else 0.0,
                       resumed_from_epoch=resumed, state_sha256=digest)


def save_then_report(directory: Path, state: dict[str, Any], reporter: ProgressReporter,
                     report: dict[str, Any]) -> None:
    """Save the epoch's checkpoint atomically, then report the epoch with checkpointedEpoch at once (not
    throttled): status never counts an epoch as saved before its file is durable, and a SIGTERM in between
    waits for the report. A failed save is reported too (checkpointError), checkpointedEpoch staying at the
    last epoch saved."""
    epoch = int(state["epoch"])
    with deferred_termination():
        try:
            checkpoint.save_checkpoint(directory, state)
        except OSError as exc:
            log.warning("checkpoint of epoch %d not saved: %s", epoch, exc)
            error = f"epoch {epoch} not saved: {exc}"
            reporter.update(**report, checkpointError=error[:MAX_ERROR_CHARS], force=True)
            return
        reporter.forget("checkpointError")
        reporter.update(**report, checkpointedEpoch=epoch, force=True)


def finite(value: float) -> float | None:
    """None for NaN (an empty split), so JSON stays valid."""
    return value if value == value else None
