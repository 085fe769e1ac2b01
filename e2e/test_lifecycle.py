"""The whole lifecycle with real parts only: DDP training on the kubelet stand-in, real tritonserver
serving behind kube-proxy, Debian's Prometheus scraping it, the operator scaling and canarying from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifecycle import Lifecycle, Space
from prometheus import PrometheusServer
from support import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]


@pytest.fixture
def prometheus(kube, tmp_path: Path) -> Iterator[PrometheusServer]:  # type: ignore[no-untyped-def]
    with PrometheusServer(tmp_path / "prometheus", kube.kubeconfig, [kube.namespace]) as server:
        yield server


@pytest.fixture
def serving_operator(kube, crds_installed, prometheus: PrometheusServer,  # type: ignore[no-untyped-def]
                     tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log",
                              extra_args=("--prometheus-url", prometheus.url))
    process.start()
    yield process
    process.stop()
    print(f"--- operator log ---\n{process.log()[-6000:]}")


def test_train_serve_scale_canary_rollback(kube, kubelet, serving_operator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lifecycle = Lifecycle(Space(kube.cluster, kube.namespace), tmp_path / "models", epochs=3)
    ok = lifecycle.run_all()
    print(lifecycle.table())
    assert ok, lifecycle.table()
    assert [r.name.split(":")[0] for r in lifecycle.results] == ["train", "serve", "scale", "canary", "rollback"]
