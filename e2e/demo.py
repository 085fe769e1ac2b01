"""`make demo`: the whole lifecycle on one machine, with a summary table at the end.

Starts (or reuses) the local cluster in .cluster/ with kube-proxy, installs the CRDs, runs the operator,
the kubelet stand-in and Prometheus, then walks e2e/lifecycle.py's steps in the `demo` namespace.
Everything it started is stopped at the end; --keep leaves the cluster (API objects, kubeconfig) up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "e2e"), str(REPO / "tests")]

from kubelet import ProcessKubelet  # noqa: E402
from lifecycle import NAMESPACE, Lifecycle, Space  # noqa: E402
from prometheus import PrometheusServer  # noqa: E402
from support import OperatorProcess, eventually  # noqa: E402

from modelops.dev.cluster import LocalCluster, build_tools  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the local cluster running afterwards")
    parser.add_argument("--work-dir", type=Path, default=REPO / ".demo",
                        help="model repository, logs, Prometheus data (recreated each run)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("make demo needs root: pods run in network and mount namespaces", file=sys.stderr)
        return 2

    work = args.work_dir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "models").mkdir(parents=True)
    started = time.monotonic()
    cluster = LocalCluster(REPO / ".cluster", build_tools(REPO))
    ours = not cluster.running()
    if ours:
        print(f"starting the local cluster ({cluster.root})")
        cluster.up(kube_proxy=True)
    else:
        print(f"reusing the running cluster in {cluster.root}")
        cluster.fence()  # it may predate the network fence
        if not cluster.status().get("components", {}).get("kube-proxy") == "running":
            cluster.start_kube_proxy()
    space = Space(cluster, NAMESPACE)
    ok = False
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s")
        cluster.kubectl("create", "namespace", NAMESPACE)
        eventually(lambda: cluster.kubectl("-n", NAMESPACE, "get", "sa", "default", check=False).returncode == 0,
                 30, "the namespace's default ServiceAccount", interval=0.2)

        with ExitStack() as stack:
            stack.enter_context(ProcessKubelet(cluster.kubeconfig, work / "kubelet", namespaces=(NAMESPACE,)))
            prometheus = stack.enter_context(PrometheusServer(work / "prometheus", cluster.kubeconfig, [NAMESPACE]))
            operator = OperatorProcess(cluster.kubeconfig, NAMESPACE, work / "operator.log",
                                       extra_args=("--prometheus-url", prometheus.url))
            operator.start()
            stack.callback(operator.stop)
            print(f"operator, kubelet stand-in and Prometheus ({prometheus.url}) running; logs in {work}")

            lifecycle = Lifecycle(space, work / "models")
            ok = lifecycle.run_all()
        print()
        print(lifecycle.table())
        print(f"\n{'all steps passed' if ok else 'a step FAILED'} in {time.monotonic() - started:.0f}s "
              f"(logs: {work})")
    finally:
        if ours and not args.keep:
            cluster.down()
        elif args.keep:
            print(f"cluster kept: export KUBECONFIG={cluster.kubeconfig}; `make cluster-down` stops it")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
