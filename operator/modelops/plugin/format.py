"""Pure formatting for `kubectl modelops`: ages, tables, the training progress bar, the describe views.
No I/O: every function takes objects as the API server returns them and gives text (or plain data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelops.clock import parse_rfc3339
from modelops.rollout import evaluation

TERMINAL = ("Succeeded", "Failed")
BAR_WIDTH = 24
ROLLOUT_REASONS = ("Deploying", "CanaryStarted", "CanaryStepped", "Promoted", "RolledBack")
NONE = "-"


# ---- small pieces ------------------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """kubectl's short durations (apimachinery's HumanDuration): 45s, 5m10s, 42m, 3h20m, 20h, 4d5h, 30d, 2y."""
    s = int(max(0, seconds))
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 730 else f"{days // 365}y"


def age(stamp: Any, now: datetime) -> str:
    """How long ago an RFC 3339 stamp was; '-' when there is none (or it is unreadable)."""
    if not isinstance(stamp, str) or not stamp:
        return NONE
    try:
        moment = parse_rfc3339(stamp.split(".")[0].rstrip("Z") + "Z")
    except ValueError:
        return NONE
    return human_duration((now - moment).total_seconds())


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns three spaces apart, as `kubectl get` prints them."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["   ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else NONE


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def condition(obj: dict[str, Any], cond_type: str) -> dict[str, Any]:
    return next((c for c in _status(obj).get("conditions") or [] if _dict(c).get("type") == cond_type), {})


# ---- get ---------------------------------------------------------------------------------------------


def progress_text(progress: Any) -> str:
    """'epoch 3/10 step 1200 checkpoint 2' from a TrainingJob's status.progress (the epoch in progress, then
    the last one saved: a preemption now would redo the epochs in between); '-' before the first report."""
    progress = _dict(progress)
    if progress.get("epoch") is None:
        return NONE
    text = _epoch_text(progress)
    text += f" checkpoint {progress['checkpointedEpoch']}" if progress.get("checkpointedEpoch") is not None else ""
    return text + (" (last save failed)" if progress.get("checkpointError") else "")


def _epoch_text(progress: dict[str, Any]) -> str:
    text = f"epoch {progress['epoch']}/{progress.get('epochs', '?')}"
    return text + (f" step {progress['step']}" if progress.get("step") is not None else "")


def preemption_cost(progress: Any) -> str:
    """What a preemption now would cost: the epochs after the last checkpoint, up to the one in progress."""
    progress = _dict(progress)
    epoch, saved = progress.get("epoch"), progress.get("checkpointedEpoch")
    if not isinstance(epoch, int):
        return NONE
    if not isinstance(saved, int):
        return "the trainer reports no checkpoint: a restart trains from the start"
    if saved >= epoch:
        return f"nothing: epoch {saved} is checkpointed"
    lost = f"epoch {epoch}" if epoch == saved + 1 else f"epochs {saved + 1}-{epoch}"
    return f"{lost}, resuming " + (f"after the checkpoint of epoch {saved}" if saved else "from the start")


def job_row(job: dict[str, Any], now: datetime) -> list[str]:
    status, meta = _status(job), job.get("metadata") or {}
    model = _dict(status.get("model"))
    name = model.get("name") or _dict(_dict(job.get("spec")).get("output")).get("modelName") or NONE
    return [f"tj/{meta.get('name')}", status.get("phase") or NONE, progress_text(status.get("progress")), name,
            str(model.get("version", NONE)), NONE, status.get("workersReady") or NONE,
            age(meta.get("creationTimestamp"), now)]


def service_row(service: dict[str, Any], now: datetime) -> list[str]:
    status, meta = _status(service), service.get("metadata") or {}
    canary = _dict(status.get("canary"))
    steps = len(_dict(_dict(service.get("spec")).get("rollout")).get("steps") or []) or "?"
    progress = f"step {int(canary.get('step', 0)) + 1}/{steps}" if canary else NONE
    canary_text = f"v{canary.get('version')} {canary.get('weight', 0)}%" if canary else NONE
    model = _dict(_dict(service.get("spec")).get("model")).get("name") or NONE
    pool = _dict(service.get("spec")).get("pool")
    if pool:  # served as copies on a ModelPool's servers
        model = f"{model}@mp/{pool}"
    version = status.get("modelVersion")
    return [f"ms/{meta.get('name')}", status.get("phase") or NONE, progress, model,
            NONE if version is None else str(version), canary_text, status.get("ready") or NONE,
            age(meta.get("creationTimestamp"), now)]


def pool_row(pool: dict[str, Any], now: datetime) -> list[str]:
    """A ModelPool in the same columns: memory used/capacity as its progress, models and copies resident, servers
    ready/desired."""
    status, meta = _status(pool), pool.get("metadata") or {}
    resident = f"{status.get('models', 0)} models/{status.get('copies', 0)} copies"
    return [f"mp/{meta.get('name')}", status.get("phase") or NONE, status.get("memory") or NONE, resident, NONE,
            NONE, status.get("serversReady") or NONE, age(meta.get("creationTimestamp"), now)]


GET_HEADERS = ["NAME", "PHASE", "PROGRESS", "MODEL", "VERSION", "CANARY", "READY", "AGE"]


def get_table(jobs: list[dict[str, Any]], services: list[dict[str, Any]], now: datetime,
              all_namespaces: bool = False, pools: list[dict[str, Any]] | None = None) -> str:
    """One table of TrainingJobs, ModelServices then ModelPools (by namespace and name); a NAMESPACE column
    with -A."""
    rows: list[tuple[str, int, str, list[str]]] = []
    for order, (objects, row) in enumerate(((jobs, job_row), (services, service_row), (pools or [], pool_row))):
        for obj in objects:
            meta = obj.get("metadata") or {}
            rows.append((meta.get("namespace", ""), order, meta.get("name", ""), row(obj, now)))
    rows.sort(key=lambda r: r[:3])
    if all_namespaces:
        return table(["NAMESPACE", *GET_HEADERS], [[ns, *cells] for ns, _, _, cells in rows])
    return table(GET_HEADERS, [cells for *_, cells in rows])


# ---- watch -------------------------------------------------------------------------------------------


@dataclass
class EpochClock:
    """Steps per epoch, learned from the trainer's reports (it reports the global step, not the epoch's
    length): a report in epoch k > 1 at global step s means (k-1) epochs took at most s steps, so the
    smallest s/(k-1) seen is the estimate (tight from the first report of each epoch on). Until the second
    epoch the bar counts finished epochs only."""

    steps_per_epoch: float | None = None
    at_least: float = 0.0
    """s/k: epoch k's report at step s means an epoch has at least this many steps."""

    def observe(self, progress: dict[str, Any]) -> None:
        epoch, step = progress.get("epoch"), progress.get("step")
        if not isinstance(epoch, int) or not isinstance(step, int) or epoch < 1 or step < 1:
            return
        self.at_least = max(self.at_least, step / epoch)
        if epoch > 1:
            bound = step / (epoch - 1)
            self.steps_per_epoch = bound if self.steps_per_epoch is None else min(self.steps_per_epoch, bound)

    def fraction(self, progress: dict[str, Any]) -> float:
        """The share of the training done: finished epochs, plus the current one's share when the length of
        an epoch is known. Below 1 until the job says it succeeded."""
        epoch, epochs, step = progress.get("epoch"), progress.get("epochs"), progress.get("step")
        if not isinstance(epoch, int) or not isinstance(epochs, int) or epochs < 1:
            return 0.0
        done = float(max(0, epoch - 1))
        if self.steps_per_epoch and isinstance(step, int):
            length = max(self.steps_per_epoch, self.at_least)
            done += max(0.0, min(1.0, (step - (epoch - 1) * length) / length))
        return min(done / epochs, 0.999)


