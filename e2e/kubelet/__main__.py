"""`python -m e2e.kubelet --kubeconfig K --work-dir D [-n NS ...]`: run the kubelet stand-in until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from .kubelet import ProcessKubelet


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m e2e.kubelet", description=__doc__)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--work-dir", required=True, help="pod logs, volumes, hosts files")
    parser.add_argument("-n", "--namespace", action="append", default=[], help="only these namespaces (repeatable)")
    parser.add_argument("--gateway-ip", default="10.0.0.1", help="the host's address on the pod network")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with ProcessKubelet(args.kubeconfig, args.work_dir, namespaces=tuple(args.namespace), gateway_ip=args.gateway_ip):
        done.wait()


if __name__ == "__main__":
    main()
