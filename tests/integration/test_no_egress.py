"""No packet to the cluster's made-up addresses leaves the machine: the fence LocalCluster.up() puts up.

kwok hands out pod IPs that no process owns (no kubelet stand-in here), the API server ClusterIPs, the nodes
say 10.0.0.1. Connections to them must fail at once on the host, never go out by the default route."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from modelops.dev.cluster import FENCE_PROTO, NODE_IP, LocalCluster, fence_status, free_port
from support import eventually

pytestmark = pytest.mark.cluster

EGRESS_CHAINS = ("OUTPUT", "FORWARD")  # sent by the host / routed for a pod


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def iptables(*args: str) -> str:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def egress_packets(local_cluster: LocalCluster) -> Iterator[Callable[[], int]]:
    """Packets to 10.0.0.0/8 leaving by the default route's device, counted by target-less iptables rules
    (OUTPUT and FORWARD) for as long as this module runs; the rules are removed afterwards."""
    default = json.loads(ip("-j", "-4", "route", "show", "default").stdout or "[]")
    if not default:
        pytest.skip("no default route: nothing could leave by it")
    comment = f"modelops-no-egress-{uuid.uuid4().hex[:8]}"
    rule = ["-d", "10.0.0.0/8", "-o", default[0]["dev"], "-m", "comment", "--comment", comment]
    for chain in EGRESS_CHAINS:
        iptables("-I", chain, *rule)

    def count() -> int:
        saved = iptables("-t", "filter", "-S", "-v")  # counters as `-c <packets> <bytes>`
        lines = [line for line in saved.splitlines() if comment in line]
        assert len(lines) == len(EGRESS_CHAINS), f"counter rules missing: {lines}"
        return sum(int(line.split(" -c ")[1].split()[0]) for line in lines)

    try:
        yield count
        assert count() == 0, "packets to 10.0.0.0/8 left by the default route"
    finally:
        for chain in EGRESS_CHAINS:
            subprocess.run(["iptables", "-w", "-D", chain, *rule], capture_output=True, check=False)


@pytest.fixture
def kwok_pod_ip(kube) -> str:  # type: ignore[no-untyped-def]
    """A pod kwok runs on paper: Running with a pod IP, no process behind it."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nobody"},
           "spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}]}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    return str(eventually(lambda: json.loads(kube.kubectl("get", "pod", "nobody", "-o", "json"))["status"].get("podIP"),
                          what="a pod IP from kwok"))


def connect_error(address: str, port: int) -> tuple[int | None, float]:
    """(errno of a failed TCP connect or None when it connected, seconds it took)."""
    started = time.monotonic()
    try:
        socket.create_connection((address, port), timeout=5).close()
        code = None
    except OSError as error:
        code = error.errno
    return code, time.monotonic() - started


def test_ranges_are_fenced_by_our_routes(local_cluster: LocalCluster) -> None:
    ours = ip("-4", "route", "show", "table", "all", "proto", FENCE_PROTO).stdout
    assert "unreachable 10.244.0.0/16" in ours
    assert "unreachable 10.0.0.0/24" in ours
    assert "local 10.96.0.0/16 dev lo table local" in ours
    assert fence_status() == {"10.244.0.0/16": "unreachable", "10.0.0.0/24": "unreachable", "10.96.0.0/16": "local"}
    assert local_cluster.status()["fence"] == fence_status()


def test_connects_to_pod_service_and_node_fail_at_once(kube, kwok_pod_ip: str,  # type: ignore[no-untyped-def]
                                                       egress_packets: Callable[[], int]) -> None:
    port = free_port()  # nothing on the host listens on it, so a ClusterIP without a rule has no taker
    kube.kubectl("create", "service", "clusterip", "web", f"--tcp={port}:{port}")
    cluster_ip = json.loads(kube.kubectl("get", "service", "web", "-o", "json"))["spec"]["clusterIP"]

    pod_route = ip("route", "get", kwok_pod_ip)
    assert pod_route.returncode and "No route to host" in pod_route.stderr, pod_route.stdout
    assert json.loads(ip("-j", "route", "get", cluster_ip).stdout)[0]["type"] == "local"

    code, seconds = connect_error(kwok_pod_ip, 8000)
    assert code == errno.EHOSTUNREACH and seconds < 0.5, (code, seconds)
    code, seconds = connect_error(cluster_ip, port)
    assert code == errno.ECONNREFUSED and seconds < 0.5, (code, seconds)
    # the node IP (the API server would dial it for logs and exec): unreachable, or refused by the host when
    # a kubelet stand-in holds it on `lo`
    code, seconds = connect_error(NODE_IP, 10250)
    assert code in (errno.EHOSTUNREACH, errno.ECONNREFUSED) and seconds < 0.5, (code, seconds)
    assert egress_packets() == 0


def test_model_check_against_a_kwok_pod_fails_fast(kwok_pod_ip: str, egress_packets: Callable[[], int]) -> None:
    from modelops.triton.check import check_model

    started = time.monotonic()
    result = check_model(f"{kwok_pod_ip}:8000", "m", 1, None)
    seconds = time.monotonic() - started
    assert result.verdict == "pending", result
    assert seconds < 1.0, f"the check took {seconds:.2f}s: {result.message}"
    assert egress_packets() == 0