def watch_line(job: dict[str, Any], clock: EpochClock) -> str:
    """One line of `watch tj`: phase, the bar, epoch and step, loss, accuracy, samples/s (or why it waits)."""
    status, name = _status(job), (job.get("metadata") or {}).get("name")
    phase = status.get("phase") or "Pending"
    progress = _dict(status.get("progress"))
    head = f"tj/{name} {phase:<9}"
    if phase in ("Pending", "Suspended") and not progress:
        ready = condition(job, "Ready")
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready.get("message") else ""
        return f"{head} workers {status.get('workersReady') or NONE}" + (f"  ({why})" if why else "")
    fraction = 1.0 if phase == "Succeeded" else clock.fraction(progress)
    parts = [f"{head} {bar(fraction)} {fraction * 100:3.0f}%", progress_text(progress)]
    if progress.get("loss") is not None:
        parts.append(f"loss {_number(progress['loss'])}")
    if progress.get("valAccuracy") is not None:
        parts.append(f"acc {_number(progress['valAccuracy'])}")
    if isinstance(progress.get("samplesPerSecond"), (int, float)):
        parts.append(f"{progress['samplesPerSecond']:,.0f} samples/s")
    return "  ".join(parts)


def outcome_line(job: dict[str, Any]) -> str:
    """The last line of `watch tj` once the job ended: what it published, or why it failed."""
    status, name = _status(job), (job.get("metadata") or {}).get("name")
    phase = status.get("phase")
    if phase == "Succeeded":
        model = _dict(status.get("model"))
        if model:
            accuracy = f", test accuracy {_number(model['testAccuracy'])}" if model.get("testAccuracy") is not None \
                else ""
            return f"tj/{name} succeeded: published {model.get('name')} version {model.get('version')}{accuracy}"
        return f"tj/{name} succeeded"
    failed = condition(job, "Failed")
    return f"tj/{name} failed: {failed.get('reason') or 'Failed'}: {failed.get('message') or 'no message'}"


