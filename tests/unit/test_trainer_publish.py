"""Unit tests of atomic publishing: version numbering, concurrent publishers, contents, unwritable repositories."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from modelops.trainer import TrainerError, publish as publish_module
from modelops.trainer.publish import check_repository, publish
from modelops.triton.config import render_config
from modelops.triton.repository import list_versions
from modelops.triton.signature import Signature, load_signature

SIGNATURE = Signature.classifier((4,), 3, {"mean": [0.0] * 4, "std": [1.0] * 4, "shape": [4]})


def publish_one(repository: Path, payload: bytes = b"torchscript", name: str = "m") -> publish_module.Published:
    return publish(repository, name, model_bytes=payload, signature=SIGNATURE,
                   metadata={"metrics": {"testAccuracy": 0.9}}, max_batch_size=16)


def test_versions_count_up_from_the_highest(tmp_path: Path) -> None:
    first = publish_one(tmp_path)
    assert (first.version, first.uri) == (1, str(tmp_path / "m" / "1"))
    (tmp_path / "m" / "7").mkdir()
    assert publish_one(tmp_path).version == 8
    version_dir = tmp_path / "m" / "8"
    # the model, no serving code: a ModelService serves it with the operator's runtime
    assert sorted(p.name for p in version_dir.iterdir()) == ["metadata.json", "model.pt"]
    assert (version_dir / "model.pt").read_bytes() == b"torchscript"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["version"] == 8 and metadata["name"] == "m" and metadata["metrics"]["testAccuracy"] == 0.9
    assert load_signature(version_dir) == SIGNATURE
    assert (tmp_path / "m" / "config.pbtxt").read_text() == render_config("m", SIGNATURE, max_batch_size=16)
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")] == []


def test_a_publisher_that_loses_the_race_takes_the_next_number(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: another publisher completes version 1 between our listing and our rename."""
    real_next_version = publish_module.next_version

    def stale_listing(model_dir: Path) -> int:
        version = real_next_version(model_dir)
        rival = model_dir / str(version)
        rival.mkdir()
        (rival / "model.pt").write_bytes(b"rival")
        monkeypatch.setattr(publish_module, "next_version", real_next_version)
        return version

    monkeypatch.setattr(publish_module, "next_version", stale_listing)
    published = publish_one(tmp_path)
    assert published.version == 2
    assert (tmp_path / "m" / "1" / "model.pt").read_bytes() == b"rival"
    assert json.loads((tmp_path / "m" / "2" / "metadata.json").read_text())["version"] == 2


def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path) -> None:
    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(publish_one(tmp_path, f"m{i}".encode()).version))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 9)) == list_versions(tmp_path / "m")
    payloads = {(tmp_path / "m" / str(v) / "model.pt").read_bytes() for v in results}
    assert payloads == {f"m{i}".encode() for i in range(8)}


def test_unwritable_repository_is_a_clear_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(TrainerError, match="model repository .* is not writable: Not a directory"):
        check_repository(not_a_dir, "m")
    with pytest.raises(TrainerError, match="not writable"):
        publish_one(not_a_dir)
    with pytest.raises(TrainerError, match="invalid model name"):
        check_repository(tmp_path, "../escape")


def test_a_failed_write_leaves_no_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the disk fills up while the version is being written."""
    def disk_full(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish_module, "write_synced", disk_full)
    with pytest.raises(TrainerError, match="No space left on device"):
        publish_one(tmp_path)
    assert list((tmp_path / "m").iterdir()) == []
