"""The training loop's reports against its checkpoints (real training of a small MLP, real files): an epoch is
reported as checkpointed only once its checkpoint is on disk, a failed save is reported, a resumed run reports
the checkpoint it resumed from."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from modelops.trainer import checkpoint
from modelops.trainer.data import NO_AUGMENTATION, Missing, Prepared, load_builtin, prepare
from modelops.trainer.distributed import DistEnv
from modelops.trainer.loop import LoopConfig, train
from modelops.trainer.models import ModelSpec, Stats, build_model
from modelops.trainer.progress import ProgressReporter


@pytest.fixture(scope="module")
def data() -> Prepared:
    return prepare(load_builtin("synthetic-tabular", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.1,
                   seed=0)


def model(data: Prepared) -> torch.nn.Module:
    torch.manual_seed(0)
    norm = data.normalization
    stats = Stats(torch.from_numpy(norm.mean), torch.from_numpy(norm.std), tuple(norm.mean.shape))
    return build_model(ModelSpec("mlp", hidden_sizes=(16,)), data.input_shape, data.num_classes, stats)


def config(directory: Path, epochs: int) -> LoopConfig:
    return LoopConfig(epochs=epochs, batch_size=256, lr=0.01, seed=0, augmentation=NO_AUGMENTATION, run_key="k",
                      checkpoint_dir=directory)


class DiskCheckingSink:
    """Records every report with the epoch of the checkpoint on disk at the moment it was sent (in the first
    of `directories` that is one); `on_send` may act on the disk (a fault a test injects between two epochs)."""

    def __init__(self, *directories: Path, on_send: Any = None) -> None:
        self.directories, self.on_send = directories, on_send
        self.sent: list[tuple[dict[str, Any], int | None]] = []

    def send(self, payload: str) -> None:
        directory = next((d for d in self.directories if d.is_dir()), None)
        saved = checkpoint.load_checkpoint(directory) if directory else None
        report = json.loads(payload)
        self.sent.append((report, None if saved is None else int(saved["epoch"])))
        if self.on_send:
            self.on_send(report)


def run(data: Prepared, directory: Path, epochs: int, sink: DiskCheckingSink) -> Any:
    reporter = ProgressReporter(sink, min_interval=0, out=io.StringIO(), termination_log=None)  # every step reports
    return train(model(data), data, config(directory, epochs), device=torch.device("cpu"), dist=DistEnv(),
                 reporter=reporter)


def test_an_epoch_is_reported_checkpointed_only_after_its_checkpoint_is_saved(data: Prepared, tmp_path: Path) -> None:
    sink = DiskCheckingSink(tmp_path)
    run(data, tmp_path, 3, sink)
    for report, on_disk in sink.sent:  # never ahead of the disk
        assert report["checkpointedEpoch"] == (on_disk or 0), (report, on_disk)
    first, *_ = (report for report, _ in sink.sent)
    assert (first["epoch"], first["checkpointedEpoch"], first["step"]) == (0, 0, 0)
    ends = [report for report, _ in sink.sent if report["checkpointedEpoch"] == report["epoch"]]
    assert [r["epoch"] for r in ends] == [0, 1, 2, 3]  # the start, then each epoch once saved
    # during an epoch: that epoch in progress, the one before it checkpointed
    assert {(r["epoch"], r["checkpointedEpoch"]) for r, _ in sink.sent} == {(0, 0), (1, 0), (1, 1), (2, 1), (2, 2),
                                                                            (3, 2), (3, 3)}
    assert all("checkpointError" not in r for r, _ in sink.sent)


def test_a_failed_save_is_reported_and_cleared_by_the_next_saved_checkpoint(data: Prepared, tmp_path: Path) -> None:
    directory, aside = tmp_path / "checkpoints", tmp_path / "aside"
    directory.mkdir()

    def fault(report: dict[str, Any]) -> None:
        if report["epoch"] == 1 and report["checkpointedEpoch"] == 1 and not aside.exists():
            directory.rename(aside)  # the volume is gone: a file where the directory was
            directory.write_text("not a directory")
        elif report.get("checkpointError") and aside.exists():
            directory.unlink()
            aside.rename(directory)  # back for epoch 3

    sink = DiskCheckingSink(directory, aside, on_send=fault)  # the checkpoint saved so far, wherever it is
    run(data, directory, 3, sink)
    failed = [(r, disk) for r, disk in sink.sent if r.get("checkpointError")]
    assert failed, "the failed save of epoch 2 was not reported"
    report, _ = failed[0]
    assert (report["epoch"], report["checkpointedEpoch"]) == (2, 1)
    assert report["checkpointError"].startswith("epoch 2 not saved: ") and "Errno" in report["checkpointError"]
    assert all(r["checkpointedEpoch"] == disk for r, disk in sink.sent if r["epoch"] > 1)
    last, on_disk = sink.sent[-1]
    assert (last["epoch"], last["checkpointedEpoch"], on_disk) == (3, 3, 3) and "checkpointError" not in last


def test_a_resumed_run_first_reports_the_checkpoint_it_resumed_from(data: Prepared, tmp_path: Path) -> None:
    run(data, tmp_path, 2, DiskCheckingSink(tmp_path))
    sink = DiskCheckingSink(tmp_path)
    result = run(data, tmp_path, 4, sink)  # the same run, extended
    assert result.resumed_from_epoch == 2
    first, _ = sink.sent[0]
    assert (first["epoch"], first["checkpointedEpoch"]) == (2, 2)
    assert [r["epoch"] for r, _ in sink.sent if r["checkpointedEpoch"] == r["epoch"]] == [2, 3, 4]


def test_without_a_checkpoint_directory_nothing_is_reported_as_checkpointed(data: Prepared) -> None:
    sink = DiskCheckingSink(Path("/nonexistent"))
    reporter = ProgressReporter(sink, min_interval=0, out=io.StringIO(), termination_log=None)
    cfg = LoopConfig(epochs=1, batch_size=256, lr=0.01, seed=0, augmentation=NO_AUGMENTATION, run_key="k")
    train(model(data), data, cfg, device=torch.device("cpu"), dist=DistEnv(), reporter=reporter)
    assert sink.sent and all("checkpointedEpoch" not in r for r, _ in sink.sent)
