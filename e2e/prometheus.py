"""A real Prometheus (Debian's package) scraping the Triton metrics port of every pod annotated for scraping,
found through the local cluster's API as kubernetes_sd would find them, and optionally the operator's /metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from modelops.dev.cluster import free_port


def scrape_config(targets_file: Path, interval: str = "2s", operator: str | None = None) -> dict[str, Any]:
    """Scrape whatever the pod discovery below writes (Debian's Prometheus is built without kubernetes_sd),
    and the operator at `operator` (host:port) as the chart's ServiceMonitor does: honoring its labels, so
    its per-resource series keep the resource's `namespace`."""
    jobs: list[dict[str, Any]] = [{"job_name": "kubernetes-pods",
                                   "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "2s"}]}]
    if operator:
        jobs.append({"job_name": "modelops-operator", "honor_labels": True,
                     "static_configs": [{"targets": [operator]}]})
    return {"global": {"scrape_interval": interval, "evaluation_interval": interval}, "scrape_configs": jobs}


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus targets for Running pods annotated prometheus.io/scrape, labelled as kubernetes_sd plus
    relabelling would (namespace, pod, and modelops_dev_* from our pod labels, as ServiceMonitor
    podTargetLabels give)."""
    targets = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        annotations = meta.get("annotations") or {}
        if annotations.get("prometheus.io/scrape") != "true" or status.get("phase") != "Running" \
                or not status.get("podIP") or meta.get("deletionTimestamp"):
            continue
        labels = {"namespace": meta["namespace"], "pod": meta["name"]}
        for key, value in (meta.get("labels") or {}).items():
            if key.startswith("modelops.dev/"):
                labels["modelops_dev_" + key.split("/", 1)[1].replace("-", "_").replace(".", "_")] = value
        port = annotations.get("prometheus.io/port", "9090")
        targets.append({"targets": [f"{status['podIP']}:{port}"], "labels": labels})
    return targets


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error."""


class PrometheusServer:
    """`prometheus` on a free loopback port with its own data directory; stopped by its pid."""

    def __init__(self, work_dir: Path, kubeconfig: Path, namespaces: list[str], operator: str | None = None) -> None:
        self.work_dir, self.kubeconfig, self.namespaces, self.operator = work_dir, kubeconfig, namespaces, operator
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.targets_file = work_dir / "targets.json"
        self._stop = threading.Event()
        self._discovery: threading.Thread | None = None

    def _discover(self) -> None:
        """Pod discovery through the API (what kubernetes_sd does), written where file_sd reads it."""
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(str(self.kubeconfig)))
        while not self._stop.is_set():
            try:
                pods = [p.to_dict() for ns in self.namespaces for p in api.list_namespaced_pod(ns).items]
                text = json.dumps(pod_targets([_camel(p) for p in pods]), indent=1)
                if not self.targets_file.exists() or self.targets_file.read_text() != text:
                    tmp = self.targets_file.with_suffix(".tmp")
                    tmp.write_text(text)
                    tmp.replace(self.targets_file)
            except Exception as error:  # the API may blink; discovery keeps the last targets
                print(f"prometheus discovery: {error}")
            self._stop.wait(1.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (make deps installs Debian's package)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        self.targets_file.write_text("[]")
        config.write_text(yaml.safe_dump(scrape_config(self.targets_file, operator=self.operator)))
        self._discovery = threading.Thread(target=self._discover, name="prometheus-discovery", daemon=True)
        self._discovery.start()
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
        return list(self.api("query", query=promql)["result"])

    def api(self, endpoint: str, **params: str | float | list[str]) -> Any:
        """GET /api/v1/<endpoint>: its `data`; PrometheusError with Prometheus' own message otherwise."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{endpoint}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as error:  # 400/422: a query it cannot parse or run
            body = json.load(error)
        if body.get("status") != "success":
            raise PrometheusError(f"{endpoint} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def active_targets(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=5) as r:
            return list(json.load(r)["data"]["activeTargets"])

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._discovery:
            self._discovery.join(timeout=5)
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None



def _camel(pod: dict[str, Any]) -> dict[str, Any]:
    """The client's snake_case pod dict, with the few camelCase keys pod_targets reads."""
    meta, status = pod["metadata"], pod.get("status") or {}
    return {"metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": meta.get("labels"),
                         "annotations": meta.get("annotations"), "deletionTimestamp": meta.get("deletion_timestamp")},
            "status": {"phase": status.get("phase"), "podIP": status.get("pod_ip")}}
