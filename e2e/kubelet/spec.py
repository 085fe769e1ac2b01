"""From a pod object to what a kubelet would run: environment, volumes on disk, bind mounts, /etc/hosts."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

CLUSTER_DOMAIN = "cluster.local"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


class SetupError(Exception):
    """The pod cannot start as specified (what a kubelet reports as an Event and keeps retrying)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class Api(Protocol):
    """The reads a kubelet makes on a pod's behalf (None: not found)."""

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def service_account_token(self, pod: dict[str, Any], audience: str | None, expiration: int) -> str: ...

    def claim_host_path(self, namespace: str, claim: str) -> str | None: ...


# ---- environment -------------------------------------------------------------

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, others left as written; $$ is a $."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REF.sub(replace, text)


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef (metadata.name, metadata.labels['x'], status.podIP, spec.nodeName, ...)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
    }
    if path not in simple:
        raise SetupError("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


def _key_ref(api: Api, namespace: str, ref: dict[str, Any], kind: str) -> str | None:
    obj = api.config_map(namespace, ref["name"]) if kind == "configmap" else api.secret(namespace, ref["name"])
    data = _data(obj, kind) if obj is not None else None
    if data is None or ref["key"] not in data:
        if ref.get("optional"):
            return None
        what = f"{kind} {ref['name']!r}" if data is None else f"key {ref['key']!r} in {kind} {ref['name']!r}"
        raise SetupError("CreateContainerConfigError", f"{what} not found")
    return data[ref["key"]].decode(errors="replace")


def _data(obj: dict[str, Any] | None, kind: str) -> dict[str, bytes]:
    """A ConfigMap's or Secret's data as bytes."""
    if obj is None:
        return {}
    if kind == "secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    return data | {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}


def container_env(pod: dict[str, Any], container: dict[str, Any], api: Api, base: Mapping[str, str]) -> dict[str, str]:
    """`base` (what the kubelet adds), then envFrom, then env, in order; values expand earlier variables."""
    namespace = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        kind, ref = ("configmap", source["configMapRef"]) if "configMapRef" in source else ("secret", source["secretRef"])
        obj = api.config_map(namespace, ref["name"]) if kind == "configmap" else api.secret(namespace, ref["name"])
        if obj is None and not ref.get("optional"):
            raise SetupError("CreateContainerConfigError", f"{kind} {ref['name']!r} not found")
        for key, value in _data(obj, kind).items():
            env[source.get("prefix", "") + key] = value.decode(errors="replace")
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        if "fieldRef" in source:
            value: str | None = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            value = _key_ref(api, namespace, source["configMapKeyRef"], "configmap")
        elif "secretKeyRef" in source:
            value = _key_ref(api, namespace, source["secretKeyRef"], "secret")
        elif "resourceFieldRef" in source:  # the raw quantity; divisors are not applied
            ref = source["resourceFieldRef"]
            kind, _, name = ref["resource"].partition(".")
            value = str((container.get("resources", {}).get(kind) or {}).get(name, "0"))
        else:
            raise SetupError("CreateContainerConfigError", f"unsupported valueFrom for {var['name']}")
        if value is not None:
            env[var["name"]] = value
    return env


# ---- volumes -----------------------------------------------------------------


def _write_files(root: Path, files: Iterable[tuple[str, bytes]], mode: int | None) -> None:
    for rel, content in files:
        path = root / _relative(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode if mode is not None else 0o644)


def _relative(rel: str) -> Path:
    """A path inside a volume: relative, no `..` (a kubelet refuses those too)."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise SetupError("FailedMount", f"invalid path {rel!r} in a volume")
    return Path(*parts)


def _projected_files(pod: dict[str, Any], source: dict[str, Any], api: Api) -> list[tuple[str, bytes]]:
    """The files one volume source (configMap, secret, downwardAPI, serviceAccountToken) contributes."""
    namespace = pod["metadata"]["namespace"]
    for kind, key in (("configmap", "configMap"), ("secret", "secret")):
        if key in source:
            ref = source[key]
            name = ref.get("name") or ref.get("secretName", "")
            obj = api.config_map(namespace, name) if kind == "configmap" else api.secret(namespace, name)
            if obj is None:
                if ref.get("optional"):
                    return []
                raise SetupError("FailedMount", f'{kind} "{name}" not found')
            data = _data(obj, kind)
            items = ref.get("items")
            if items is None:
                return sorted(data.items())
            missing = [i["key"] for i in items if i["key"] not in data and not ref.get("optional")]
            if missing:
                raise SetupError("FailedMount", f"keys {missing} not found in {kind} {name!r}")
            return [(i["path"], data[i["key"]]) for i in items if i["key"] in data]
    if "downwardAPI" in source:
        items = source["downwardAPI"].get("items") or []
        if any("fieldRef" not in item for item in items):
            raise SetupError("FailedMount", "only fieldRef items are supported in downwardAPI volumes")
        return [(i["path"], field_value(pod, i["fieldRef"]["fieldPath"]).encode()) for i in items]
    if "serviceAccountToken" in source:
        token = source["serviceAccountToken"]
        value = api.service_account_token(pod, token.get("audience"), int(token.get("expirationSeconds", 3600)))
        return [(token["path"], value.encode())]
    raise SetupError("FailedMount", f"unsupported projected source {sorted(source)}")


def materialize_volumes(pod: dict[str, Any], pod_dir: Path, api: Api) -> dict[str, Path]:
    """Each volume as a host path: hostPath and PVC-bound hostPath/local PVs as they are; configMap, secret,
    projected, downwardAPI and emptyDir as directories under `pod_dir` (written once, at start)."""
    paths: dict[str, Path] = {}
    namespace = pod["metadata"]["namespace"]
    for volume in pod["spec"].get("volumes") or []:
        name, target = volume["name"], pod_dir / "volumes" / volume["name"]
        if "hostPath" in volume:
            paths[name] = _host_path(volume["hostPath"])
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            host = api.claim_host_path(namespace, claim)
            if host is None:
                raise SetupError("FailedMount", f"persistentVolumeClaim {claim!r} is not bound to a hostPath or local volume")
            paths[name] = Path(host)
        elif "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
            paths[name] = target
        elif any(k in volume for k in ("projected", "configMap", "secret", "downwardAPI")):
            settings = volume.get("projected") or volume.get("configMap") or volume.get("secret") \
                or volume.get("downwardAPI") or {}
            sources = (settings.get("sources") or []) if "projected" in volume else [volume]
            target.mkdir(parents=True, exist_ok=True)
            for source in sources:
                _write_files(target, _projected_files(pod, source, api), settings.get("defaultMode"))
            paths[name] = target
        else:
            raise SetupError("FailedMount", f"volume {name!r}: unsupported type {sorted(set(volume) - {'name'})}")
    return paths


def _host_path(source: dict[str, Any]) -> Path:
    path, kind = Path(source["path"]), source.get("type") or ""
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif kind == "Directory" and not path.is_dir() or kind == "File" and not path.is_file():
        raise SetupError("FailedMount", f"hostPath {path} is not a {kind.lower()}")
    elif kind == "" and not path.exists():
        raise SetupError("FailedMount", f"hostPath {path} does not exist")
    return path


@dataclass(frozen=True)
class Mount:
    """One bind mount inside a container's mount namespace."""

    source: Path
    target: str
    read_only: bool = False


def container_mounts(container: dict[str, Any], volumes: Mapping[str, Path], env: Mapping[str, str]) -> list[Mount]:
    """The container's volumeMounts as bind mounts, parents before children; a missing subPath inside a
    directory volume is created, as a kubelet does."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise SetupError("CreateContainerConfigError", f"volumeMount {vm['name']!r} names no volume")
        source = volumes[vm["name"]]
        sub = vm.get("subPath") or expand(vm.get("subPathExpr", ""), env)
        if sub:
            source = source / _relative(sub)
            if not source.exists():
                source.mkdir(parents=True)
        mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
    return sorted(mounts, key=lambda m: len(PurePosixPath(m.target).parts))


# ---- DNS ---------------------------------------------------------------------


@dataclass(frozen=True)
class DnsRecord:
    """`<name>.<namespace>.svc.<domain>` -> ip (services, and pods with hostname + subdomain)."""

    name: str
    namespace: str
    ip: str

    def names(self, from_namespace: str) -> list[str]:
        """The spellings a pod in `from_namespace` can use (what the resolv.conf search path allows)."""
        base = f"{self.name}.{self.namespace}"
        short = [self.name] if from_namespace == self.namespace else []
        return [*short, base, f"{base}.svc", f"{base}.svc.{CLUSTER_DOMAIN}"]


def dns_records(services: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]],
                pods: Iterable[dict[str, Any]]) -> list[DnsRecord]:
    """ClusterIP services -> their ClusterIP, headless ones -> ready endpoint IPs, and
    `<hostname>.<subdomain>` -> the pod IP where a headless Service named <subdomain> exists."""
    records, headless = [], set()
    by_service: dict[tuple[str, str], list[str]] = {}
    for s in slices:
        key = (s["metadata"]["namespace"], (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name", ""))
        for endpoint in s.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is not False:
                by_service.setdefault(key, []).extend(endpoint.get("addresses") or [])
    for svc in services:
        ns, name, cluster_ip = svc["metadata"]["namespace"], svc["metadata"]["name"], svc["spec"].get("clusterIP")
        if cluster_ip and cluster_ip != "None":
            records.append(DnsRecord(name, ns, cluster_ip))
        elif cluster_ip == "None":
            headless.add((ns, name))
            records += [DnsRecord(name, ns, address) for address in sorted(set(by_service.get((ns, name), [])))]
    for pod in pods:
        spec, ns, pod_ip = pod["spec"], pod["metadata"]["namespace"], pod.get("status", {}).get("podIP")
        if pod_ip and spec.get("hostname") and (ns, spec.get("subdomain")) in headless:
            records.append(DnsRecord(f"{spec['hostname']}.{spec['subdomain']}", ns, pod_ip))
    return records


def hosts_file(pod: dict[str, Any], records: Iterable[DnsRecord]) -> str:
    """The pod's /etc/hosts: localhost, its own name (as a kubelet writes it), then the cluster's names."""
    spec, ns = pod["spec"], pod["metadata"]["namespace"]
    hostname = pod_hostname(pod)
    own = [hostname]
    if spec.get("subdomain"):
        own.insert(0, f"{hostname}.{spec['subdomain']}.{ns}.svc.{CLUSTER_DOMAIN}")
    lines = ["# Kubernetes-managed hosts file (e2e kubelet stand-in; names of the cluster's Services and pods)",
             "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
             f"{pod['status']['podIP']}\t{' '.join(own)}"]
    lines += [f"{r.ip}\t{' '.join(r.names(ns))}" for r in records]
    return "\n".join(lines) + "\n"


def resolv_conf(pod: dict[str, Any]) -> str:
    """The pod's /etc/resolv.conf: a kubelet's search path, and no reachable name server (no cluster DNS runs
    here; names come from /etc/hosts), so lookups that miss it, reverse ones included, fail at once instead
    of waiting for the host's name server, which pods cannot reach."""
    ns = pod["metadata"]["namespace"]
    return (f"search {ns}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\noptions ndots:5 attempts:1 timeout:1\n")


def pod_hostname(pod: dict[str, Any]) -> str:
    return str(pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def termination_log_path(container: dict[str, Any]) -> str:
    return str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_LOG)


def is_file_source(path: Path) -> bool:
    return path.exists() and not path.is_dir()


def nested(target: str, others: Iterable[str]) -> bool:
    """Whether `target` lies inside another mount target (then its mount point is made inside that mount)."""
    parts = PurePosixPath(target).parts
    return any(parts[:len(PurePosixPath(o).parts)] == PurePosixPath(o).parts and o != target for o in others)


def readable(path: Path, limit: int) -> str:
    """The last `limit` bytes of a file ('' when missing)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
