"""Talks to one pool server (Triton's HTTP API and its metrics endpoint) to load, unload and report; the
types, the rules and the reading of the answers are modelops.triton.pool's (pure). Stdlib only."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from modelops.triton.pool import (DEFAULT_METRICS_PORT, NO_MEMORY, Memory, ModelToLoad, ServerReport,
                                  TritonPoolError, load_request, model_bytes, read_memory, server_report)

REPORT_TIMEOUT = 5.0
"""report() is on the planner's path: a hung server must not hold a pass for the load timeout."""
UNLOAD_POLL_S = 0.1


class TritonPoolClient:
    """Loads, unloads and reports on one pool server at `base_url` (http://host:port of its HTTP endpoint),
    reading memory from `metrics_url` (default: the same host, port 8002, as server_args starts it).
    Not thread-safe; the caller serializes loads and unloads per server, which is what makes a GPU gauge
    difference one model's. Those differences are remembered by this client: report() gives them for the
    copies it loaded (the python runtime's own gauge needs no such memory)."""

    def __init__(self, base_url: str, timeout: float = 120.0, metrics_url: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        if metrics_url is None:
            parts = urlsplit(self.base_url)
            metrics_url = urlunsplit((parts.scheme, f"{parts.hostname}:{DEFAULT_METRICS_PORT}", "/metrics", "", ""))
        self.metrics_url = metrics_url
        self._gpu_bytes: dict[tuple[str, int], int] = {}

    def report(self) -> ServerReport:
        """What the server holds now. Never raises: an unreachable or misbehaving server is reachable=False."""
        try:
            index = self._call("POST", "/v2/repository/index", {}, REPORT_TIMEOUT)
            stats = self._call("GET", "/v2/models/stats", None, REPORT_TIMEOUT)
        except TritonPoolError:
            return ServerReport(False, (), None)
        return server_report(index, stats, self._memory(REPORT_TIMEOUT), self._gpu_bytes)

    def load(self, model: ModelToLoad) -> int | None:
        """Load `model` (its pinned version; Triton answers when the load has finished) and check it is READY;
        return its measured bytes (GPU server: the gauge's rise; CPU: its python stubs' anonymous memory) or
        None. Raises TritonPoolError (refused, failed, not ready, unreachable)."""
        before = self._memory(self.timeout)
        self._call("POST", f"/v2/repository/models/{quote(model.name, safe='')}/load", load_request(model),
                   self.timeout)
        if not self._ready(model.name, model.version):
            raise TritonPoolError(f"{model.name} version {model.version} is not ready after its load "
                                  f"({self._state(model.name, model.version)})")
        after = self._memory(self.timeout)
        if before.gpu is not None and after.gpu is not None:
            self._gpu_bytes[(model.name, model.version)] = max(0, after.gpu - before.gpu)
        return model_bytes(after, model.name, model.version, self._gpu_bytes)

    def unload(self, name: str) -> int | None:
        """Unload every version of `name` and wait until Triton holds none (in-flight requests answered, python
        stubs exited); return the bytes given back, measured: GPU server, the gauge's fall; CPU, the runtime's
        gauge of `name` before minus after (its series ends when its process does). None if not measured.
        Raises TritonPoolError (refused, unreachable, still unloading after the timeout)."""
        before = self._memory(self.timeout)
        self._call("POST", f"/v2/repository/models/{quote(name, safe='')}/unload", {}, self.timeout)
        deadline = time.monotonic() + self.timeout
        while True:
            index = self._call("POST", "/v2/repository/index", {}, self.timeout)
            busy = [e for e in index or [] if e.get("name") == name and e.get("state") != "UNAVAILABLE"]
            if not busy:
                break
            if time.monotonic() > deadline:
                raise TritonPoolError(f"{name} still {busy[0].get('state')} {self.timeout:.0f}s after its unload")
            time.sleep(UNLOAD_POLL_S)
        after = self._memory(self.timeout)
        for key in [key for key in self._gpu_bytes if key[0] == name]:
            del self._gpu_bytes[key]
        if before.gpu is not None and after.gpu is not None:
            return max(0, before.gpu - after.gpu)
        if not before.model(name):
            return None  # nothing of it was measured (pytorch backend on CPU, or metrics off)
        return max(0, before.model(name) - after.model(name))

    def _ready(self, name: str, version: int) -> bool:
        request = urllib.request.Request(f"{self.base_url}/v2/models/{quote(name, safe='')}/versions/{version}/ready")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bool(response.status == 200)
        except (OSError, HTTPException, ValueError):  # HTTPError (not ready) included
            return False

    def _state(self, name: str, version: int) -> str:
        """The index's word on a version, for messages. The index lists the repository's folders only: a
        pool's models always have one (the published versions live there)."""
        index = self._call("POST", "/v2/repository/index", {}, self.timeout)
        entry = next((e for e in index or [] if e.get("name") == name and str(e.get("version")) == str(version)),
                     None)
        if entry is None:
            return "absent"
        return str(entry.get("state")) + (f" ({entry['reason']})" if entry.get("reason") else "")

    def _memory(self, timeout: float) -> Memory:
        """The metrics page's memory figures; none if it cannot be read (then nothing is measured)."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=timeout) as response:
                return read_memory(response.read().decode(errors="replace"))
        except (OSError, HTTPException, ValueError):
            return NO_MEMORY

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read(4096).decode(errors="replace")
            try:
                detail = json.loads(detail).get("error", detail)
            except (ValueError, AttributeError):
                pass
            raise TritonPoolError(f"{method} {path}: HTTP {error.code}: {detail}") from None
        except (OSError, HTTPException, ValueError) as error:  # refused, unreachable, timed out, not HTTP
            raise TritonPoolError(f"{method} {path}: {error or type(error).__name__}") from None
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise TritonPoolError(f"{method} {path}: not JSON: {payload[:200]!r}") from None
