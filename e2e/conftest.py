"""End-to-end fixtures: the cluster fixtures of tests/conftest.py, kube-proxy, the kubelet stand-in, and a real
Prometheus scraping Triton pods and an operator that reads it (serving_operator).

pytest shows a conftest's fixtures only to tests below its own folder, so tests/conftest.py's `local_cluster`,
`kube`, `crds_installed` and `operator` are loaded here too. A session that runs both tests/ and e2e/ then
starts one cluster for each folder (they coexist on free ports); moving those fixtures to a conftest.py at
the repository root would let both folders share one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # support.py, which tests/conftest.py imports


def _load_shared_fixtures() -> object:
    spec = importlib.util.spec_from_file_location("modelops_tests_conftest", REPO / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_shared = _load_shared_fixtures()
local_cluster = _shared.local_cluster  # type: ignore[attr-defined]
kube = _shared.kube  # type: ignore[attr-defined]
crds_installed = _shared.crds_installed  # type: ignore[attr-defined]
operator = _shared.operator  # type: ignore[attr-defined]

from kubelet import ProcessKubelet  # noqa: E402  (e2e/ is on sys.path, as pytest puts it there)
from modelops.dev.cluster import ClusterError, LocalCluster, free_port  # noqa: E402
from prometheus import PrometheusServer  # noqa: E402
from support import OperatorProcess  # noqa: E402


@pytest.fixture(scope="session")
def kube_proxy(local_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """kube-proxy (iptables mode) on the session's cluster: Service ClusterIPs route to ready endpoints."""
    try:
        local_cluster.start_kube_proxy(die_with_parent=True)
    except ClusterError as error:
        pytest.fail(f"kube-proxy did not start: {error}", pytrace=False)
    yield local_cluster
    local_cluster.stop_kube_proxy()


@pytest.fixture
def kubelet(kube, kube_proxy: LocalCluster, tmp_path: Path) -> Iterator[ProcessKubelet]:  # type: ignore[no-untyped-def]
    """The kubelet stand-in running the pods of this test's namespace; always stopped, pod logs printed."""
    if os.geteuid() != 0:
        pytest.skip("the kubelet stand-in needs root (network and mount namespaces)")
    stand_in = ProcessKubelet(kube.kubeconfig, tmp_path / "kubelet", namespaces=(kube.namespace,))
    stand_in.start()
    try:
        yield stand_in
    finally:
        stand_in.stop()
        for log in sorted((tmp_path / "kubelet" / "pods").glob("*/*.log")):
            print(f"--- {log.parent.name}/{log.name} ---\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def operator_metrics_port() -> int:
    """Where serving_operator serves its /metrics (Prometheus scrapes it there)."""
    return free_port()


@pytest.fixture
def prometheus(kube, tmp_path: Path, operator_metrics_port: int) -> Iterator[PrometheusServer]:  # type: ignore[no-untyped-def]
    """Debian's Prometheus scraping the test namespace's annotated pods (Triton) and the operator."""
    with PrometheusServer(tmp_path / "prometheus", kube.kubeconfig, [kube.namespace],
                          operator=f"127.0.0.1:{operator_metrics_port}") as server:
        yield server


@pytest.fixture
def serving_operator(kube, crds_installed, prometheus: PrometheusServer, operator_metrics_port: int,  # type: ignore[no-untyped-def]
                     tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator reading Triton's metrics from that Prometheus, and scraped by it."""
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log",
                              extra_args=("--prometheus-url", prometheus.url,
                                          "--metrics-port", str(operator_metrics_port)))
    process.start()
    yield process
    process.stop()
    print(f"--- operator log ---\n{process.log()[-6000:]}")