# ---- describe tj -------------------------------------------------------------------------------------


def describe_job_data(job: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything `describe tj` shows, as plain data (what -o json/yaml prints)."""
    status = _status(job)
    return {
        "name": job["metadata"]["name"], "namespace": job["metadata"].get("namespace"),
        "phase": status.get("phase"), "workersReady": status.get("workersReady"), "attempt": status.get("attempt"),
        "restarts": status.get("restarts", 0), "preemptions": status.get("preemptions", 0),
        "progress": _dict(status.get("progress")),
        "preemptionCost": NONE if status.get("phase") in TERMINAL else preemption_cost(status.get("progress")),
        "model": status.get("model"), "conditions": status.get("conditions") or [], "events": event_entries(events),
    }


def describe_job(data: dict[str, Any], now: datetime) -> str:
    """`describe tj` as text, from describe_job_data."""
    progress, model = data["progress"], _dict(data["model"])
    measured = [f"loss {_number(progress['loss'])}" if progress.get("loss") is not None else "",
                f"acc {_number(progress['valAccuracy'])}" if progress.get("valAccuracy") is not None else "",
                f"{progress['samplesPerSecond']:,.0f} samples/s"
                if isinstance(progress.get("samplesPerSecond"), (int, float)) else ""]
    saved = progress.get("checkpointedEpoch")
    epochs = _epoch_text(progress) if progress.get("epoch") is not None else NONE
    lines = [f"Name:            {data['name']}", f"Namespace:       {data['namespace']}",
             f"Phase:           {data['phase'] or NONE}",
             f"Workers:         {data['workersReady'] or NONE} running, attempt {data['attempt']}, "
             f"{data['restarts']} restarts, {data['preemptions']} preemptions",
             f"Progress:        {', '.join([epochs, *filter(None, measured)])}",
             f"Checkpoint:      {NONE if saved is None else f'epoch {saved}' if saved else 'none yet'}",
             f"Preemption cost: {data['preemptionCost']}"]
    if progress.get("checkpointError"):
        lines.append(f"Last save:       failed: {progress['checkpointError']}")
    if model:
        accuracy = f", test accuracy {_number(model['testAccuracy'])}" if model.get("testAccuracy") is not None else ""
        lines.append(f"Model:           {model.get('name')} version {model.get('version')} at {model.get('uri')}"
                     f"{accuracy}")
    lines += _section("Conditions", _condition_rows(data["conditions"], now))
    lines += _section("Events", _event_rows(data["events"][-10:], now))
    return "\n".join(lines)


# ---- describe ms -------------------------------------------------------------------------------------


def _revision_role(name: str, status: dict[str, Any], annotations: dict[str, Any]) -> tuple[str, int | None]:
    """(role, traffic weight in %) of one revision, from the status (what the operator decided last)."""
    stable, canary = _dict(status.get("stable")), _dict(status.get("canary"))
    weight = int(canary.get("weight", 0)) if canary else 0
    if name == canary.get("name"):
        return "canary", weight
    if name == stable.get("name"):
        return "stable", 100 - weight
    role = str(annotations.get("modelops.dev/rollout-role") or "retired")
    return ("rejected" if name == status.get("rejectedRevision") else role), 0


def _accuracy(name: str, status: dict[str, Any], evaluated: dict[str, Any] | None) -> float | None:
    """Held-out accuracy: what the status reports for the revision, else its evaluation record's."""
    reported = next((r.get("accuracy") for r in (_dict(status.get("stable")), _dict(status.get("canary")))
                     if r.get("name") == name), None)
    return reported if reported is not None else (evaluated or {}).get("accuracy")


def revisions(service: dict[str, Any], deployments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per revision Deployment: name, version, role, weight, replicas, ready, held-out accuracy,
    the evaluation gate's record (annotation modelops.dev/evaluation), created."""
    status, result = _status(service), []
    if _dict(service.get("spec")).get("pool"):  # no Deployments: the revisions are what its status records
        for name in (r.get("name") for r in (_dict(status.get("stable")), _dict(status.get("canary"))) if r):
            revision = next(r for r in (_dict(status.get("stable")), _dict(status.get("canary")))
                            if r.get("name") == name)
            role, weight = _revision_role(str(name), status, {})
            result.append({"name": name, "version": str(revision.get("version")), "role": role, "weight": weight,
                           "replicas": int(revision.get("replicas") or 0),
                           "readyReplicas": int(revision.get("readyReplicas") or 0),
                           "accuracy": revision.get("accuracy"), "evaluation": revision.get("evaluation"),
                           "created": revision.get("startedAt")})
        return result
    for dep in sorted(deployments, key=lambda d: str(d["metadata"].get("creationTimestamp", ""))):
        meta = dep["metadata"]
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if isinstance(v, str)}
        role, weight = _revision_role(meta["name"], status, annotations)
        evaluated = evaluation.read(annotations)
        result.append({"name": meta["name"], "version": (meta.get("labels") or {}).get("modelops.dev/model-version"),
                       "role": role, "weight": weight, "replicas": int(_dict(dep.get("spec")).get("replicas") or 0),
                       "readyReplicas": int(_status(dep).get("readyReplicas") or 0),
                       "accuracy": _accuracy(meta["name"], status, evaluated), "evaluation": evaluated,
                       "created": meta.get("creationTimestamp")})
    return result


def model_checks(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model-ready readiness gate of each serving pod: the operator's check of the loaded model."""
    checks = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        gate = condition(pod, "modelops.dev/model-ready")
        checks.append({"pod": pod["metadata"]["name"],
                       "revision": (pod["metadata"].get("labels") or {}).get("modelops.dev/revision"),
                       "passed": gate.get("status", "Unknown"), "reason": gate.get("reason") or "NotChecked",
                       "message": gate.get("message") or ""})
    return checks


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
               or (event.get("metadata") or {}).get("creationTimestamp") or "")


def event_entries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"time": _event_time(e), "type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
             "count": e.get("count", 1)} for e in sorted(events, key=_event_time)]


