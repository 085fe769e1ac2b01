"""Helpers for cluster tests: polling, JSON reads, and the operator as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from modelops.dev.cluster import LocalCluster

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]


def eventually(check: Callable[[], T], timeout: float = 30, what: str = "condition", interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get_json(kube: Any, *args: str) -> Any:
    return json.loads(kube.kubectl("get", *args, "-o", "json"))


def condition(obj: dict[str, Any], cond_type: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == cond_type), {})


class OperatorProcess:
    """`modelops run` for one namespace, started and stopped by the test."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.extra_args, self.extra_env = extra_args, env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # no Prometheus from the caller's environment: tests give theirs (on loopback) with --prometheus-url
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "MODELOPS_PROMETHEUS_URL": "", **self.extra_env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "modelops", "run", "-n", self.namespace, "--liveness-port", "0",
                 "--metrics-port", "0", "--verbose", *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Kube:
    """What a cluster test gets: the cluster, its kubeconfig and a namespace of its own."""

    cluster: LocalCluster
    kubeconfig: Path
    namespace: str

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, stdin=stdin).stdout
