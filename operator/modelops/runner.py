"""Starts the kopf operator with production settings, liveness and metrics endpoints."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelops import GROUP
from modelops.autoscale.prometheus import Prometheus
from modelops.kube import Kube

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    namespaces: list[str] = field(default_factory=list)
    liveness_port: int = 8080
    metrics_port: int = 9090
    log_format: str = "plain"
    verbose: bool = False
    peering: str | None = None
    priority: int = 0
    prometheus_url: str = ""


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf settings that avoid its known production traps."""
    # Our CRDs have structural schemas: keep kopf's bookkeeping in annotations, not in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Post our own Events for real transitions, not one per log line (kopf #1212).
    settings.posting.level = logging.ERROR
    # Watches can stall silently without explicit timeouts (kopf #585, #955).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Handlers are synchronous (the kubernetes client) and run in this pool.
    settings.execution.max_workers = 16


def run_operator(options: RunOptions) -> int:
    # Registers the handlers on kopf's default registry.
    import modelops.controllers.modelservice  # noqa: F401
    import modelops.controllers.trainingjob  # noqa: F401

    kopf.configure(verbose=options.verbose,
                   log_format=kopf.LogFormat.JSON if options.log_format == "json" else kopf.LogFormat.FULL)

    @kopf.on.startup()
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)

    if options.metrics_port:
        start_http_server(options.metrics_port)
    liveness = f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
    memo = kopf.Memo(kube=Kube.from_environment(), prometheus=Prometheus(options.prometheus_url))
    kopf.run(
        clusterwide=not options.namespaces, namespaces=options.namespaces,
        standalone=options.peering is None, peering_name=options.peering, priority=options.priority,
        liveness_endpoint=liveness, memo=memo,
    )
    return 0
