"""`modelops activator`: the routing table from the API server (or --backend, for local use), then serve; on
SIGTERM, drain (not ready, answer what is held) and exit."""

from __future__ import annotations

import asyncio
import logging
import signal

from modelops.activator.routing import Backend, Limits, Target
from modelops.activator.server import Activator, Ports, serve


def parse_backend(text: str) -> Backend:
    """`namespace/name=model:version@host:http:grpc[,host:http:grpc...]` (a fixed routing entry)."""
    key, _, rest = text.partition("=")
    namespace, _, name = key.partition("/")
    model_version, _, targets = rest.partition("@")
    model, _, version = model_version.rpartition(":")
    found = []
    for target in filter(None, targets.split(",")):
        host, http, grpc = target.rsplit(":", 2)
        found.append(Target(host, int(http), int(grpc)))
    return Backend(namespace, name, model, int(version), tuple(found))


def run_activator(ports: Ports, limits: Limits, backends: list[str], namespaces: list[str], watch: bool,
                  drain_lag: float = 5.0) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        activator = Activator(limits)
        for text in backends:
            activator.set_backend(parse_backend(text))
        if watch:
            from modelops.activator.watch import watch_targets
            from modelops.kube import Kube

            kube = Kube.from_environment()
            scopes: list[str | None] = [*namespaces] or [None]
            for namespace in scopes:  # one watch per namespace: a Role in each is all it may read
                watch_targets(kube, activator, asyncio.get_running_loop(), namespace)
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):  # drain: answer what is held, then exit
            asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
        await serve(activator, ports, stopping=stopping, drain_lag=drain_lag)

    asyncio.run(main())
    return 0
