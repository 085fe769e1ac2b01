"""Shared fixtures: one real local cluster per test session, a fresh namespace per test."""

from __future__ import annotations

import atexit
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelops.dev.cluster import ClusterError, LocalCluster, build_tools
from support import REPO, Kube, OperatorProcess


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Start one cluster for the whole run; always stop it (pass, failure, Ctrl-C, or even pytest killed:
    the components get SIGKILL from the kernel when this process dies)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), build_tools(REPO))
    atexit.register(cluster.down)
    try:
        cluster.up(die_with_parent=True)
    except ClusterError as error:
        pytest.fail(f"local cluster did not start: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def kube(local_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[Kube]:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    namespace = f"{name}-{uuid.uuid4().hex[:5]}"
    local_cluster.kubectl("create", "namespace", namespace)
    deadline = time.monotonic() + 30
    while local_cluster.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False).returncode:
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {namespace} never got its default ServiceAccount")
        time.sleep(0.1)
    yield Kube(local_cluster, local_cluster.kubeconfig, namespace)
    local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="session")
def crds_installed(local_cluster: LocalCluster) -> LocalCluster:
    """The generated CRDs applied to the session's cluster and Established."""
    local_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    local_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    return local_cluster


@pytest.fixture
def operator(kube: Kube, crds_installed: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The real operator (`modelops run`) watching the test's namespace; its log is printed on failure."""
    process = OperatorProcess(kube.kubeconfig, kube.namespace, tmp_path / "operator.log")
    process.start()
    yield process
    process.stop()
    print(f"--- operator log ({process.log_path}) ---\n{process.log()[-6000:]}")
