"""Starts the operator: kopf for the custom resources' watch events, peering and liveness; the engine for
caches, work queues and passes."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelops import GROUP, VERSION
from modelops.autoscale.prometheus import Prometheus
from modelops.controllers.model_check import check_pod
from modelops.controllers.modelpool import ModelPoolController
from modelops.controllers.modelservice import ModelServiceController
from modelops.controllers.trainingjob import TrainingJobController
from modelops.engine.engine import Engine, EngineOptions
from modelops.kube import LIST_PAGE, Kube

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
    peering_lifetime: int = 10
    prometheus_url: str = ""
    activator_service: str = ""
    workers: int = 16
    check_workers: int = 4


def configure_settings(settings: kopf.OperatorSettings, *, peering_lifetime: int = 10) -> None:
    """kopf settings that avoid its known production traps."""
    # Our CRDs have structural schemas: keep any kopf bookkeeping in annotations, not in status. With
    # only event handlers kopf writes none; this is the safe place should a change handler come back.
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
    # A standby takes over once the leader's record expires: keep-alives every few seconds, takeover in
    # at most this many seconds after a leader was killed (a clean exit hands over at once).
    settings.peering.lifetime = peering_lifetime
    # A restart lists every resource at once, and CPython keeps that peak for good: kopf lists in pages too
    # (it has no fallback for an expired continue token, but the API server keeps a snapshot at least its
    # 5-minute compaction interval, and these lists take seconds), and a per-object worker holds its last
    # body 0.5 s instead of 5 s, which right after a list is every object's body.
    settings.watching.chunk_size = LIST_PAGE
    settings.queueing.idle_timeout = 0.5


def own_identity() -> str:
    """This replica's name among its peers: the pod name when in a pod (POD_ID, as kopf reads it)."""
    return os.environ.get("POD_ID") or f"modelops@{socket.gethostname()}/{os.getpid()}-{uuid.uuid4().hex[:6]}"


def register_handlers(registry: kopf.OperatorRegistry, options: RunOptions) -> None:
    """kopf only feeds our resources' watch events to the engine (event handlers: no kopf writes)."""

    @kopf.on.event(GROUP, VERSION, "trainingjobs", registry=registry)
    async def trainingjob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.engine.observe_resource("TrainingJob", event.get("type"), event["object"])

    @kopf.on.event(GROUP, VERSION, "modelservices", registry=registry)
    async def modelservice_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.engine.observe_resource("ModelService", event.get("type"), event["object"])

    @kopf.on.event(GROUP, VERSION, "modelpools", registry=registry)
    async def modelpool_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        memo.engine.observe_resource("ModelPool", event.get("type"), event["object"])

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # the same kubeconfig / in-cluster account as our client

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure_settings(settings, peering_lifetime=options.peering_lifetime)
        memo.engine.start()

    @kopf.on.cleanup(registry=registry)
    def cleanup(memo: kopf.Memo, **_: Any) -> None:
        memo.engine.stop()


def run_operator(options: RunOptions) -> int:
    kopf.configure(verbose=options.verbose,
                   log_format=kopf.LogFormat.JSON if options.log_format == "json" else kopf.LogFormat.FULL)
    registry = kopf.OperatorRegistry()
    register_handlers(registry, options)
    if options.metrics_port:
        start_http_server(options.metrics_port)
    identity = own_identity()
    engine = Engine(
        Kube.from_environment(), Prometheus(options.prometheus_url),
        [TrainingJobController(), ModelServiceController(), ModelPoolController()],
        EngineOptions(namespaces=options.namespaces, workers=options.workers, check_workers=options.check_workers,
                      peering=options.peering, identity=identity, priority=options.priority,
                      activator=options.activator_service),
        checker=check_pod)
    liveness = f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
    kopf.run(
        registry=registry, clusterwide=not options.namespaces, namespaces=options.namespaces,
        standalone=options.peering is None, peering_name=options.peering, priority=options.priority,
        # identity: kopf types it as its own NewType of str, which it does not export
        identity=identity, liveness_endpoint=liveness, memo=kopf.Memo(engine=engine),  # type: ignore[arg-type]
    )
    return 0
