"""A real Prometheus (Debian's package) that discovers pods through the local cluster's API, as in-cluster
Prometheus does, and scrapes the Triton metrics port of every pod annotated for scraping."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(kubeconfig: Path, namespaces: list[str], interval: str = "2s") -> dict[str, Any]:
    """Pod discovery + relabelling that yields the labels the operator queries (namespace, pod,
    modelops_dev_model_service, modelops_dev_revision), like a ServiceMonitor with podTargetLabels."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "kubernetes-pods",
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                       "namespaces": {"names": namespaces}}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
                {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "metrics",
                 "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_modelops_dev_(.+)",
                 "replacement": "modelops_dev_$1"},
            ],
        }],
    }


class PrometheusServer:
    """`prometheus` on a free loopback port with its own data directory; stopped by its pid."""

    def __init__(self, work_dir: Path, kubeconfig: Path, namespaces: list[str]) -> None:
        self.work_dir, self.kubeconfig, self.namespaces = work_dir, kubeconfig, namespaces
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (make deps installs Debian's package)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.kubeconfig, self.namespaces)))
        log = open(self.work_dir / "prometheus.log", "ab")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.work_dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"prometheus did not start; see {self.work_dir / 'prometheus.log'}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}),
                                    timeout=5) as r:
            return list(json.load(r)["data"]["result"])

    def active_targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as r:
            return list(json.load(r)["data"]["activeTargets"])

    def __exit__(self, *_: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

