"""Asks a running Triton (its KServe v2 HTTP API) whether a model version is loaded and what it expects."""

from __future__ import annotations

import http.client
import json
import logging
import time
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, Literal
from urllib.parse import quote

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


class _Triton:
    """Triton's KServe v2 HTTP/REST API, just the calls a readiness check needs, over one connection that
    is always closed. (tritonclient.http would bring numpy and a gevent hub per calling thread into the
    operator, about 20 MB of RSS and an fd leak per thread, for four small JSON requests.)"""

    def __init__(self, address: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self._deadline = time.monotonic() + 2 * timeout  # the whole check, whatever the server does
        self._conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)

    def close(self) -> None:
        self._conn.close()

    def request(self, method: str, path: str) -> tuple[int, Any]:
        if time.monotonic() > self._deadline:
            raise TimeoutError("the check took too long")
        self._conn.request(method, path, body=b"{}" if method == "POST" else None,
                           headers={"Content-Type": "application/json"} if method == "POST" else {})
        response = self._conn.getresponse()
        body = response.read(1 << 20)
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, None


def check_model(address: str, model: str, version: int, expected: dict[str, Any] | None, *,
                timeout: float = 2.0) -> ModelCheck:
    """Check the model on the Triton at `address` (host:port of its HTTP endpoint)."""
    triton = _Triton(address, timeout)
    where = f"/v2/models/{quote(model, safe='')}/versions/{version}"
    try:
        live, _ = triton.request("GET", "/v2/health/live")
        if live != 200:
            return ModelCheck("pending", f"Triton at {address} is not live yet")
        status, index = triton.request("POST", "/v2/repository/index")
        entries = index if status == 200 and isinstance(index, list) else []
        state = next((m for m in entries if isinstance(m, dict) and m.get("name") == model
                      and str(m.get("version", version)) == str(version)), None)
        if state and state.get("state") == "UNAVAILABLE":
            return ModelCheck("failed", f"{model} version {version} failed to load: {state.get('reason', '')}")
        ready, _ = triton.request("GET", f"{where}/ready")
        if ready != 200:
            return ModelCheck("pending", f"{model} version {version} is not ready yet")
        if expected is None:
            return ModelCheck("passed", f"{model} version {version} is ready")
        status, metadata = triton.request("GET", where)
        if status != 200 or not isinstance(metadata, dict):
            return ModelCheck("pending", f"Triton at {address} gave no metadata for {model} version {version}")
        mismatch = compare_metadata(metadata, expected, version=version)
        if mismatch:
            return ModelCheck("failed", f"{model} version {version} does not match its signature: {mismatch}")
        return ModelCheck("passed", f"{model} version {version} is ready and matches its signature")
    except (OSError, HTTPException, ValueError) as error:  # refused, unreachable, timed out, not HTTP
        return ModelCheck("pending", f"Triton at {address} unreachable: {error or type(error).__name__}")
    finally:
        triton.close()
