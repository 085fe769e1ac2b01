"""Progress reporting: JSON in the pod annotation `modelops.dev/progress`, `PROGRESS ` stdout lines, the termination log."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TextIO

from modelops.clock import rfc3339

log = logging.getLogger(__name__)

PROGRESS_ANNOTATION = "modelops.dev/progress"
STDOUT_PREFIX = "PROGRESS "
TERMINATION_LOG = Path("/dev/termination-log")
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
MIN_INTERVAL_S = 2.0


def utc_now() -> str:
    """RFC 3339 UTC time with second precision, e.g. 2024-05-01T12:00:00Z."""
    return rfc3339()


class Sink(Protocol):
    """Somewhere progress JSON goes besides stdout."""

    def send(self, payload: str) -> None: ...


class PodAnnotationSink:
    """Patches the progress annotation on this pod; API errors are logged and ignored."""

    def __init__(self, name: str, namespace: str, api: Any) -> None:
        self.name, self.namespace, self.api = name, namespace, api

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, token: Path = SERVICE_ACCOUNT_TOKEN) -> PodAnnotationSink | None:
        """A sink for POD_NAME/POD_NAMESPACE with in-cluster or KUBECONFIG credentials; None (and one log line) otherwise."""
        env = dict(os.environ if env is None else env)
        name, namespace = env.get("POD_NAME"), env.get("POD_NAMESPACE")
        if not (name and namespace):
            log.info("progress goes to stdout only: POD_NAME/POD_NAMESPACE not set")
            return None
        if not token.exists() and not env.get("KUBECONFIG"):
            log.info("progress goes to stdout only: no in-cluster service account token and no KUBECONFIG")
            return None
        try:
            from kubernetes import client, config

            if token.exists():
                config.load_incluster_config()
            else:
                config.load_kube_config(config_file=env["KUBECONFIG"])
            api = client.CoreV1Api()
        except Exception as exc:  # reporting must never stop training
            log.info("progress goes to stdout only: cannot configure the kubernetes client (%s)", exc)
            return None
        log.info("progress goes to annotation %s of pod %s/%s", PROGRESS_ANNOTATION, namespace, name)
        return cls(name, namespace, api)

    def send(self, payload: str) -> None:
        body = {"metadata": {"annotations": {PROGRESS_ANNOTATION: payload}}}
        try:
            self.api.patch_namespaced_pod(self.name, self.namespace, body, _request_timeout=10)
        except Exception as exc:  # reporting must never stop training
            log.warning("progress patch of pod %s/%s failed: %s", self.namespace, self.name, str(exc).splitlines()[0])


class ProgressReporter:
    """Throttled progress (at most one report per `min_interval` s), always sending the final one."""

    def __init__(self, sink: Sink | None, *, min_interval: float = MIN_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, out: TextIO | None = None,
                 termination_log: Path | None = TERMINATION_LOG) -> None:
        self.sink, self.min_interval, self.clock = sink, min_interval, clock
        self.out = out
        self.termination_log = termination_log
        self._last_sent: float | None = None
        self.last: dict[str, Any] = {}

    def due(self) -> bool:
        """Whether an update now would be sent (lets callers skip computing costly fields)."""
        return self._last_sent is None or self.clock() - self._last_sent >= self.min_interval

    def update(self, *, force: bool = False, **fields: Any) -> bool:
        """Record the latest progress; send it unless one was sent less than min_interval ago (or force). True when sent."""
        if not (force or self.due()):
            self.last.update((k, v) for k, v in fields.items() if v is not None)
            return False
        self.last = self._payload(fields)
        self._send(self.last)
        self._last_sent = self.clock()
        return True

    def forget(self, *keys: str) -> None:
        """Leave `keys` out of the reports from now on (a field that no longer holds, e.g. a past error)."""
        for key in keys:
            self.last.pop(key, None)

    def final(self, **fields: Any) -> dict[str, Any]:
        """Send the final report now (never throttled) and write it to the termination log."""
        self.last = self._payload(fields)
        self._send(self.last)
        self._last_sent = self.clock()
        write_termination_log(json.dumps(self.last, separators=(",", ":")), self.termination_log)
        return self.last

    def _payload(self, fields: dict[str, Any]) -> dict[str, Any]:
        payload = {**self.last, **{k: v for k, v in fields.items() if v is not None}, "updated": utc_now()}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in payload.items()}

    def _send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        out = self.out or sys.stdout
        print(STDOUT_PREFIX + text, file=out, flush=True)
        if self.sink is not None:
            self.sink.send(text)


@contextmanager
def deferred_termination() -> Iterator[None]:
    """Hold a SIGTERM until the block ends, then take it as before (by default: the process ends). An evicted
    or preempted pod gets SIGTERM first: this keeps it from ending between a checkpoint's save and the report
    of it. A SIGKILL is not held, so a report may lag the checkpoint but never lead it. Signals are handled
    in the main thread only: elsewhere the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if held:
            signal.raise_signal(signal.SIGTERM)


def write_termination_log(text: str, path: Path | None = TERMINATION_LOG) -> None:
    """Write `text` to the termination log inside a pod (the kubelet provides the file and sets
    KUBERNETES_SERVICE_HOST); outside one, a stray /dev/termination-log must not be written."""
    if path is None or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return
    if not (path.is_file() or path.is_char_device()) or not os.access(path, os.W_OK):
        return
    try:
        path.write_text(text)
    except OSError as exc:
        log.debug("cannot write %s: %s", path, exc)


def failure_message(message: str) -> str:
    """The termination-log JSON of a failed run."""
    return json.dumps({"phase": "Failed", "message": message, "updated": utc_now()}, separators=(",", ":"))


class NullReporter(ProgressReporter):
    """For ranks other than 0: reports nothing."""

    def __init__(self) -> None:
        super().__init__(None, termination_log=None)

    def due(self) -> bool:
        return False

    def _send(self, payload: dict[str, Any]) -> None:
        pass
