"""`kubectl modelops watch tj NAME`: follow one TrainingJob through the watch API until it ends, drawing
its progress as a bar on a terminal, or one line per change otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from modelops import API_VERSION
from modelops.kube import ApiError, Kube
from modelops.plugin.format import TERMINAL, EpochClock, outcome_line, watch_line

KIND = "TrainingJob"
RETRIES = 5


def _phase(job: dict[str, Any]) -> str:
    return str((job.get("status") or {}).get("phase") or "Pending")


def job_states(kube: Kube, namespace: str, name: str, *, timeout_seconds: int = 300) -> Iterator[dict[str, Any] | None]:
    """Each new state of the job: the listed one, then every change the watch API delivers (a watch that
    expires continues from the last resourceVersion; 410 Gone lists again). Ends after a Succeeded or
    Failed state, or with None when the job is not there (deleted)."""
    kube.path(API_VERSION, KIND, namespace, name)  # refuses anything that is not an object name
    selector, version, failures = f"metadata.name={name}", "", 0
    while True:
        try:
            if not version:
                items, version = kube.list_objects(API_VERSION, KIND, namespace, fields=selector)
                yield items[0] if items else None
                if not items or _phase(items[0]) in TERMINAL:
                    return
            for event in kube.watch_objects(API_VERSION, KIND, namespace, version, fields=selector,
                                            timeout_seconds=timeout_seconds):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # the resourceVersion expired: list again
                    version = ""
                    break
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "DELETED":
                    yield None
                    return
                if kind in ("ADDED", "MODIFIED"):
                    yield obj
                    if _phase(obj) in TERMINAL:
                        return
            failures = 0
        except ApiError as error:
            failures += 1
            if not (error.gone or error.status == 0) or failures > RETRIES:
                raise
            version = ""
            time.sleep(min(2.0 ** failures / 4, 4.0))


class LineView:
    """On a terminal: one line redrawn in place (a new line when the phase changes); elsewhere one line
    per change, so a log or a pipe gets the history."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out, self.tty = out, tty
        self.last, self.phase = "", ""

    def show(self, line: str, phase: str) -> None:
        if line == self.last:
            return
        if not self.tty:
            self.out.write(line + "\n")
        else:
            width = shutil.get_terminal_size().columns - 1
            if self.last and phase != self.phase:
                self.out.write("\n")
            self.out.write("\r\x1b[2K" + line[:width])
        self.out.flush()
        self.last, self.phase = line, phase

    def done(self, line: str) -> None:
        self.out.write(("\n" if self.tty and self.last else "") + line + "\n")
        self.out.flush()


def watch_job(kube: Kube, namespace: str, name: str, out: TextIO | None = None, tty: bool | None = None) -> int:
    """Follow the job until it ends: 0 when it succeeded, 1 when it failed, 2 when it was deleted."""
    out = out or sys.stdout
    view = LineView(out, out.isatty() if tty is None else tty)
    clock, last = EpochClock(), None
    for job in job_states(kube, namespace, name):
        if job is None:
            if last is None:
                print(f'error: trainingjobs.modelops.dev "{name}" not found in namespace {namespace}', file=sys.stderr)
                return 1
            view.done(f"tj/{name} was deleted")
            return 2
        clock.observe((job.get("status") or {}).get("progress") or {})
        view.show(watch_line(job, clock), _phase(job))
        last = job
    assert last is not None
    view.done(outcome_line(last))
    return 0 if _phase(last) == "Succeeded" else 1
