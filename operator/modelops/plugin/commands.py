"""The commands of `kubectl modelops` (also `modelops <command>`): argument parsing and the handlers that
read through modelops.kube and print what plugin.format renders."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from modelops import API_VERSION
from modelops.plugin import format as fmt

if TYPE_CHECKING:
    from modelops.kube import Kube

USER_AGENT = "kubectl-modelops/0.1"
ROLLOUT_ANNOTATION = "modelops.dev/rollout"  # read by the ModelService controller: promote | abort
KINDS = {"tj": "TrainingJob", "trainingjob": "TrainingJob", "trainingjobs": "TrainingJob",
         "ms": "ModelService", "modelservice": "ModelService", "modelservices": "ModelService",
         "mp": "ModelPool", "modelpool": "ModelPool", "modelpools": "ModelPool"}
PLURAL = {"TrainingJob": "trainingjobs.modelops.dev", "ModelService": "modelservices.modelops.dev",
          "ModelPool": "modelpools.modelops.dev"}


DESCRIPTION = ("Day two with modelops: TrainingJobs and ModelServices at a glance, a training job's live progress, "
               "a rollout's state, and its controls (promote, abort, rollback).")


class CommandError(Exception):
    """A refusal or a failure worth one `error: ...` line and exit code 1."""


@dataclass(frozen=True)
class Session:
    kube: Kube
    namespace: str


# ---- arguments -------------------------------------------------------------------------------------


def connection_flags(all_namespaces: bool = False) -> argparse.ArgumentParser:
    """kubectl's flags. Defaults are suppressed so the same flag given before or after the command counts."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the namespace (default: the context's)")
    flags.add_argument("--context", default=argparse.SUPPRESS, help="the kubeconfig context to use")
    flags.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                       help="the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    if all_namespaces:
        flags.add_argument("-A", "--all-namespaces", action="store_true", default=argparse.SUPPRESS,
                           help="list across all namespaces")
    return flags


def _output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("json", "yaml"), help="print the objects instead of a table")


def add_commands(commands: Any) -> None:
    """Register the plugin's commands on an argparse subparsers object (kubectl-modelops' or modelops')."""
    flags, listing = connection_flags(), connection_flags(all_namespaces=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str,
                parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=help, description=help,
                                                           parents=parents or [flags])
        sub.set_defaults(handler=functools.partial(run, handler))
        return sub

    get = command("get", get_command, "one table of TrainingJobs, ModelServices and ModelPools", [listing])
    get.add_argument("kind", nargs="?", default="all", help="tj, ms, mp or all (default)")
    get.add_argument("name", nargs="?", help="only this object")
    _output_flag(get)
    command("watch", watch_command, "follow a TrainingJob's progress until it ends (exit 0: Succeeded)") \
        .add_argument("target", nargs="+", metavar="tj NAME")
    describe = command("describe", describe_command,
                       "a ModelService's revisions, rollout and analysis, gates, autoscaling, conditions, Events "
                       "(a pooled one's copies on its pool's servers); "
                       "a TrainingJob's progress, last checkpoint and what a preemption would cost, conditions, "
                       "Events; "
                       "a ModelPool's servers, the copies resident on each and their memory")
    describe.add_argument("target", nargs="+", metavar="ms|tj|mp NAME")
    _output_flag(describe)
    for action, effect in (("promote", "promotes the canary"), ("abort", "rolls the canary back")):
        command(action, functools.partial(rollout_command, action),
                f"annotate a ModelService {ROLLOUT_ANNOTATION}={action}: the operator {effect}") \
            .add_argument("target", nargs="+", metavar="ms NAME")
    rollback = command("rollback", rollback_command, "pin a ModelService to a model version (spec.model.version)")
    rollback.add_argument("target", nargs="+", metavar="ms NAME")
    rollback.add_argument("--to-version", type=int, required=True, help="the model version to serve")
    logs = command("logs", logs_command, "the log of a TrainingJob worker of the current attempt")
    logs.add_argument("target", nargs="+", metavar="tj NAME")
    logs.add_argument("--rank", type=int, default=0, help="the worker's rank (pod index; default 0)")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the log until the container ends")


