"""Pure placement for a ModelPool pass: from one observation (the server pods, each server's Triton report,
every pooled ModelService's demand) to one plan: server pods to create or delete, at most one model load or
unload per server, the status and the Events.

The rules, in the order a pass applies them:
- One model name, one ModelService: the oldest ModelService (then the first by name) asking for a model name
  owns it in this pool; any other one asking for the same name is refused (ModelNameTaken), because a request
  for /v2/models/<name> on a server must reach the model its Service means.
- A server holds at most capacity x (1 + overcommit) of copies (measured sizes; the declared size, then
  DEFAULT_ESTIMATE, until measured) and never two versions of one model (a request without a version then
  always reaches the version its Service means).
- At most one load or unload per server per pass: Triton's load/unload and the memory measured around it
  are serialized per server.
- First what no one asks for goes (versions no longer served, copies that failed to load), then surplus
  copies (least recently used first), then missing copies are placed: those below their model's minimum
  first, on the server they fit best (the fullest that still has room). Only a copy below its minimum may
  evict, and only copies beyond their own model's minimum, least recently used first (Triton's last
  inference time): nothing serving its minimum is touched to place something new.
- Copies follow load between min and max with the replica autoscaler's rules (autoscale/decision.py) on
  Triton's per-model statistics (queue time per request, or requests per second per copy).
- A server whose unloads stop giving memory back (triton#3320: an unload returned under LEAK_FRACTION of the
  copy's measured size), or built from an older pool spec, is drained: it takes no new copy, and is deleted
  once every model it holds has its minimum of copies elsewhere; a new server replaces it (retiring servers
  do not count against maxServers while they drain).
- The server count follows demand within min/max: a server is added when missing copies fit nowhere, an empty
  server beyond minServers is removed.
- A copy that cannot be placed (larger than a server, or no room, no evictable copy and maxServers reached)
  is listed in status.unplaced with why, and its ModelService gets a Warning Event once.

What must survive a restart (measured sizes, counts, leaks, failed loads) is the servers' ledger annotation,
written by the writer after each load and unload (ledger_after); this module only reads it."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from modelops.api.modelpool import ModelPoolSpec
from modelops.api.modelservice import Autoscaling
from modelops.autoscale.decision import ScaleMemory, decide
from modelops.clock import rfc3339
from modelops.quantities import quantity
from modelops.resources import modelpool as build
from modelops.resources.conditions import Cond, Event, merge_conditions
from modelops.resources.plan import Delete, ModelAction, ModelLoad, ModelUnload, Notice, Plan
from modelops.triton.pool import ModelToLoad, ResidentModel, ServerReport, load_config

log = logging.getLogger(__name__)
MiB = 1 << 20
DEFAULT_ESTIMATE = 256 * MiB
"""The size assumed for a model neither declared (resources.memory) nor measured yet."""
LEAK_FRACTION = 0.1
LEAK_MIN_BYTES = 16 * MiB
"""Only unloads of copies measured at least this large are judged (smaller deltas are the gauge's noise)."""
UNROUTE_GRACE_SECONDS = 5.0
"""A ready copy a Service may route to is unloaded only after its ModelService's EndpointSlice stopped listing
its server (the copy is marked leaving in the status until then) and this long after (kube-proxy's rules
follow the slice with a delay): moving, evicting or dropping a copy never fails a request sent to it."""
BUSY_SECONDS = 1.0
STEADY_SECONDS = 10.0
"""Triton's state is not watched: a pool with work left looks again soon, a settled one every 10 s (reports,
last-inference times, load)."""


def key_of(name: str, version: int) -> str:
    return f"{name}:{version}"


# ---- the ledger on each server pod ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ledger:
    """What one server has measured and done, on its pod (ANNOTATION_LEDGER)."""

    sizes: dict[str, int] = field(default_factory=dict)
    """Measured bytes per "name:version"."""
    loads: int = 0
    unloads: int = 0
    evictions: int = 0
    leaks: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Loads Triton refused here, per "name:version": not tried on this server again."""

    @classmethod
    def parse(cls, text: str | None) -> Ledger:
        try:
            data = json.loads(text or "{}")
            return cls(sizes={str(k): int(v) for k, v in (data.get("sizes") or {}).items()},
                       loads=int(data.get("loads", 0)), unloads=int(data.get("unloads", 0)),
                       evictions=int(data.get("evictions", 0)), leaks=int(data.get("leaks", 0)),
                       failed={str(k): str(v) for k, v in (data.get("failed") or {}).items()})
        except (ValueError, TypeError, AttributeError):
            return cls()  # a hand-edited ledger is started over, never trusted

    def wire(self) -> str:
        data = {"sizes": self.sizes, "loads": self.loads, "unloads": self.unloads, "evictions": self.evictions,
                "leaks": self.leaks, "failed": self.failed}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def ledger_after(ledger: Ledger, action: ModelAction, measured: int | None, error: str | None = None) -> Ledger:
    """The ledger once `action` ran: `measured` is what the load took or the unload gave back (None: not
    measured), `error` what Triton said when it failed."""
    if isinstance(action, ModelLoad):
        key = key_of(action.model.name, action.model.version)
        if error is not None:
            return replace(ledger, failed={**ledger.failed, key: error[:200]})
        sizes = {**ledger.sizes, key: measured} if measured is not None and measured > 0 else ledger.sizes
        return replace(ledger, sizes=sizes, loads=ledger.loads + 1)
    if error is not None:
        return ledger
    leaked = (action.expected_bytes is not None and action.expected_bytes >= LEAK_MIN_BYTES and measured is not None
              and measured < action.expected_bytes * LEAK_FRACTION)
    return replace(ledger, unloads=ledger.unloads + 1, evictions=ledger.evictions + int(action.eviction),
                   leaks=ledger.leaks + int(leaked))


# ---- the observation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """One server pod as observed, with its Triton report (None when it was not asked: not running)."""

    name: str
    index: int
    ready: bool
    """The pod is Ready and Triton answered its report."""
    deleting: bool = False
    failed: bool = False
    """The pod ended (Failed/Succeeded: evicted, OOM-killed for good): it is deleted and built again."""
    current: bool = True
    """Built from the pool's current spec (template hash)."""
    ledger: Ledger = field(default_factory=Ledger)
    report: ServerReport | None = None

    def resident(self) -> tuple[ResidentModel, ...]:
        return self.report.models if self.report and self.report.reachable else ()


@dataclass(frozen=True)
class Demand:
    """What one pooled ModelService asks of its pool."""

    service: str
    created: str
    model: str
    versions: tuple[int, ...]
    """Stable first, then the canary (each gets its own copies, never on the same server)."""
    min_copies: int
    max_copies: int
    declared_bytes: int | None = None
    autoscaling: Autoscaling | None = None
    triton: dict[str, Any] = field(default_factory=dict)
    """The ModelService's spec.triton (wire form): what load_config makes the model's config from."""
    signature: dict[str, Any] = field(default_factory=dict)
    """The inputs and outputs of the version its spec resolves to (wire form), used for every version it
    serves: a pool reads no version folder, and the versions of one model keep one signature."""
    involved: dict[str, Any] = field(default_factory=dict)
    """The ModelService object (for Events on it)."""
    routed: tuple[str, ...] = ()
    """The servers its EndpointSlice lists now..."""
    routed_version: int | None = None
    """...for this version (the one its Service serves)."""
    canary_version: int | None = None
    canary_copies: int = 0
    """The copies the canary's rollout step asks (its share of the Service's endpoints: status.canary.replicas)."""
    held: int = 0
    """Requests the activators hold for it now (autoscaling.minReplicas 0: demand brings a copy at once)."""


@dataclass(frozen=True)
class LoadSample:
    time: datetime
    inferences: int
    queue_ns: int


@dataclass(frozen=True)
class CopyMemory:
    sample: LoadSample | None = None
    scale: ScaleMemory = field(default_factory=ScaleMemory)
    desired: int | None = None
    active_at: datetime | None = None
    """At minReplicas 0: when a copy was last asked for (demand, or the first pass that saw it): the idle
    period counts from here or Triton's last inference, whichever is later."""


@dataclass(frozen=True)
class PoolMemory:
    """Per model version: the last counters and the scaling windows (held by the engine between passes)."""

    copies: dict[str, CopyMemory] = field(default_factory=dict)
    unrouted_since: dict[str, datetime] = field(default_factory=dict)
    """"<server>|<name:version>": since when a copy to unload has been out of every Service's endpoints."""


@dataclass(frozen=True)
class PoolObservation:
    meta: build.PoolMeta
    spec: ModelPoolSpec
    previous: dict[str, Any]
    now: datetime
    servers: list[Server]
    demands: list[Demand]
    memory: PoolMemory = field(default_factory=PoolMemory)
    pod_monitor: bool = False
    """The cluster serves the Prometheus Operator's PodMonitor: one scrapes the pool's servers."""


# ---- the planner ------------------------------------------------------------------------------------------


@dataclass
class _Placement:
    """The pass's working picture: what each server holds once this pass's actions are done."""

    limit: int
    holds: dict[str, dict[str, int]]  # server -> {name:version -> bytes}
    now: datetime
    cpu_limit: float | None = None
    """A server's CPU limit in cores (load_config sizes a copy's instances and threads by it)."""
    routed: dict[str, set[str]] = field(default_factory=dict)
    """name:version -> servers a Service lists for it."""
    guarded: set[str] = field(default_factory=set)
    """Model names a ModelService serves (their ready copies may be in a Service's endpoints)."""
    unrouted_since: dict[str, datetime] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    actions: list[ModelAction] = field(default_factory=list)
    leaving: set[tuple[str, str]] = field(default_factory=set)
    """(server, name:version) copies to unload that wait for their Service to stop routing to them."""
    still_unrouted: dict[str, datetime] = field(default_factory=dict)

    def used(self, server: str) -> int:
        return sum(self.holds[server].values())

    def holds_model(self, server: str, name: str) -> bool:
        return any(k.rpartition(":")[0] == name for k in self.holds[server])


@dataclass(frozen=True)
class _Wanted:
    demand: Demand
    version: int
    size: int
    measured: bool
    target: int

    @property
    def key(self) -> str:
        return key_of(self.demand.model, self.version)


@dataclass(frozen=True)
class Unplaced:
    service: str
    model: str
    version: int | None
    reason: str
    message: str

    def wire(self) -> dict[str, Any]:
        out = {"modelService": self.service, "model": self.model, "reason": self.reason, "message": self.message}
        return out if self.version is None else {**out, "version": self.version}


def capacity_limit(spec: ModelPoolSpec) -> int:
    return int(float(quantity(spec.capacity) or 0) * (1 + spec.overcommit))


def plan_pool(obs: PoolObservation) -> Plan:
    spec, meta = obs.spec, obs.meta
    limit = capacity_limit(spec)
    live = [s for s in obs.servers if not s.deleting and not s.failed]
    active = [s for s in live if s.current and s.ledger.leaks == 0]
    retiring = [s for s in live if s not in active]
    ready_active = [s for s in active if s.ready]
    plan = Plan()

    owners, unplaced = _claim_names(obs)
    measured = _measured_sizes(obs.servers)
    copies_memory: dict[str, CopyMemory] = {}
    wanted: dict[str, _Wanted] = {}
    for demand in owners:
        for version in demand.versions:
            key = key_of(demand.model, version)
            size = measured.get(key) or demand.declared_bytes or DEFAULT_ESTIMATE
            ready_copies = [m for s in ready_active for m in s.resident() if m.ready and key_of(m.name, m.version) == key]
            target, remembered = _target(demand, ready_copies, obs.memory.copies.get(key, CopyMemory()), obs.now)
            if version == demand.canary_version:  # the endpoints its step's weight asks (within max)
                target = max(target, min(demand.canary_copies, demand.max_copies))
            copies_memory[key] = remembered
            wanted[key] = _Wanted(demand, version, size, key in measured, target)

    cores = quantity(spec.resources.cpu) if spec.resources.cpu else None
    placement = _Placement(limit, {s.name: {} for s in live}, obs.now, float(cores) if cores else None,
                           guarded={d.model for d in owners}, unrouted_since=obs.memory.unrouted_since)
    for demand in owners:
        if demand.routed_version is not None:
            placement.routed[key_of(demand.model, demand.routed_version)] = set(demand.routed)
    for server in live:
        for model in server.resident():
            key = key_of(model.name, model.version)
            placement.holds[server.name][key] = model.bytes or server.ledger.sizes.get(key) or \
                (wanted[key].size if key in wanted else DEFAULT_ESTIMATE)

    _unload_unwanted(live, wanted, placement)
    have = _copies(active, placement)
    _unload_surplus(active, wanted, have, placement)
    waiting, needs_server = _place_missing(ready_active, wanted, have, placement, obs.servers, unplaced)

    # ---- servers: drain, replace, add, remove --------------------------------------------------------------
    ready_elsewhere = _copies(ready_active, placement, ready_only=True)
    deletes: list[str] = [s.name for s in obs.servers if s.failed and not s.deleting]
    for server in retiring:
        # its copies leave their Services once their models have their minimum ready elsewhere; it goes when
        # no Service can route to it any more
        held = [k for k in placement.holds[server.name] if k in wanted]
        if server.name not in placement.busy and all(
                len(ready_elsewhere.get(k, [])) >= max(1, wanted[k].demand.min_copies) for k in held) and \
                all([_unrouted(placement, server.name, k) for k in held]):
            deletes.append(server.name)
    pending = [s for s in active if not s.ready]
    new_servers = max(0, _bins(needs_server, limit) - len(pending)) if needs_server else 0
    floor = spec.min_servers
    new_servers = max(0, min(max(new_servers, floor - len(active)), spec.max_servers - len(active)))
    if needs_server and not new_servers and not pending:
        # No server to come: copies below their minimum are unplaced; copies load asked for beyond it wait.
        for size, item, below_min in needs_server:
            if below_min:
                unplaced.append(Unplaced(
                    item.demand.service, item.demand.model, item.version, "NoRoom",
                    f"no server of pool {meta.name} has room for {item.key} ({_size(size)}) and the pool has "
                    f"its maxServers ({spec.max_servers}); the copies that could make room are at their models' "
                    f"minimum"))
        needs_server = []
    if not needs_server and not waiting and len(active) > floor:
        # beyond the floor, servers holding nothing go: those not serving yet first, then the newest
        idle = [s for s in active if not placement.holds[s.name] and s.name not in placement.busy]
        deletes += [s.name for s in sorted(idle, key=lambda s: (s.ready, -s.index))[:len(active) - floor]]

    taken = {s.index for s in obs.servers}
    keep = [s for s in active if s.name not in deletes]
    plan.apply = [build.server_pod(meta, spec, s.index) for s in keep]
    index = 0
    for _ in range(new_servers):
        while index in taken:
            index += 1
        taken.add(index)
        plan.apply.append(build.server_pod(meta, spec, index))
    if obs.pod_monitor:
        plan.apply.append(build.pod_monitor(meta))
    plan.create_only = frozenset({"Pod"})
    plan.delete = [Delete("v1", "Pod", name) for name in dict.fromkeys(deletes)]
    plan.model_actions = placement.actions
    plan.memory = PoolMemory(copies_memory, placement.still_unrouted)

    plan.status, plan.events, plan.notices = _status(obs, limit, live, placement, wanted, unplaced, retiring,
                                                     new_servers, waiting or bool(needs_server))
    # servers still starting wake the pool with their pod's events (and the steady poll covers a Triton that
    # does not answer yet): only this pass's own work asks to look again soon
    settled = not placement.actions and not plan.delete and not new_servers and not waiting and not placement.leaving
    plan.requeue_after = STEADY_SECONDS if settled else BUSY_SECONDS
    return plan


def _claim_names(obs: PoolObservation) -> tuple[list[Demand], list[Unplaced]]:
    """One ModelService per model name: the oldest (then by name) keeps it, the others are refused."""
    owners: dict[str, Demand] = {}
    refused: list[Unplaced] = []
    for demand in sorted(obs.demands, key=lambda d: (d.created, d.service)):
        owner = owners.setdefault(demand.model, demand)
        if owner is not demand:
            refused.append(Unplaced(
                demand.service, demand.model, None, "ModelNameTaken",
                f"model {demand.model} is already served in pool {obs.meta.name} by ModelService {owner.service}: "
                f"a request for /v2/models/{demand.model} must reach one model; rename the model or use another pool"))
    return [d for d in owners.values() if d.versions], refused


def _measured_sizes(servers: list[Server]) -> dict[str, int]:
    """The largest measured size of each model version, from every server's ledger and report."""
    sizes: dict[str, int] = {}
    for server in servers:
        for key, value in server.ledger.sizes.items():
            sizes[key] = max(sizes.get(key, 0), value)
        for model in server.resident():
            if model.bytes:
                key = key_of(model.name, model.version)
                sizes[key] = max(sizes.get(key, 0), model.bytes)
    return sizes


def _target(demand: Demand, ready_copies: list[ResidentModel], memory: CopyMemory,
            now: datetime) -> tuple[int, CopyMemory]:
    """How many copies this version should have: its min/max, moved by load with the autoscaler's rules."""
    scaling = demand.autoscaling
    if scaling is None:
        return demand.min_copies, memory
    inferences = sum(m.inference_count for m in ready_copies)
    queue_ns = sum(m.queue_ns for m in ready_copies)
    sample = LoadSample(now, inferences, queue_ns)
    current = memory.desired if memory.desired is not None else max(len(ready_copies), demand.min_copies)
    value: float | None = None
    reason = "no earlier sample"
    previous = memory.sample
    if previous is not None and now > previous.time:
        served, queued = inferences - previous.inferences, queue_ns - previous.queue_ns
        if served < 0 or queued < 0:
            reason = "counters restarted (a copy moved)"
        elif scaling.metric == "queueTimeMicroseconds":
            value = queued / served / 1000 if served else 0.0
        elif scaling.metric == "inferenceRatePerReplica":
            value = served / (now - previous.time).total_seconds() / max(len(ready_copies), 1)
        else:
            reason = f"{scaling.metric} is not measured per model in a pool"
    if scaling.min_replicas == 0:
        return _zero_target(demand, ready_copies, memory, now, sample, current, value, reason)
    decision = decide(current, value, scaling, memory.scale, now, reason)
    desired = min(max(decision.desired, demand.min_copies), demand.max_copies)
    return desired, CopyMemory(sample, decision.memory, desired)


def _zero_target(demand: Demand, ready_copies: list[ResidentModel], memory: CopyMemory, now: datetime,
                 sample: LoadSample, current: int, value: float | None, reason: str) -> tuple[int, CopyMemory]:
    """minReplicas 0: the autoscaler with a floor of one copy; no copy until demand, and none again after
    scaleToZeroAfterSeconds without an inference (Triton's per-model last_inference) or a held request."""
    scaling = demand.autoscaling
    assert scaling is not None
    active = memory.active_at or now
    if demand.held:
        active = now
    if not demand.held and (memory.desired == 0 or (memory.desired is None and not ready_copies)):
        return 0, CopyMemory(sample, memory.scale, 0, None)  # at zero (or going): no copy until asked
    floored = scaling.model_copy(update={"min_replicas": 1})
    decision = decide(max(current, 1), value, floored, memory.scale, now, reason)
    desired = min(max(decision.desired, 1), demand.max_copies)
    last = max((m.last_inference_ms for m in ready_copies), default=0)
    if last:
        active = max(active, datetime.fromtimestamp(last / 1000, timezone.utc))
    if ready_copies and not demand.held and (now - active).total_seconds() >= scaling.scale_to_zero_after_seconds:
        return 0, CopyMemory(sample, decision.memory, 0, None)
    return desired, CopyMemory(sample, decision.memory, desired, active)


def _copies(servers: list[Server], placement: _Placement, *, ready_only: bool = False) -> dict[str, list[str]]:
    """Servers holding each model version once this pass's actions are done (with ready_only, only copies
    the report says are ready)."""
    ready = {(s.name, key_of(m.name, m.version)) for s in servers for m in s.resident() if m.ready}
    where: dict[str, list[str]] = {}
    for server in servers:
        for key in placement.holds[server.name]:
            if not ready_only or (server.name, key) in ready:
                where.setdefault(key, []).append(server.name)
    return where


def _last_inference(servers: list[Server]) -> dict[tuple[str, str], int]:
    return {(s.name, key_of(m.name, m.version)): m.last_inference_ms for s in servers for m in s.resident()}


def _unload(placement: _Placement, server: str, key: str, *, eviction: bool, measured: dict[str, int],
            ready: bool = True) -> bool:
    """Unload now (True), or mark the copy leaving while a Service may still route to it (False)."""
    name, _, version = key.rpartition(":")
    if ready and not _unrouted(placement, server, key):
        return False
    placement.actions.append(ModelUnload(server, name, int(version), measured.get(key), eviction))
    placement.holds[server].pop(key, None)
    placement.busy.add(server)
    return True


def _unrouted(placement: _Placement, server: str, key: str) -> bool:
    """Whether no Service can send a request to this copy any more: out of its ModelService's EndpointSlice for
    UNROUTE_GRACE_SECONDS. Until then the copy is marked leaving (its ModelService drops it from the slice)."""
    if key.rpartition(":")[0] not in placement.guarded:
        return True
    if server not in placement.routed.get(key, set()):
        since = placement.unrouted_since.get(f"{server}|{key}", placement.now)
        if (placement.now - since).total_seconds() >= UNROUTE_GRACE_SECONDS:
            return True
        placement.still_unrouted[f"{server}|{key}"] = since
    placement.leaving.add((server, key))
    return False


def _unload_unwanted(live: list[Server], wanted: dict[str, _Wanted], placement: _Placement) -> None:
    """Versions no one serves any more, and copies Triton holds but not ready (a failed load), go first."""
    for server in live:
        for model in sorted(server.resident(), key=lambda m: (m.ready, m.name)):
            key = key_of(model.name, model.version)
            if server.name in placement.busy:
                break
            if key not in wanted or not model.ready:
                _unload(placement, server.name, key, eviction=False, measured=server.ledger.sizes, ready=model.ready)


def _unload_surplus(active: list[Server], wanted: dict[str, _Wanted], have: dict[str, list[str]],
                    placement: _Placement) -> None:
    last = _last_inference(active)
    ledgers = {s.name: s.ledger.sizes for s in active}
    for key, item in wanted.items():
        holders = [s for s in have.get(key, []) if s not in placement.busy and key in placement.holds[s]]
        surplus = len(have.get(key, [])) - item.target
        for server in sorted(holders, key=lambda s: last.get((s, key), 0))[:max(surplus, 0)]:
            if _unload(placement, server, key, eviction=False, measured=ledgers[server]):
                have[key].remove(server)


def _place_missing(ready: list[Server], wanted: dict[str, _Wanted], have: dict[str, list[str]],
                   placement: _Placement, servers: list[Server],
                   unplaced: list[Unplaced]) -> tuple[bool, list[tuple[int, _Wanted, bool]]]:
    """Load missing copies (below-minimum first, the largest first); evict for those below their minimum.
    Returns whether some copy waits (for a busy server, or for room being made), and the copies that fit
    on no server (size, what, below its minimum): a new server's work."""
    failed = {s.name: s.ledger.failed for s in servers}
    last = _last_inference(ready)
    waiting = False
    needs_server: list[tuple[int, _Wanted, bool]] = []
    order = sorted(wanted.values(), key=lambda w: (len(have.get(w.key, [])) >= w.demand.min_copies,
                                                   len(have.get(w.key, [])), -w.size, w.key))
    for item in order:
        if not item.demand.signature:
            continue  # its TrainingJob is gone or training again: the copies it has stay, none is loaded
        if item.size > placement.limit:
            unplaced.append(Unplaced(item.demand.service, item.demand.model, item.version, "TooLarge",
                                     f"{item.key} needs {_size(item.size)}{'' if item.measured else ' (declared)'}; "
                                     f"a server of this pool holds at most {_size(placement.limit)}"))
            continue
        refused = [s for s in ready if item.key in failed[s.name]]
        if ready and len(refused) == len(ready) and not have.get(item.key):
            unplaced.append(Unplaced(item.demand.service, item.demand.model, item.version, "LoadFailed",
                                     f"{item.key} failed to load on every server: {failed[refused[0].name][item.key]}"))
            continue
        while len(have.get(item.key, [])) < item.target:
            below_min = len(have.get(item.key, [])) < item.demand.min_copies
            fits = [s for s in ready if item.key not in failed[s.name] and
                    not placement.holds_model(s.name, item.demand.model)]
            free = [s for s in fits if placement.used(s.name) + item.size <= placement.limit]
            idle = [s for s in free if s.name not in placement.busy]
            if idle:
                best = min(idle, key=lambda s: (placement.limit - placement.used(s.name) - item.size, s.index))
                placement.actions.append(ModelLoad(best.name, _to_load(item, placement.cpu_limit)))
                placement.holds[best.name][item.key] = item.size
                placement.busy.add(best.name)
                have.setdefault(item.key, []).append(best.name)
                continue
            if free or (below_min and _evict_for(item, fits, wanted, have, placement, last)):
                waiting = True  # a server with room is busy this pass, or room is being made
            else:
                needs_server.append((item.size, item, below_min))
            break
    return waiting, needs_server


def _evict_for(item: _Wanted, fits: list[Server], wanted: dict[str, _Wanted], have: dict[str, list[str]],
               placement: _Placement, last: dict[tuple[str, str], int]) -> str | None:
    """Unload the least recently used copy beyond its model's minimum on the server where that makes room
    with the fewest evictions; the server evicted on, or None when no server can make room."""
    best: tuple[int, int, Server, list[str]] | None = None
    for server in fits:
        if server.name in placement.busy:
            continue
        spare = {k: len(have.get(k, [])) - wanted[k].demand.min_copies for k in placement.holds[server.name]
                 if k in wanted}
        victims = sorted((k for k, n in spare.items() if n > 0), key=lambda k: last.get((server.name, k), 0))
        room, chosen = placement.limit - placement.used(server.name), []
        for key in victims:
            if room >= item.size:
                break
            chosen.append(key)
            room += placement.holds[server.name][key]
        if room >= item.size and chosen:
            rank = (len(chosen), last.get((server.name, chosen[0]), 0), server, chosen)
            if best is None or rank[:2] < best[:2]:
                best = rank
    if best is None:
        return None
    server, victim = best[2], best[3][0]
    if _unload(placement, server.name, victim, eviction=True, measured=server.ledger.sizes):
        have[victim].remove(server.name)
    return server.name


def _to_load(item: _Wanted, cpu_limit: float | None) -> ModelToLoad:
    triton = item.demand.triton
    return ModelToLoad(item.demand.model, item.version, str(triton.get("backend", "pytorch")),
                       load_config(item.demand.model, item.version, triton, cpu_limit,
                                   signature=item.demand.signature))


def _bins(items: list[tuple[int, _Wanted, bool]], limit: int) -> int:
    """Servers the copies that fit nowhere need (first-fit decreasing; one copy of a model per server)."""
    bins: list[tuple[int, set[str]]] = []
    for size, item, _ in sorted(items, key=lambda i: -i[0]):
        for i, (used, models) in enumerate(bins):
            if used + size <= limit and item.demand.model not in models:
                bins[i] = (used + size, models | {item.demand.model})
                break
        else:
            bins.append((size, {item.demand.model}))
    return len(bins)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _size(value: int) -> str:
    for unit, scale in (("Gi", 1 << 30), ("Mi", MiB), ("Ki", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def _status(obs: PoolObservation, limit: int, live: list[Server], placement: _Placement,
            wanted: dict[str, _Wanted], unplaced: list[Unplaced], retiring: list[Server], new_servers: int,
            working: bool) -> tuple[dict[str, Any], list[Event], list[Notice]]:
    previous, meta = obs.previous, obs.meta
    ready_servers = [s for s in live if s.ready and s not in retiring]
    desired = len(live) - len(retiring) + new_servers
    # A copy unloaded this pass is still in the report this status is built from, and the status is written
    # after the unload ran: it stays leaving, or its ModelService would route to it again until the next pass.
    unloading = {(a.server, key_of(a.name, a.version)) for a in placement.actions if isinstance(a, ModelUnload)}
    servers = []
    for server in sorted(live, key=lambda s: s.index):
        models = []
        for model in server.resident():
            key = key_of(model.name, model.version)
            size = model.bytes or server.ledger.sizes.get(key)
            entry: dict[str, Any] = {"name": model.name, "version": model.version, "ready": model.ready,
                                     "measured": size is not None}
            if (server.name, key) in placement.leaving or (server.name, key) in unloading:
                entry["leaving"] = True
            entry["bytes"] = size or (wanted[key].size if key in wanted else None)
            if entry["bytes"] is None:
                entry.pop("bytes")
            if model.last_inference_ms:
                entry["lastInference"] = rfc3339(datetime.fromtimestamp(model.last_inference_ms / 1000, timezone.utc))
            models.append(entry)
        used = sum(e.get("bytes", 0) for e in models)
        servers.append({"name": server.name, "ready": server.ready, "draining": server in retiring,
                        "bytesUsed": used, "capacityBytes": limit, "models": models})
    resident = {key_of(m.name, m.version) for s in live for m in s.resident() if m.ready}
    copies = sum(1 for s in live for m in s.resident() if m.ready)
    totals = {"loads": sum(s.ledger.loads for s in obs.servers), "unloads": sum(s.ledger.unloads for s in obs.servers),
              "evictions": sum(s.ledger.evictions for s in obs.servers)}
    used_all = sum(s["bytesUsed"] for s in servers)
    unplaced_wire = [u.wire() for u in unplaced]
    if unplaced:
        phase = "Degraded"
        first = unplaced[0]
        detail = f"{len(unplaced)} unplaced: {first.model} of ModelService {first.service}: {first.message}"
        conds = [Cond("Ready", False, first.reason, detail), Cond("Reconciling", False, first.reason, detail),
                 Cond("Stalled", True, first.reason, detail)]
    elif working or len(ready_servers) < desired or placement.actions or retiring:
        phase = "Progressing"
        detail = f"{len(ready_servers)}/{desired} servers ready, {len(placement.actions)} loads or unloads this pass"
        conds = [Cond("Ready", False, "Placing", detail), Cond("Reconciling", True, "Placing", detail),
                 Cond("Stalled", False, "Placing", "")]
    else:
        phase = "Ready"
        detail = (f"{_count(len(ready_servers), 'server')}, {_count(copies, 'copy', 'copies')} of "
                  f"{_count(len(resident), 'model version')} placed")
        conds = [Cond("Ready", True, "Placed", detail), Cond("Reconciling", False, "Placed", ""),
                 Cond("Stalled", False, "Placed", "")]
    status = {
        "observedGeneration": meta.generation, "phase": phase,
        "conditions": merge_conditions(previous.get("conditions", []), conds, now=rfc3339(obs.now),
                                       generation=meta.generation),
        "replicas": len(live) - len(retiring), "readyServers": len(ready_servers),
        "serversReady": f"{len(ready_servers)}/{desired}", "selector": meta.selector_string,
        "models": len(resident), "copies": copies, "memory": f"{_size(used_all)}/{_size(limit * max(desired, 0))}",
        "servers": servers, "totals": totals, "unplaced": unplaced_wire,
    }
    said = {(u.get("modelService"), u.get("reason"), u.get("message")) for u in previous.get("unplaced", [])}
    events, notices = [], []
    involved = {d.service: d.involved for d in obs.demands}
    for item in unplaced:
        if (item.service, item.reason, item.message) in said:
            continue
        events.append(Event("Warning", item.reason, f"ModelService {item.service}: {item.message}"))
        if involved.get(item.service):
            notices.append(Notice(involved[item.service], Event("Warning", item.reason, item.message)))
    was_draining = {s.get("name") for s in previous.get("servers", []) if s.get("draining")}
    for server in retiring:
        if server.name not in was_draining:
            why = ("its unloads stopped giving memory back" if server.ledger.leaks else
                   "it was built from an older pool spec")
            events.append(Event("Normal", "Draining", f"server {server.name} is drained and replaced: {why}"))
    return status, events, notices
