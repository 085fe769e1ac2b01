"""The activator process: Triton's HTTP API on one port, its gRPC API on another, and /demand, /metrics and
/healthz on an admin port, all on one asyncio loop (aiohttp and grpcio's asyncio API).

A request for a ModelService with a target where Triton says the model is ready goes straight there. Otherwise
it is held: counted as demand (the operator's long poll of /demand returns at once), and the targets are
polled (`/v2/models/<m>/versions/<v>/ready`) until one answers 200; then every held request is forwarded to
it. Over the limits, or held for the whole hold time, a request gets 503 + Retry-After (gRPC UNAVAILABLE)
with the reason."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modelops.activator.routing import Backend, Limits, Target, grpc_model, pick_backend, refusal, timed_out

log = logging.getLogger(__name__)

GRPC_SERVICE = "/inference.GRPCInferenceService/"
# Unary calls forwarded as bytes; ModelStreamInfer (bidirectional streaming) is not held (UNIMPLEMENTED).
GRPC_METHODS = {"ModelInfer", "ModelMetadata", "ModelReady", "ModelConfig", "ModelStatistics", "ServerReady",
                "ServerLive", "ServerMetadata"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
READY_POLL_SECONDS = 0.1
# How long Triton's "ready" is trusted without asking again: a pooled model can be unloaded on a server that
# stays up, and the activator must not send it a request then.
READY_TTL_SECONDS = 1.0


class Refused(Exception):
    """A request the activator answers itself (503 / UNAVAILABLE, or 404 when no ModelService is known)."""

    def __init__(self, reason: str, *, unknown: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.unknown = reason, unknown


@dataclass
class _Gate:
    """One ModelService's waiting room."""

    ready: Target | None = None
    confirmed: float = 0.0  # when Triton last said the model is ready on `ready` (monotonic)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    poller: asyncio.Task[None] | None = None


