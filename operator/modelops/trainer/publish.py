"""Publish a model version atomically into a Triton model repository: `<repository>/<name>/<version>/`."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelops.trainer import TrainerError
from modelops.trainer.files import atomic_write_bytes, fsync_dir, write_synced
from modelops.triton.config import Backend, render_config
from modelops.triton.repository import next_version, validate_model_name
from modelops.triton.signature import METADATA_FILE, Signature

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.pbtxt"
MAX_RENAME_ATTEMPTS = 100


@dataclass(frozen=True)
class Published:
    """A published model version."""

    name: str
    version: int
    path: Path
    uri: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "uri": self.uri}


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def check_repository(repository: Path, model_name: str) -> Path:
    """Fail early (TrainerError) unless `<repository>/<model_name>/` can be created and written; return it."""
    try:
        validate_model_name(model_name)
    except ValueError as exc:
        raise TrainerError(str(exc)) from None
    model_dir = repository / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".probe-", dir=model_dir):
            pass
    except OSError as exc:
        raise TrainerError(f"model repository {repository} is not writable: {_reason(exc)}") from None
    return model_dir


def publish(repository: Path, model_name: str, *, model_bytes: bytes, signature: Signature,
            metadata: dict[str, Any], max_batch_size: int, extra_files: dict[str, bytes] | None = None) -> Published:
    """Write model.pt and metadata.json into a hidden temporary directory, then rename it to the next free
    version number (another publisher winning a number makes us take the next one). Finally (re)write
    `<name>/config.pbtxt` for libtorch Triton images atomically. Nothing half-written is ever visible.
    `extra_files` (e.g. the held-out evaluation set) go into the version folder too. No serving code: a
    ModelService serves the python backend with the operator's runtime (modelops.triton.python_model)."""
    model_dir = check_repository(repository, model_name)
    tmp = Path(tempfile.mkdtemp(prefix=".publishing-", dir=model_dir))
    try:
        write_synced(tmp / MODEL_FILE, model_bytes)
        for file_name, content in (extra_files or {}).items():
            write_synced(tmp / file_name, content)
        version = next_version(model_dir)
        for _ in range(MAX_RENAME_ATTEMPTS):
            uri = str(repository / model_name / str(version))
            document = {**metadata, "name": model_name, "version": version, "uri": uri,
                        "signature": signature.to_dict()}
            write_synced(tmp / METADATA_FILE, json.dumps(document, indent=2, sort_keys=True).encode())
            fsync_dir(tmp)
            try:
                os.rename(tmp, model_dir / str(version))  # fails if a non-empty version directory exists
                break
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                log.info("version %d was taken by another publisher; trying the next", version)
                version = max(version + 1, next_version(model_dir))
        else:
            raise TrainerError(f"could not claim a version number in {model_dir}")
        fsync_dir(model_dir)
    except OSError as exc:
        raise TrainerError(f"publishing to {model_dir} failed: {_reason(exc)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config = render_config(model_name, signature, backend=Backend.PYTORCH, max_batch_size=max_batch_size)
    try:
        atomic_write_bytes(model_dir / CONFIG_FILE, config.encode())
    except OSError as exc:  # the version itself is complete; serving renders its own config anyway
        log.warning("version %d published but %s not written: %s", version, model_dir / CONFIG_FILE, _reason(exc))
    published = Published(model_name, version, model_dir / str(version), uri)
    log.info("published %s version %d at %s", model_name, version, uri)
    return published
