"""The activator's routing table from the real API server: it lists and watches the EndpointSlices the operator
labels for it (modelops.dev/activator-targets), as a ServiceAccount that may only get/list/watch them, and
follows their changes (targets, the not-ready reason) and deletion; a Service's ordinary slice is not read."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from modelops.activator.routing import Backend, Target
from modelops.activator.server import Activator
from modelops.activator.watch import watch_targets
from modelops.kube import Kube
from support import eventually

pytestmark = pytest.mark.cluster

ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: activator}
rules:
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [get, list, watch]
"""


def target_slice(addresses: list[str], reason: str = "", name: str = "digits-activator-targets",
                 labels: dict[str, str] | None = None) -> str:
    return json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name,
                     "labels": labels if labels is not None else {"modelops.dev/activator-targets": "true",
                                                                  "modelops.dev/modelservice": "digits"},
                     "annotations": {"modelops.dev/model": "digits", "modelops.dev/model-version": "3",
                                     "modelops.dev/not-ready-reason": reason}},
        "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}, {"name": "grpc", "port": 8001, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": False}} for a in addresses]})


def least_privilege_kubeconfig(kube: Any, path: Path) -> Path:
    """A kubeconfig for a ServiceAccount bound to ROLE only (a token from the TokenRequest API)."""
    kube.kubectl("create", "serviceaccount", "activator")
    kube.kubectl("apply", "-f", "-", stdin=ROLE)
    kube.kubectl("create", "rolebinding", "activator", "--role=activator",
                 f"--serviceaccount={kube.namespace}:activator")
    token = kube.kubectl("create", "token", "activator").strip()
    config = json.loads(kube.cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config["users"] = [{"name": "activator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "activator"
    path.write_text(json.dumps(config))
    assert kube.kubectl("auth", "can-i", "create", "endpointslices",
                        f"--as=system:serviceaccount:{kube.namespace}:activator", check=False).strip() == "no"
    return path


def test_the_routing_table_follows_the_operators_slices(kube: Any, tmp_path: Path) -> None:
    activator = Activator()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    client = Kube.from_kubeconfig(str(least_privilege_kubeconfig(kube, tmp_path / "kubeconfig")))
    kube.kubectl("apply", "-f", "-", stdin=target_slice(["10.0.0.5"]))
    # a Service's own slice (kube-proxy's) carries no activator label: never read
    kube.kubectl("apply", "-f", "-", stdin=target_slice(["10.9.9.9"], name="other",
                                                        labels={"kubernetes.io/service-name": "other"}))
    stop = threading.Event()
    watch_targets(client, activator, loop, kube.namespace, stop)
    key = f"{kube.namespace}/digits"

    def backend() -> Backend | None:
        return asyncio.run_coroutine_threadsafe(_get(activator, key), loop).result(5)

    assert eventually(backend, what="the listed slice") == Backend(kube.namespace, "digits", "digits", 3,
                                                                   (Target("10.0.0.5"),))
    kube.kubectl("apply", "-f", "-", stdin=target_slice(["10.0.0.5", "10.0.0.6"], reason="Unschedulable: no GPU"))
    updated = eventually(lambda: (b := backend()) and len(b.targets) == 2 and b, what="the watched change")
    assert updated.reason == "Unschedulable: no GPU"
    assert list(asyncio.run_coroutine_threadsafe(_keys(activator), loop).result(5)) == [key]
    kube.kubectl("delete", "endpointslice", "digits-activator-targets")
    eventually(lambda: backend() is None, what="the deletion")
    stop.set()
    loop.call_soon_threadsafe(loop.stop)


async def _get(activator: Activator, key: str) -> Backend | None:
    return activator.backends.get(key)


async def _keys(activator: Activator) -> list[str]:
    return list(activator.backends)