class Metrics:
    """held, forwarded, rejected per ModelService; cold-start seconds (held -> forwarded)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["namespace", "modelservice"]
        self.held = Counter("modelops_activator_held_requests", "Requests held while nothing was ready", labels,
                            registry=self.registry)
        self.holding = Gauge("modelops_activator_holding_requests", "Requests held right now", labels,
                             registry=self.registry)
        self.forwarded = Counter("modelops_activator_forwarded_requests", "Requests forwarded to a ready model",
                                 labels, registry=self.registry)
        self.rejected = Counter("modelops_activator_rejected_requests", "Requests answered 503/UNAVAILABLE",
                                [*labels, "why"], registry=self.registry)
        self.cold_start = Histogram("modelops_activator_cold_start_seconds", "From a request held to forwarded",
                                    labels, registry=self.registry,
                                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600))


class Activator:
    """The routing table (ModelServices by namespace/name), the gates, demand, and the forwarding clients."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.backends: dict[str, Backend] = {}
        self.metrics = Metrics()
        self._gates: dict[str, _Gate] = {}
        self._held_total = 0
        self._demand: dict[str, dict[str, Any]] = {}
        self._demand_seq = 0
        self._demand_changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self.draining = False
        self._channels: dict[str, grpc.aio.Channel] = {}

    # ---- the routing table (from the EndpointSlice watch, or given directly) ----

    def set_backend(self, backend: Backend) -> None:
        self.backends[backend.key] = backend
        gate = self._gates.get(backend.key)
        if gate and gate.ready and gate.ready not in backend.targets:  # the ready target is gone
            self._close(gate)

    def remove_backend(self, key: str) -> None:
        self.backends.pop(key, None)
        gate = self._gates.get(key)
        if gate:
            self._close(gate)

    def mark_unready(self, key: str) -> None:
        """A forward to the ready target failed to connect: hold again until Triton says ready again."""
        gate = self._gates.get(key)
        if gate:
            self._close(gate)

    @staticmethod
    def _close(gate: _Gate) -> None:
        gate.ready = None
        if gate.opened.is_set():
            gate.opened = asyncio.Event()

    # ---- holding ----

    async def target_for(self, host: str, model: str | None) -> tuple[Backend, Target]:
        """The ModelService and a target where its model is ready: at once, or after holding the request."""
        backend = pick_backend(self.backends, host, model)
        if backend is None:  # nothing to hold it for: it would never be answered
            raise Refused(f"no ModelService known for host {host!r} and model {model!r}", unknown=True)
        gate = self._gates.setdefault(backend.key, _Gate())
        if gate.ready is not None and time.monotonic() - gate.confirmed > READY_TTL_SECONDS:
            if await self._model_ready(backend, gate.ready):
                gate.confirmed = time.monotonic()
            else:
                self._close(gate)
        if gate.ready is not None:
            self._count(self.metrics.forwarded, backend)
            return backend, gate.ready
        why = refusal(self.limits, gate.held, self._held_total)
        if why:
            self._reject(backend, "limit")
            raise Refused(f"{why}{': ' + backend.reason if backend.reason else ''}")
        gate.held += 1
        self._held_total += 1
        self._count(self.metrics.held, backend)
        self.metrics.holding.labels(backend.namespace, backend.name).inc()
        start = time.monotonic()
        await self._signal(backend.key, gate)
        try:
            deadline = start + self.limits.hold_seconds
            target = gate.ready
            while target is None:  # again if the target went away between "ready" and this request's turn
                if gate.poller is None or gate.poller.done():
                    gate.poller = asyncio.create_task(self._poll(backend.key, gate))
                await asyncio.wait_for(gate.opened.wait(), max(0.0, deadline - time.monotonic()))
                target = gate.ready
        except TimeoutError:
            self._reject(backend, "timeout")
            raise Refused(timed_out(self.limits, self.backends.get(backend.key, backend))) from None
        finally:
            gate.held -= 1
            self._held_total -= 1
            self.metrics.holding.labels(backend.namespace, backend.name).dec()
            await self._signal(backend.key, gate)
        self.metrics.cold_start.labels(backend.namespace, backend.name).observe(time.monotonic() - start)
        self._count(self.metrics.forwarded, backend)
        return backend, target

    async def _poll(self, key: str, gate: _Gate) -> None:
        """Ask every target whether the model version is ready, until one says so or nobody waits."""
        assert self._session is not None
        while gate.held and gate.ready is None:
            backend = self.backends.get(key)
            for target in backend.targets if backend else ():
                assert backend is not None
                if await self._model_ready(backend, target):
                    log.info("%s: model ready on %s", key, target.http)
                    gate.ready, gate.confirmed = target, time.monotonic()
                    gate.opened.set()
                    return
            await asyncio.sleep(READY_POLL_SECONDS)

    async def _model_ready(self, backend: Backend, target: Target) -> bool:
        """Triton's answer, not the pod's: is this model version ready on this server?"""
        assert self._session is not None
        url = f"http://{target.http}/v2/models/{backend.model}/versions/{backend.version}/ready"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False  # not up yet, or gone

    def _count(self, counter: Counter, backend: Backend) -> None:
        counter.labels(backend.namespace, backend.name).inc()

    def _reject(self, backend: Backend, why: str) -> None:
        self.metrics.rejected.labels(backend.namespace, backend.name, why).inc()

    # ---- demand: what the operator reads ----

    async def _signal(self, key: str, gate: _Gate) -> None:
        now = time.time()
        entry = self._demand.setdefault(key, {"since": now})
        if gate.held == 0:
            entry.pop("since", None)
        elif "since" not in entry:
            entry["since"] = now
        entry.update(held=gate.held, last=now)
        self._demand_seq += 1
        async with self._demand_changed:
            self._demand_changed.notify_all()

    async def drain(self, lag: float, longest: float) -> None:
        """After SIGTERM: report not ready, keep holding and forwarding for `lag` seconds (endpoints follow a
        readiness change with a delay), then until nothing is held or `longest` seconds have passed."""
        self.draining = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(lag)
        while self._held_total and loop.time() - start < longest:
            await asyncio.sleep(0.1)
        log.info("drained: %d requests still held", self._held_total)

    async def demand(self, since: int, wait: float) -> dict[str, Any]:
        """{seq, demand: {namespace/name: {held, since, last}}}: at once when anything changed after `since`,
        else when something does or after `wait` seconds."""
        if self._demand_seq <= since and wait > 0:
            async with self._demand_changed:
                try:
                    await asyncio.wait_for(self._demand_changed.wait_for(lambda: self._demand_seq > since), wait)
                except TimeoutError:
                    pass
        return {"seq": self._demand_seq, "demand": {k: dict(v) for k, v in self._demand.items()}}

    # ---- forwarding ----

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def close(self) -> None:
        for gate in self._gates.values():
            if gate.poller:
                gate.poller.cancel()
        if self._session:
            await self._session.close()
        for channel in self._channels.values():
            await channel.close()

    async def forward_http(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.split("/")
        model = parts[3] if len(parts) > 3 and parts[2] == "models" else None
        try:
            backend, target = await self.target_for(request.host, model)
        except Refused as refused:
            return _http_refusal(refused, self.limits)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        try:
            async with self._session.request(request.method, f"http://{target.http}{request.path_qs}",
                                             data=body, headers=headers) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except aiohttp.ClientConnectionError as error:
            self.mark_unready(backend.key)
            self._reject(backend, "upstream")
            return _http_refusal(Refused(f"the model's server {target.http} went away: {error}"), self.limits)

    def channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = grpc.aio.insecure_channel(address)
        return self._channels[address]

    async def forward_grpc(self, method: str, message: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        model, _ = grpc_model(message) if method.rsplit("/", 1)[1].startswith("Model") else ("", "")
        metadata = context.invocation_metadata() or ()
        service = next((str(v) for k, v in metadata if k == "modelops-service"), "")  # namespace/name, optional
        host = ".".join(reversed(service.split("/"))) if service else ""
        try:
            backend, target = await self.target_for(host, model or None)
        except Refused as refused:
            code = grpc.StatusCode.NOT_FOUND if refused.unknown else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, refused.reason)
            raise  # abort raises; this line is for the type checker
        call = self.channel(target.grpc).unary_unary(method)
        forwarded = tuple((k, v) for k, v in metadata if not k.startswith(("grpc-", ":")) and k != "modelops-service")
        remaining = context.time_remaining()
        try:
            response: bytes = await call(message, metadata=forwarded, timeout=remaining)
            return response
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                self.mark_unready(backend.key)
            await context.abort(error.code(), error.details() or "")
            raise


def _http_refusal(refused: Refused, limits: Limits) -> web.Response:
    if refused.unknown:
        return web.json_response({"error": refused.reason}, status=404)
    return web.json_response({"error": refused.reason}, status=503, headers={"Retry-After": str(limits.retry_after)})


class _GrpcHandler(grpc.GenericRpcHandler):
    """Every GRPCInferenceService unary method, request and response as bytes (no (de)serializers)."""

    def __init__(self, activator: Activator) -> None:
        self._activator = activator

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        if not method.startswith(GRPC_SERVICE) or method[len(GRPC_SERVICE):] not in GRPC_METHODS:
            return None

        async def handle(message: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._activator.forward_grpc(method, message, context)

        return grpc.unary_unary_rpc_method_handler(handle)


def http_app(activator: Activator) -> web.Application:
    """Triton's KServe v2 HTTP API: everything under /v2 is held or forwarded as it came."""
    app = web.Application(client_max_size=256 << 20)
    app.router.add_route("*", "/v2{tail:.*}", activator.forward_http)
    return app


def admin_app(activator: Activator) -> web.Application:
    """/demand (the operator's long poll), /metrics, /healthz."""

    async def demand(request: web.Request) -> web.Response:
        since = int(request.query.get("since", "-1"))
        wait = min(float(request.query.get("wait", "0")), 60.0)
        return web.json_response(await activator.demand(since, wait))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(activator.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        if activator.draining:  # readiness fails: the pod leaves the activator Service's endpoints
            return web.Response(text="draining", status=503)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/demand", demand)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


@dataclass(frozen=True)
class Ports:
    http: int = 8000
    grpc: int = 8001
    admin: int = 9090
    address: str = "0.0.0.0"


async def serve(activator: Activator, ports: Ports, ready: Callable[[], Awaitable[None]] | None = None,
                stopping: asyncio.Event | None = None, drain_lag: float = 5.0) -> None:
    """Run the three listeners until cancelled, or until `stopping` is set and the held requests are answered
    (at most the hold time)."""
    await activator.start()
    runners = [web.AppRunner(http_app(activator), access_log=None), web.AppRunner(admin_app(activator))]
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_GrpcHandler(activator)])
    server.add_insecure_port(f"{ports.address}:{ports.grpc}")
    try:
        for runner, port in zip(runners, (ports.http, ports.admin), strict=True):
            await runner.setup()
            await web.TCPSite(runner, ports.address, port).start()
        await server.start()
        log.info("activator: http %d, grpc %d, admin %d", ports.http, ports.grpc, ports.admin)
        if ready:
            await ready()
        await (stopping or asyncio.Event()).wait()
        await activator.drain(drain_lag, activator.limits.hold_seconds)
    finally:
        await server.stop(grace=5)
        for runner in runners:
            await runner.cleanup()
        await activator.close()