def _is_gate(word: str) -> bool:
    return any(part in word.lower() for part in ("gate", "evaluation", "approval"))


def gate_results(status: dict[str, Any]) -> dict[str, Any]:
    """Whatever the status reports about rollout gates (evaluation gate, approvals), as it reports it:
    status fields, and conditions, by name."""
    fields = {k: v for k, v in status.items() if _is_gate(k)}
    conditions = {str(c.get("type")): c for c in status.get("conditions") or []
                  if isinstance(c, dict) and _is_gate(str(c.get("type")))}
    return {**fields, **conditions}


def pool_copies(service: dict[str, Any], pool: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pooled ModelService's copies: its pool, and each pool server holding a version of its model (ready,
    bytes, last inference, leaving, listed in its Service's EndpointSlice)."""
    name = _dict(service.get("spec")).get("pool")
    if not name:
        return None
    model = _dict(_dict(service.get("spec")).get("model")).get("name")
    placed = _dict(_status(service).get("pool"))
    listed = set(placed.get("servers") or [])
    copies = [{"server": server.get("name"), "version": m.get("version"), "ready": bool(m.get("ready")),
               "bytes": m.get("bytes"), "measured": bool(m.get("measured")), "lastInference": m.get("lastInference"),
               "leaving": bool(m.get("leaving")), "listed": server.get("name") in listed}
              for server in _status(pool or {}).get("servers") or [] for m in server.get("models") or []
              if m.get("name") == model]
    unplaced = [u for u in _status(pool or {}).get("unplaced") or []
                if u.get("modelService") == service["metadata"]["name"]]
    return {"name": name, "found": pool is not None, "copies": copies, "servers": sorted(listed),
            "unplaced": unplaced}


def describe_service_data(service: dict[str, Any], deployments: list[dict[str, Any]], pods: list[dict[str, Any]],
                          events: list[dict[str, Any]], pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything `describe ms` shows, as plain data (what -o json/yaml prints); `pool`: the ModelPool of a
    pooled ModelService."""
    status, entries = _status(service), event_entries(events)
    history = status.get("analysisHistory")
    return {"pool": pool_copies(service, pool), **{
        "name": service["metadata"]["name"], "namespace": service["metadata"].get("namespace"),
        "model": _dict(_dict(service.get("spec")).get("model")), "phase": status.get("phase"),
        "modelVersion": status.get("modelVersion"), "ready": status.get("ready"), "url": status.get("url"),
        "revisions": revisions(service, deployments),
        "canary": status.get("canary"), "rejectedRevision": status.get("rejectedRevision"),
        "rollout": [e for e in entries if e["reason"] in ROLLOUT_REASONS],
        "lastAnalysis": status.get("lastAnalysis"),
        "analysisHistory": history if isinstance(history, list) else
        ([status["lastAnalysis"]] if isinstance(status.get("lastAnalysis"), dict) else []),
        "gates": gate_results(status), "modelChecks": model_checks(pods),
        "autoscaling": status.get("autoscaling"),
        "scalingDecisions": [e for e in entries if e["reason"] == "Scaled"],
        "conditions": status.get("conditions") or [], "events": entries,
    }}


def _model_line(model: dict[str, Any]) -> str:
    if model.get("fromTrainingJob"):
        return f"{model.get('name')}, following TrainingJob {model['fromTrainingJob']}"
    return f"{model.get('name')}, pinned to version {model.get('version')}"


def _measured(analysis: dict[str, Any], prefix: str = "") -> str:
    key = (lambda name: prefix + name[0].upper() + name[1:]) if prefix else (lambda name: name)
    error_rate, p99 = _number(analysis.get(key("errorRate")), 4), _number(analysis.get(key("p99LatencyMs")), 1)
    return f"error rate {error_rate}, p99 {p99} ms, {_number(analysis.get(key('requests')), 0)} requests"


def _analysis_text(analysis: dict[str, Any], now: datetime) -> str:
    """One analysis: the canary's numbers, the stable revision's in the same window when measured."""
    text = f"{analysis.get('verdict')} {age(analysis.get('time'), now)} ago: canary {_measured(analysis)}"
    if any(k.startswith("stable") for k in analysis):
        text += f"; stable {_measured(analysis, 'stable')}"
    if analysis.get("latencyRatio") is not None:
        text += f"; p99 ratio {_number(analysis['latencyRatio'], 2)}"
    return text + (f" ({analysis['message']})" if analysis.get("message") else "")


def _evaluation_text(record: dict[str, Any]) -> str:
    """An evaluation gate record: verdict, the two scores on the same held-out set, why."""
    text = str(record.get("verdict"))
    if record.get("revision"):
        text = f"{record['revision']} (version {record.get('version', '?')}) {text}"
    if record.get("accuracy") is not None:
        text += f": accuracy {_number(record['accuracy'])}"
        if record.get("stableAccuracy") is not None:
            text += f" vs stable {_number(record['stableAccuracy'])}"
        if record.get("samples"):
            text += f" on {record['samples']} samples"
    return text + (f" ({record['message']})" if record.get("message") else "")


def _gate_text(value: Any) -> str:
    if isinstance(value, dict) and {"type", "status"} <= value.keys():  # a condition
        return f"{value['status']} {value.get('reason') or ''}: {value.get('message') or ''}".replace(" :", ":")
    if isinstance(value, dict) and "verdict" in value:  # an evaluation record
        return _evaluation_text(value)
    return json.dumps(value, ensure_ascii=False)


def _section(title: str, body: list[str]) -> list[str]:
    return [f"{title}:", *(f"  {line}" for line in (body or ["<none>"]))]


def _event_rows(entries: list[dict[str, Any]], now: datetime) -> list[str]:
    rows = [[age(e["time"], now), str(e["type"]), str(e["reason"]), str(e["message"])] for e in entries]
    return table(["AGE", "TYPE", "REASON", "MESSAGE"], rows).splitlines() if rows else []


def _revision_rows(data: dict[str, Any], now: datetime) -> list[str]:
    canary = _dict(data.get("canary"))
    rows = [[r["name"], str(r["version"]), r["role"], f"{r['weight']}%", f"{r['readyReplicas']}/{r['replicas']}",
             _number(r.get("accuracy")), str((r.get("evaluation") or {}).get("verdict") or NONE),
             age(r["created"], now)] for r in data["revisions"]]
    headers = ["REVISION", "VERSION", "ROLE", "WEIGHT", "READY", "ACCURACY", "EVALUATION", "AGE"]
    lines = table(headers, rows).splitlines() if rows else []
    if canary:
        lines.append(f"canary at step {int(canary.get('step', 0)) + 1}, step started "
                     f"{age(canary.get('stepStartedAt'), now)} ago, rollout started "
                     f"{age(canary.get('startedAt'), now)} ago")
    if data.get("rejectedRevision"):
        lines.append(f"rejected (not retried until the spec changes): {data['rejectedRevision']}")
    return lines


def _autoscaling_rows(data: dict[str, Any], now: datetime) -> list[str]:
    scaling = _dict(data.get("autoscaling"))
    lines = []
    if scaling:
        lines.append(f"{scaling.get('metric')} = {_number(scaling.get('value'), 2)} (target {scaling.get('target')})"
                     f" -> {scaling.get('desiredReplicas')} replicas; last scaled "
                     f"{age(scaling.get('lastScaleTime'), now)} ago")
        if scaling.get("reason"):
            lines.append(f"reason: {scaling['reason']}")
    lines += [f"{age(e['time'], now)} ago: {e['message']}" for e in data["scalingDecisions"]]
    return lines


def _condition_rows(conditions: list[dict[str, Any]], now: datetime) -> list[str]:
    rows = [[str(c.get("type")), str(c.get("status")), str(c.get("reason") or ""),
             age(c.get("lastTransitionTime"), now), str(c.get("message") or "")] for c in conditions]
    return table(["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"], rows).splitlines() if rows else []


def describe_service(data: dict[str, Any], now: datetime) -> str:
    """`describe ms` as text, from describe_service_data."""
    checks = [[c["pod"], str(c["revision"]), str(c["passed"]), c["reason"], c["message"]] for c in data["modelChecks"]]
    gates = [f"{k}: {_gate_text(v)}" for k, v in data["gates"].items()]
    if checks:
        gates += ["model check of each pod (readiness gate modelops.dev/model-ready):",
                  *table(["POD", "REVISION", "PASSED", "REASON", "MESSAGE"], checks).splitlines()]
    lines = [f"Name:       {data['name']}", f"Namespace:  {data['namespace']}",
             f"Model:      {_model_line(data['model'])}", f"Phase:      {data['phase'] or NONE}",
             f"Serving:    version {data['modelVersion'] if data['modelVersion'] is not None else NONE}, "
             f"{data['ready'] or '0/0'} {'copies' if data.get('pool') else 'replicas'} ready",
             f"URL:        {data['url'] or NONE}"]
    if data.get("pool"):
        lines += _section("Pool", _pool_copy_rows(data["pool"], now))
    lines += _section("Revisions", _revision_rows(data, now))
    lines += _section("Rollout history", _event_rows(data["rollout"], now))
    lines += _section("Analysis", [_analysis_text(a, now) for a in data["analysisHistory"]])
    lines += _section("Gates", gates)
    lines += _section("Autoscaling", _autoscaling_rows(data, now))
    lines += _section("Conditions", _condition_rows(data["conditions"], now))
    lines += _section("Events", _event_rows(data["events"][-10:], now))
    return "\n".join(lines)


# ---- pools ---------------------------------------------------------------------------------------------


def size(value: Any) -> str:
    """Bytes as Kubernetes quantities print them (binary suffixes, one decimal below 10)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return NONE
    amount, unit = float(value), ""
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if amount < 1024 or unit == "Ti":
            break
        amount /= 1024
    return f"{amount:.1f}{unit}" if unit and amount < 10 and amount != int(amount) else f"{amount:.0f}{unit}"


def _pool_copy_rows(pool: dict[str, Any], now: datetime) -> list[str]:
    lines = [f"mp/{pool['name']}" + ("" if pool["found"] else " (not found)") +
             f"; its Service lists {', '.join(pool['servers']) or 'no server'}"]
    rows = [[str(c["server"]), str(c["version"]), str(c["ready"]).lower(),
             size(c["bytes"]) + ("" if c["measured"] else " (declared)"), age(c["lastInference"], now),
             "leaving" if c["leaving"] else "listed" if c["listed"] else NONE] for c in pool["copies"]]
    if rows:
        lines += table(["SERVER", "VERSION", "READY", "SIZE", "LAST INFERENCE", "ROUTING"], rows).splitlines()
    lines += [f"unplaced v{u.get('version', '?')}: {u.get('reason')}: {u.get('message', '')}" for u in pool["unplaced"]]
    return lines


def describe_pool_data(pool: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything `describe mp` shows, as plain data (what -o json/yaml prints)."""
    status, spec = _status(pool), _dict(pool.get("spec"))
    return {"name": pool["metadata"]["name"], "namespace": pool["metadata"].get("namespace"),
            "phase": status.get("phase"), "serversReady": status.get("serversReady"),
            "servers": status.get("servers") or [], "memory": status.get("memory"), "models": status.get("models", 0),
            "copies": status.get("copies", 0), "totals": _dict(status.get("totals")),
            "unplaced": status.get("unplaced") or [],
            "spec": {k: spec.get(k) for k in ("capacity", "overcommit", "minServers", "maxServers", "resources")},
            "conditions": status.get("conditions") or [], "events": event_entries(events)}


def describe_pool(data: dict[str, Any], now: datetime) -> str:
    """`describe mp` as text: each server's memory and the copies resident on it."""
    spec, totals = data["spec"], data["totals"]
    servers = [[str(s.get("name")), str(bool(s.get("ready"))).lower(), "draining" if s.get("draining") else NONE,
                f"{size(s.get('bytesUsed', 0))}/{size(s.get('capacityBytes', 0))}", str(len(s.get("models") or []))]
               for s in data["servers"]]
    copies = [[str(s.get("name")), f"{m.get('name')}:{m.get('version')}", str(bool(m.get("ready"))).lower(),
               size(m.get("bytes")) + ("" if m.get("measured") else " (declared)"), age(m.get("lastInference"), now),
               "leaving" if m.get("leaving") else NONE]
              for s in data["servers"] for m in s.get("models") or []]
    lines = [f"Name:       {data['name']}", f"Namespace:  {data['namespace']}", f"Phase:      {data['phase'] or NONE}",
             f"Scale:      {data['serversReady'] or NONE} servers ready (min {spec.get('minServers')}, max "
             f"{spec.get('maxServers')}), capacity {spec.get('capacity')} each, "
             f"overcommit {spec.get('overcommit') or 0}",
             f"Resident:   {data['models']} model versions, {data['copies']} copies, memory {data['memory'] or NONE}",
             f"Totals:     {totals.get('loads', 0)} loads, {totals.get('unloads', 0)} unloads, "
             f"{totals.get('evictions', 0)} evictions"]
    lines += _section("Servers", table(["SERVER", "READY", "STATE", "USED/CAPACITY", "COPIES"], servers).splitlines()
                      if servers else [])
    lines += _section("Copies", table(["SERVER", "MODEL", "READY", "SIZE", "LAST INFERENCE", "STATE"],
                                      copies).splitlines() if copies else [])
    lines += _section("Unplaced", [f"{u.get('modelService')} ({u.get('model')}:{u.get('version', '?')}): "
                                   f"{u.get('reason')}: {u.get('message', '')}" for u in data["unplaced"]])
    lines += _section("Conditions", _condition_rows(data["conditions"], now))
    lines += _section("Events", _event_rows(data["events"][-10:], now))
    return "\n".join(lines)
