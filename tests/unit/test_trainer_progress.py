"""Unit tests of progress reporting: throttling, the final report, stdout lines, termination log, failing API."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modelops.trainer.distributed import DistEnv
from modelops.trainer.progress import PROGRESS_ANNOTATION, PodAnnotationSink, ProgressReporter, deferred_termination


class Clock:
    """A settable clock (injected instead of time.monotonic)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingSink:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []

    def send(self, payload: str) -> None:
        self.sent.append(json.loads(payload))


def test_throttled_to_one_report_per_two_seconds_and_final_always_sent(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # inside a pod: the termination log is written
    clock, sink, out = Clock(), RecordingSink(), io.StringIO()
    termination = tmp_path / "termination-log"
    termination.write_text("")
    reporter = ProgressReporter(sink, clock=clock, out=out, termination_log=termination)
    assert reporter.update(phase="Training", epoch=1, epochs=3, step=1, loss=2.0)
    clock.now += 1.0
    assert not reporter.update(phase="Training", epoch=1, epochs=3, step=2, loss=1.5, valAccuracy=None)
    clock.now += 1.0
    assert reporter.update(phase="Training", epoch=2, epochs=3, step=3, loss=1.0, valAccuracy=0.8)
    clock.now += 0.1
    final = reporter.final(phase="Succeeded", testAccuracy=0.91, model={"name": "m", "version": 2, "uri": "/models/m/2"})
    assert [r["step"] for r in sink.sent] == [1, 3, 3]
    assert sink.sent[-1] == final
    assert final["phase"] == "Succeeded" and final["epoch"] == 2 and final["valAccuracy"] == 0.8
    assert final["updated"].endswith("Z") and "T" in final["updated"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("PROGRESS {") for line in lines)
    assert json.loads(lines[-1].removeprefix("PROGRESS ")) == final
    assert json.loads(termination.read_text()) == final


def test_no_pod_identity_means_stdout_only(tmp_path: Path) -> None:
    assert PodAnnotationSink.from_env({}, token=tmp_path / "token") is None
    assert PodAnnotationSink.from_env({"POD_NAME": "p", "POD_NAMESPACE": "n"}, token=tmp_path / "token") is None


def test_api_errors_are_logged_not_raised() -> None:
    class FailingApi:
        """Fault injection: the API server refuses every patch."""

        calls: list[tuple[str, str, dict[str, object]]] = []

        def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, object], **_: object) -> None:
            self.calls.append((name, namespace, body))
            raise RuntimeError("403 Forbidden\nbody")

    api = FailingApi()
    PodAnnotationSink("trainer-0", "ns", api).send('{"phase":"Training"}')
    assert api.calls == [("trainer-0", "ns", {"metadata": {"annotations": {PROGRESS_ANNOTATION: '{"phase":"Training"}'}}})]


def test_dist_env_parsing() -> None:
    assert DistEnv.from_env({}) == DistEnv()
    env = DistEnv.from_env({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"})
    assert env.distributed and not env.is_main and env.world_size == 2


def test_forget_drops_a_field_from_the_following_reports() -> None:
    sink = RecordingSink()
    reporter = ProgressReporter(sink, min_interval=0, out=io.StringIO(), termination_log=None)
    reporter.update(epoch=2, checkpointedEpoch=1, checkpointError="epoch 2 not saved: disk full")
    reporter.forget("checkpointError", "never-reported")
    reporter.update(epoch=3, checkpointedEpoch=3)
    assert [(r["epoch"], r["checkpointedEpoch"], r.get("checkpointError")) for r in sink.sent] == [
        (2, 1, "epoch 2 not saved: disk full"), (3, 3, None)]


DEFERRED_CHILD = """
import os, signal
from modelops.trainer.progress import deferred_termination
with deferred_termination():
    os.kill(os.getpid(), signal.SIGTERM)  # an eviction arriving mid-save
    print("saved", flush=True)
    print("reported", flush=True)
print("after the block", flush=True)
"""


def test_a_sigterm_during_deferred_termination_ends_the_process_after_the_block() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", DEFERRED_CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGTERM, child.stderr
    assert child.stdout.splitlines() == ["saved", "reported"]


def test_deferred_termination_hands_a_held_sigterm_to_the_previous_handler() -> None:
    received: list[int] = []
    original = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        with deferred_termination():
            signal.raise_signal(signal.SIGTERM)
            assert received == []
        assert received == [signal.SIGTERM]
        with deferred_termination():  # nothing held: nothing raised
            pass
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)