def build_parser(prog: str = "kubectl modelops") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, parents=[connection_flags()])
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """The kubectl-modelops executable (kubectl finds it on PATH as the `modelops` plugin)."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


# ---- plumbing --------------------------------------------------------------------------------------


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; API errors, refusals and Ctrl-C become one line on stderr and an exit code."""
    from modelops.kube import ApiError, ConfigException, ResourceNotFoundError

    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except (CommandError, ApiError, ConfigException, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
    except ResourceNotFoundError as error:
        print(f"error: the cluster does not serve {error}: are the modelops CRDs installed?", file=sys.stderr)
    except Exception as error:  # the client's discovery, before modelops.kube can wrap urllib3's errors
        if not (isinstance(error, OSError) or type(error).__module__.startswith("urllib3")):
            raise
        print(f"error: cannot reach the API server: {getattr(error, 'reason', None) or error}", file=sys.stderr)
    return 1


def session(args: argparse.Namespace) -> Session:
    from modelops.kube import Kube, kubeconfig_namespace

    path, context = getattr(args, "kubeconfig", None), getattr(args, "context", None)
    kube = Kube.from_kubeconfig(path, context, user_agent=USER_AGENT)
    return Session(kube, getattr(args, "namespace", None) or kubeconfig_namespace(path, context))


def target(words: list[str], kind: str) -> str:
    """The NAME of `KIND NAME` or `KIND/NAME`, for the one kind a command takes."""
    resource, _, name = words[0].partition("/") if len(words) == 1 else (words[0], "/", words[1])
    if len(words) > 2 or not name:
        raise CommandError(f"expected `{_short(kind)} NAME`, got {' '.join(words)!r}")
    if KINDS.get(resource.lower()) != kind:
        raise CommandError(f"this command takes a {kind} ({_short(kind)} NAME), not {resource!r}")
    return name


def _short(kind: str) -> str:
    return {"TrainingJob": "tj", "ModelPool": "mp"}.get(kind, "ms")


def fetch(kube: Kube, kind: str, namespace: str, name: str) -> dict[str, Any]:
    obj = kube.get(API_VERSION, kind, namespace, name)
    if obj is None:
        raise CommandError(f'{PLURAL[kind]} "{name}" not found in namespace {namespace}')
    return obj


def dump(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        import yaml

        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---- get -------------------------------------------------------------------------------------------


def get_command(args: argparse.Namespace) -> int:
    kinds = ["TrainingJob", "ModelService", "ModelPool"] if args.kind == "all" else [KINDS.get(args.kind.lower(), "")]
    if not kinds[0]:
        raise CommandError(f"unknown kind {args.kind!r}: tj, ms, mp or all")
    s = session(args)
    everywhere = bool(getattr(args, "all_namespaces", False))
    namespace = None if everywhere else s.namespace
    if args.name:
        s.kube.path(API_VERSION, kinds[0], namespace, args.name)  # refuses what is not an object name
    found = {kind: _list(s.kube, kind, namespace, args.name, optional=kind == "ModelPool" and len(kinds) > 1)
             for kind in kinds}
    jobs, services, pools = found.get("TrainingJob", []), found.get("ModelService", []), found.get("ModelPool", [])
    if args.name and not jobs and not services and not pools:
        where = "" if everywhere else f" in namespace {s.namespace}"
        raise CommandError(f'{" or ".join(PLURAL[k] for k in kinds)} "{args.name}" not found{where}')
    if args.output:
        for obj in jobs + services + pools:  # as kubectl prints them (--show-managed-fields=false)
            obj.get("metadata", {}).pop("managedFields", None)
        dump({"apiVersion": "v1", "kind": "List", "items": jobs + services + pools}, args.output)
    elif not jobs and not services and not pools:
        print("No resources found" + ("" if everywhere else f" in {s.namespace} namespace") + ".", file=sys.stderr)
    else:
        print(fmt.get_table(jobs, services, _now(), all_namespaces=everywhere, pools=pools))
    return 0


def _list(kube: Kube, kind: str, namespace: str | None, name: str | None, *, optional: bool) -> list[dict[str, Any]]:
    """The objects of a kind (one by name); with `optional`, none when the cluster lacks the kind's CRD (an
    operator installed before ModelPools)."""
    from modelops.kube import ApiError

    try:
        return kube.list_objects(API_VERSION, kind, namespace, fields=f"metadata.name={name}" if name else None)[0]
    except ApiError as error:
        if optional and error.status == 404:
            return []
        raise


# ---- watch -----------------------------------------------------------------------------------------


def watch_command(args: argparse.Namespace) -> int:
    from modelops.plugin.watch import watch_job

    name = target(args.target, "TrainingJob")
    s = session(args)
    return watch_job(s.kube, s.namespace, name)


# ---- describe --------------------------------------------------------------------------------------


def _service_label(name: str) -> str:
    from modelops.resources.naming import dns_label

    return f"modelops.dev/model-service={dns_label(name)}"


def _owned(objects: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    from modelops.kube import controller_owner

    return [o for o in objects if (controller_owner(o) or {}).get("uid") == uid]


def describe_command(args: argparse.Namespace) -> int:
    kind = KINDS.get(args.target[0].partition("/")[0].lower())
    if kind == "TrainingJob":
        return describe_job_command(args)
    if kind == "ModelPool":
        return describe_pool_command(args)
    name = target(args.target, "ModelService")
    s = session(args)
    service = fetch(s.kube, "ModelService", s.namespace, name)
    uid = service["metadata"]["uid"]
    deployments = _owned(s.kube.list_objects("apps/v1", "Deployment", s.namespace, labels=_service_label(name))[0],
                         uid)
    pods = s.kube.list_objects("v1", "Pod", s.namespace, labels=_service_label(name))[0]
    events = s.kube.list_objects("v1", "Event", s.namespace,
                                 fields=f"involvedObject.kind=ModelService,involvedObject.uid={uid}")[0]
    pool_name = (service.get("spec") or {}).get("pool")
    pool = s.kube.get(API_VERSION, "ModelPool", s.namespace, pool_name) if pool_name else None
    data = fmt.describe_service_data(service, deployments, pods, events, pool)
    if args.output:
        dump(data, args.output)
    else:
        print(fmt.describe_service(data, _now()))
    return 0


def describe_pool_command(args: argparse.Namespace) -> int:
    name = target(args.target, "ModelPool")
    s = session(args)
    pool = fetch(s.kube, "ModelPool", s.namespace, name)
    involved = f"involvedObject.kind=ModelPool,involvedObject.uid={pool['metadata']['uid']}"
    events = s.kube.list_objects("v1", "Event", s.namespace, fields=involved)[0]
    data = fmt.describe_pool_data(pool, events)
    if args.output:
        dump(data, args.output)
    else:
        print(fmt.describe_pool(data, _now()))
    return 0


def describe_job_command(args: argparse.Namespace) -> int:
    name = target(args.target, "TrainingJob")
    s = session(args)
    job = fetch(s.kube, "TrainingJob", s.namespace, name)
    uid = job["metadata"]["uid"]
    events = s.kube.list_objects("v1", "Event", s.namespace,
                                 fields=f"involvedObject.kind=TrainingJob,involvedObject.uid={uid}")[0]
    data = fmt.describe_job_data(job, events)
    if args.output:
        dump(data, args.output)
    else:
        print(fmt.describe_job(data, _now()))
    return 0


# ---- promote / abort -------------------------------------------------------------------------------


def rollout_command(action: str, args: argparse.Namespace) -> int:
    """promote or abort: the annotation the ModelService controller acts on, set only while a canary runs
    (set without one, it would act on the next rollout the moment it starts)."""
    name = target(args.target, "ModelService")
    s = session(args)
    service = fetch(s.kube, "ModelService", s.namespace, name)
    canary = (service.get("status") or {}).get("canary")
    if not isinstance(canary, dict) or not canary.get("name"):
        raise CommandError(f"modelservice {name} has no canary in progress: nothing to {action}")
    s.kube.patch(API_VERSION, "ModelService", s.namespace, name,
                 {"metadata": {"annotations": {ROLLOUT_ANNOTATION: action}}})
    what = _promote_effect(service, canary) if action == "promote" else "rolls it back"
    print(f"modelservice.modelops.dev/{name} annotated {ROLLOUT_ANNOTATION}={action}: canary {canary['name']} "
          f"(version {canary.get('version')} at {canary.get('weight', 0)}%); the operator {what}")
    return 0


def _promote_effect(service: dict[str, Any], canary: dict[str, Any]) -> str:
    """What `promote` does to this canary: approve its step when the step waits for approval, else promote."""
    steps = ((service.get("spec") or {}).get("rollout") or {}).get("steps") or []
    step = int(canary.get("step") or 0)
    approval = step < len(steps) and isinstance(steps[step], dict) and steps[step].get("approval")
    what = f"approves step {step + 1} (it waits for approval)" if approval else "promotes it"
    return f"{what} once its pods serve a verified model"


# ---- rollback --------------------------------------------------------------------------------------


def signature_for(kube: Kube, service: dict[str, Any], version: int) -> tuple[dict[str, Any] | None, str]:
    """The signature to pin `version` with, and where it came from: the revision that served that version,
    else the spec's own, else the served (stable) revision's, else the followed TrainingJob's report."""
    from modelops.resources.modelservice import served_target

    meta, spec, status = service["metadata"], service.get("spec") or {}, service.get("status") or {}
    model = spec.get("model") or {}
    configs = _owned(kube.list_objects("v1", "ConfigMap", meta["namespace"], labels=_service_label(meta["name"]))[0],
                     meta["uid"])
    served = {c["metadata"]["name"]: t for c in configs if (t := served_target(c, str(model.get("name"))))}
    for revision, t in served.items():
        if t.version == version:
            return t.signature, f"revision {revision}, which served version {version}"
    if isinstance(model.get("signature"), dict):
        return model["signature"], "the current spec"
    stable = (status.get("stable") or {}).get("name") if isinstance(status.get("stable"), dict) else None
    for revision, t in sorted(served.items(), key=lambda item: item[0] != stable)[:1]:
        return t.signature, f"revision {revision} (version {t.version}); the model check verifies it"
    job = kube.get(API_VERSION, "TrainingJob", meta["namespace"], model.get("fromTrainingJob") or "") \
        if model.get("fromTrainingJob") else None
    published = ((job or {}).get("status") or {}).get("model") or {}
    if isinstance(published.get("signature"), dict) and published.get("name") == model.get("name"):
        return published["signature"], f"TrainingJob {model['fromTrainingJob']}'s report"
    return None, ""


def rollback_command(args: argparse.Namespace) -> int:
    name = target(args.target, "ModelService")
    if args.to_version < 1:
        raise CommandError("--to-version must be 1 or more")
    s = session(args)
    service = fetch(s.kube, "ModelService", s.namespace, name)
    model = (service.get("spec") or {}).get("model") or {}
    if model.get("version") == args.to_version and not model.get("fromTrainingJob"):
        print(f"modelservice.modelops.dev/{name} is already pinned to version {args.to_version}")
        return 0
    signature, source = signature_for(s.kube, service, args.to_version)
    if signature is None:
        raise CommandError(f"no signature known for {model.get('name')} version {args.to_version}: pin it with "
                           "kubectl patch, giving spec.model.signature (inputs and outputs)")
    patch = {"spec": {"model": {"version": args.to_version, "fromTrainingJob": None, "signature": signature}}}
    s.kube.patch(API_VERSION, "ModelService", s.namespace, name, patch)
    was = f"following TrainingJob {model['fromTrainingJob']}" if model.get("fromTrainingJob") else \
        f"version {model.get('version')}"
    print(f"modelservice.modelops.dev/{name} pinned to version {args.to_version} (was {was}); signature from {source}")
    return 0


# ---- logs ------------------------------------------------------------------------------------------


def worker_pod(kube: Kube, namespace: str, job: str, rank: int) -> tuple[str, int]:
    """(pod name, attempt) of the worker of `rank` in the job's current (newest) attempt."""
    from modelops.resources.trainingjob.names import LABEL_ATTEMPT, LABEL_JOB, LABEL_RANK, job_label

    pods = kube.list_objects("v1", "Pod", namespace, labels=f"{LABEL_JOB}={job_label(job)}")[0]

    def number(pod: dict[str, Any], label: str) -> int:
        value = str((pod["metadata"].get("labels") or {}).get(label, ""))
        return int(value) if value.isdigit() else -1

    if not pods:
        raise CommandError(f"trainingjob {job} has no worker pods (not started, suspended, or cleaned up)")
    attempt = max(number(p, LABEL_ATTEMPT) for p in pods)
    ranks = {number(p, LABEL_RANK): p["metadata"]["name"] for p in pods if number(p, LABEL_ATTEMPT) == attempt}
    if rank not in ranks:
        raise CommandError(f"trainingjob {job} attempt {attempt} has no worker of rank {rank} "
                           f"(ranks: {', '.join(map(str, sorted(ranks)))})")
    return ranks[rank], attempt


def logs_command(args: argparse.Namespace) -> int:
    from modelops.kube import ApiError
    from modelops.resources.trainingjob.names import TRAINER_CONTAINER

    name = target(args.target, "TrainingJob")
    s = session(args)
    fetch(s.kube, "TrainingJob", s.namespace, name)
    pod, attempt = worker_pod(s.kube, s.namespace, name, args.rank)
    out = sys.stdout.buffer
    try:
        for chunk in s.kube.pod_log(s.namespace, pod, container=TRAINER_CONTAINER, follow=args.follow):
            out.write(chunk)
            out.flush()
    except ApiError as error:
        raise CommandError(f"cannot read the log of pod {s.namespace}/{pod} (attempt {attempt}, rank {args.rank}, "
                           f"container {TRAINER_CONTAINER}): {error.message}") from None
    return 0
