"""The `modelops` command line: run the operator, write the CRDs, drive the local dev cluster, and the
day-two commands of the kubectl plugin (modelops.plugin: `modelops get` is `kubectl modelops get`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in cluster")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: all namespaces")
    run.add_argument("--liveness-port", type=int, default=8080, help="serves /healthz; 0 disables it")
    run.add_argument("--metrics-port", type=int, default=9090, help="serves Prometheus /metrics; 0 disables it")
    run.add_argument("--log-format", choices=("plain", "json"), default="plain")
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--peering", default=None,
                     help="kopf peering object name, for several replicas (needs kopf's peering CRDs)")
    run.add_argument("--priority", type=int, default=0, help="this replica's peering priority")
    run.add_argument("--peering-lifetime", type=int, default=10,
                     help="seconds a replica's peering record stays valid without a keep-alive: a standby takes "
                          "over at most this long after the active replica died")
    run.add_argument("--workers", type=int, default=16,
                     help="reconcile passes run in parallel (work queue workers; passes mostly wait on the API server)")
    run.add_argument("--check-workers", type=int, default=4, help="model checks run in parallel")
    run.add_argument("--prometheus-url", default=os.environ.get("MODELOPS_PROMETHEUS_URL", ""),
                     help="Prometheus for autoscaling and canary analysis (env MODELOPS_PROMETHEUS_URL)")
    run.add_argument("--activator-service", default=os.environ.get("MODELOPS_ACTIVATOR_SERVICE", ""),
                     help="namespace/name of the activator's Service: its pods' /demand brings ModelServices back "
                          "from zero (env MODELOPS_ACTIVATOR_SERVICE; unset: nothing scales to zero)")
    run.set_defaults(handler=_run)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--out", type=Path, default=Path("crds"), help="directory to write into")
    crds.add_argument("--chart", type=Path, default=Path("charts/modelops/crds"),
                      help="the Helm chart's copy (written too); '' to skip")
    crds.add_argument("--check", action="store_true", help="fail if the files on disk differ (drift check)")
    crds.set_defaults(handler=_crds)

    act = commands.add_parser("activator", help="hold Triton requests for ModelServices at zero until the model "
                              "is ready (docs/scale-to-zero.md)")
    act.add_argument("--http-port", type=int, default=8000)
    act.add_argument("--grpc-port", type=int, default=8001)
    act.add_argument("--admin-port", type=int, default=9090, help="serves /demand, /metrics and /healthz")
    act.add_argument("--address", default="0.0.0.0")
    act.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: all namespaces")
    act.add_argument("--no-watch", action="store_true", help="use only --backend entries (no API server)")
    act.add_argument("--backend", action="append", default=[],
                     help="a fixed entry: namespace/name=model:version@host:httpPort:grpcPort[,...] (repeatable)")
    act.add_argument("--max-held", type=int, default=1000, help="held requests per ModelService")
    act.add_argument("--max-held-total", type=int, default=5000, help="held requests in all")
    act.add_argument("--hold-seconds", type=float, default=300.0, help="how long one request may be held")
    act.add_argument("--drain-lag", type=float, default=5.0,
                     help="after SIGTERM, seconds to keep taking requests while endpoints drop this pod")
    act.set_defaults(handler=_activator)

    dev = commands.add_parser("dev", help="local development helpers").add_subparsers(dest="dev", required=True)
    cluster = dev.add_parser("cluster", help="the local cluster: etcd, control plane and kwok nodes")
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--dir", type=Path, default=Path(".cluster"), help="where the cluster keeps its state")
    cluster.add_argument("--repo", type=Path, default=Path(os.environ.get("MODELOPS_REPO") or "."),
                         help="the modelops checkout whose e2e/tools/build.sh builds the cluster's tools (env "
                              "MODELOPS_REPO; default: the current directory); not needed when MODELOPS_BIN_DIR "
                              "names tools built before")
    cluster.add_argument("--kube-proxy", action="store_true",
                         help="also run kube-proxy (iptables mode) so Service ClusterIPs route; needs root")
    cluster.add_argument("--kueue", action="store_true",
                         help="also run Kueue (built from its pinned module): ResourceFlavor gpu, ClusterQueue gpu "
                              "with the GPU nodes' nvidia.com/gpu as quota, LocalQueue training in default")
    cluster.add_argument("--kueue-gpus", type=int, default=None, help="the ClusterQueue's nvidia.com/gpu quota")
    cluster.set_defaults(handler=_cluster)

    from modelops.plugin.commands import add_commands

    add_commands(commands)  # get, watch, describe, promote, abort, rollback, logs: `kubectl modelops` itself

    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


def _run(args: argparse.Namespace) -> int:
    from modelops.runner import RunOptions, run_operator

    return run_operator(RunOptions(
        namespaces=args.namespace, liveness_port=args.liveness_port, metrics_port=args.metrics_port,
        log_format=args.log_format, verbose=args.verbose, peering=args.peering, priority=args.priority,
        peering_lifetime=args.peering_lifetime, prometheus_url=args.prometheus_url, workers=args.workers,
        activator_service=args.activator_service,
        check_workers=args.check_workers))


def _activator(args: argparse.Namespace) -> int:
    from modelops.activator.main import run_activator
    from modelops.activator.routing import Limits
    from modelops.activator.server import Ports

    return run_activator(Ports(args.http_port, args.grpc_port, args.admin_port, args.address),
                         Limits(args.max_held, args.max_held_total, args.hold_seconds), args.backend,
                         args.namespace, watch=not args.no_watch, drain_lag=args.drain_lag)


def _crds(args: argparse.Namespace) -> int:
    from modelops.api.crds import write_crds

    drifted = write_crds(args.out, check=args.check, chart=args.chart if str(args.chart) not in ("", ".") else None)
    for path in drifted:
        print(f"{path}: {'differs from the API models' if args.check else 'written'}")
    if args.check and drifted:
        print("run `modelops crds` to regenerate", file=sys.stderr)
        return 1
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from modelops.dev.cluster import ClusterError, LocalCluster, build_tools

    root = args.dir.resolve()
    try:
        if args.action == "down":
            stopped = LocalCluster.existing(root).down()
            print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
            return 0
        if args.action == "status":
            print(json.dumps(LocalCluster.existing(root).status(), indent=2))
            return 0
        tools = build_tools(args.repo.resolve(), kueue=args.kueue)
        cluster = LocalCluster(root, tools, kueue=args.kueue, kueue_gpu_quota=args.kueue_gpus)
        seconds = cluster.up(kube_proxy=args.kube_proxy)
    except ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"cluster up in {seconds:.1f}s: export KUBECONFIG={cluster.kubeconfig}")
    print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
