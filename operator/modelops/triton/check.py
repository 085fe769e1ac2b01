"""Asks a running Triton, through tritonclient, whether a model version is loaded and what it expects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
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


@contextmanager
def _thread_hub() -> Iterator[None]:
    """A gevent hub for this call only, destroyed when it ends, unless the thread already had one.

    tritonclient.http runs on geventhttpclient, and gevent gives each OS thread that blocks on a gevent
    socket a hub of its own: a libev loop (an epoll fd and an eventfd) and, for the getaddrinfo of every
    connect, a resolver thread pool with a native worker thread that holds the hub. Nothing takes these
    down when the thread ends (gevent asks that such hubs be destroyed explicitly), so every call from a
    fresh thread left 2 fds, an idle OS thread and ~60 KB behind. Destroying the hub the call created
    frees all of it, whichever thread calls; the blocking resolver keeps the call from starting a worker
    thread at all (addresses are pod IPs: nothing to look up; a host name would be resolved in this
    thread, outside the timeout)."""
    import gevent
    from gevent._hub_local import get_hub_if_exists
    from gevent.resolver.blocking import Resolver

    if get_hub_if_exists() is not None:  # someone else's hub in this thread: theirs to keep
        yield
        return
    hub = gevent.get_hub()
    hub.resolver = Resolver(hub=hub)
    try:
        yield
    finally:
        # Run the loop out first (the client is closed: nothing is left in it), so that the hub greenlet
        # waits where destroy() can end it; destroying a hub parked in a loop callback instead leaves the
        # hub, its greenlet and frames alive (~7 KB a call).
        if not hub.join(timeout=1.0):
            log.debug("gevent hub still had work after a model check; destroying it anyway")
        hub.destroy()  # and its loop, unless it is the process's default loop (main thread: one, reused)


def check_model(address: str, model: str, version: int, expected: dict[str, Any] | None, *,
                timeout: float = 2.0) -> ModelCheck:
    """Check the model on the Triton at `address` (host:port of its HTTP endpoint).

    `timeout` bounds every connect and every read, and the whole check: a server that is unreachable,
    or accepts and never answers, gives `pending` after about `timeout`. Safe from any thread: the call
    leaves no connection, fd, thread or event loop behind."""
    import gevent

    with _thread_hub():
        # The socket timeouts bound each connect and each read; this bounds the whole check too (four
        # requests, and geventhttpclient reconnects when a server closes the connection before answering).
        deadline = gevent.Timeout(timeout)
        try:
            with deadline:
                return _check(address, model, version, expected, timeout)
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            return ModelCheck("pending", f"Triton at {address} did not answer within {timeout:g} s")


def _check(address: str, model: str, version: int, expected: dict[str, Any] | None,
           timeout: float) -> ModelCheck:
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
    except OSError as error:  # not listening yet, unreachable, timed out
        return ModelCheck("pending", f"Triton at {address} unreachable: {error}")
    except (HTTPException, ValueError) as error:  # closed early, not HTTP, not JSON: not (yet) a Triton answer
        return ModelCheck("pending", f"Triton at {address} gave no usable answer: {error!r}")
    finally:
        client.close()
