"""Asks a running Triton, through tritonclient, whether a model version is loaded and what it expects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCheck:
    """Verdict on one pod: `passed`, `failed` (definite: never give it traffic) or `pending` (ask again)."""

    verdict: Literal["passed", "failed", "pending"]
    message: str


def compare_metadata(metadata: dict[str, Any], expected: dict[str, Any], *, version: int) -> str | None:
    """Differences between Triton's model metadata and the published signature ('' parts joined), or None.

    Triton reports shapes with a leading -1: the batch dimension, or (max_batch_size 0) the variable
    first dimension our config.pbtxt declares."""
    problems = []
    versions = [str(v) for v in metadata.get("versions") or []]
    if versions and str(version) not in versions:
        problems.append(f"version {version} not among the loaded versions {versions}")
    for kind in ("inputs", "outputs"):
        served = {t["name"]: t for t in metadata.get(kind) or []}
        wanted = {t["name"]: t for t in expected.get(kind) or []}
        for name in sorted(wanted.keys() - served.keys()):
            problems.append(f"{kind[:-1]} {name} missing")
        for name in sorted(served.keys() - wanted.keys()):
            problems.append(f"unexpected {kind[:-1]} {name}")
        for name in sorted(wanted.keys() & served.keys()):
            want, got = wanted[name], served[name]
            shape = [-1] + [int(d) for d in want["dims"]]
            if got.get("datatype") != want["datatype"]:
                problems.append(f"{name} datatype {got.get('datatype')} != {want['datatype']}")
            if [int(d) for d in got.get("shape", [])] != shape:
                problems.append(f"{name} shape {got.get('shape')} != {shape}")
    return "; ".join(problems) or None


def check_model(address: str, model: str, version: int, expected: dict[str, Any] | None, *,
                timeout: float = 2.0) -> ModelCheck:
    """Check the model on the Triton at `address` (host:port of its HTTP endpoint)."""
    import tritonclient.http as triton  # imported lazily: only the serving controller needs it
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
    try:
        if not client.is_server_live():
            return ModelCheck("pending", f"Triton at {address} is not live yet")
        state = next((m for m in client.get_model_repository_index()
                      if m.get("name") == model and str(m.get("version", version)) == str(version)), None)
        if state and state.get("state") == "UNAVAILABLE":
            return ModelCheck("failed", f"{model} version {version} failed to load: {state.get('reason', '')}")
        if not client.is_model_ready(model, str(version)):
            return ModelCheck("pending", f"{model} version {version} is not ready yet")
        if expected is None:
            return ModelCheck("passed", f"{model} version {version} is ready")
        mismatch = compare_metadata(client.get_model_metadata(model, str(version)), expected, version=version)
        if mismatch:
            return ModelCheck("failed", f"{model} version {version} does not match its signature: {mismatch}")
        return ModelCheck("passed", f"{model} version {version} is ready and matches its signature")
    except InferenceServerException as error:
        return ModelCheck("pending", f"Triton at {address}: {error}")
    except OSError as error:  # not listening yet, unreachable
        return ModelCheck("pending", f"Triton at {address} unreachable: {error}")
    finally:
        client.close()
