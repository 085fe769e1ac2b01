"""The whole lifecycle with real parts only: DDP training on the kubelet stand-in, real tritonserver
serving behind kube-proxy, Debian's Prometheus scraping it, the operator scaling and canarying from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle import Lifecycle, Space

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]


def test_train_serve_scale_canary_rollback(kube, kubelet, serving_operator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lifecycle = Lifecycle(Space(kube.cluster, kube.namespace), tmp_path / "models", epochs=3)
    ok = lifecycle.run_all()
    print(lifecycle.table())
    assert ok, lifecycle.table()
    steps = [r.name.split(":")[0] for r in lifecycle.results]
    assert steps == ["train", "serve", "scale", "canary", "gate", "rollback", "pool"]
