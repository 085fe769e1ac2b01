"""A real local Kubernetes cluster (etcd, control plane, kwok nodes) started as plain processes."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The cluster's tools are built from Go modules pinned in a modelops checkout, beside this script (relative to
# the checkout); they do not ship with the package, so build_tools() is told where the checkout is.
BUILD_SCRIPT = Path("e2e") / "tools" / "build.sh"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")  # package data

SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.1/16"  # kwok hands out pod IPs from here
CLUSTER_CIDR = "10.244.0.0/16"  # the same range, as kube-proxy wants it
NODE_IP = "10.0.0.1"  # every kwok node's InternalIP; the kubelet stand-in's gateway on the host's `lo`
NODE_CIDR = "10.0.0.0/24"
GPU_RESOURCE = "nvidia.com/gpu"
# kwok manages exactly the nodes carrying this annotation.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"

# The network fence: the cluster's addresses are made up, so nothing sent to them may leave the machine by
# the default route. (range, route type, routing table) for each:
# - pods and nodes: `unreachable` in the main table, so connect() fails at once (EHOSTUNREACH). The kubelet
#   stand-in's /32 pod routes are more specific, and its gateway address on `lo` sits in the local table,
#   which is looked up first: both still win.
# - Services: `local` in the local table, NOT unreachable. kube-proxy DNATs the host's own connections to a
#   ClusterIP in `nat OUTPUT`, which runs after the socket's route lookup: an unreachable route would fail
#   connect() before the DNAT. A local route lets the DNAT happen, and a ClusterIP without a rule answers
#   from the host itself (a reset: ECONNREFUSED at once, unless a host process listens on that port on all
#   addresses).
FENCED_RANGES = ((CLUSTER_CIDR, "unreachable", "main"), (NODE_CIDR, "unreachable", "main"),
                 (SERVICE_CIDR, "local", "local"))
# The fence's routes carry this routing protocol number (`ip route ... proto 109`), which no routing daemon
# uses (see /etc/iproute2/rt_protos): `down` removes exactly these routes, never anyone else's.
FENCE_PROTO = "109"
# One file per cluster holding the fence (its root and the pid that started it); the routes stay while any
# holder's cluster (or starting process) is alive. Several clusters may run at once.
FENCE_HOLDERS = Path("/run/modelops/fenced-ranges")


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached."""


def build_tools(repo: Path, *, kueue: bool = False) -> Path:
    """Build (or find already built) the pinned binaries (with Kueue's manager and CRDs when asked) with the
    build script of the modelops checkout `repo`; return their directory. MODELOPS_BIN_DIR, when set, names
    binaries built before and is returned as it is (no checkout needed)."""
    override = os.environ.get("MODELOPS_BIN_DIR")
    if override:
        return Path(override)
    script = repo / BUILD_SCRIPT
    if not script.is_file():
        raise ClusterError(f"no {BUILD_SCRIPT} in {repo}: the cluster's tools are built from the Go modules pinned "
                           "in a modelops checkout; name the checkout (`modelops dev cluster up --repo DIR` or "
                           "MODELOPS_REPO) or a directory of tools built before (MODELOPS_BIN_DIR)")
    result = subprocess.run([str(script), *(["--kueue"] if kueue else [])], stdout=subprocess.PIPE, text=True,
                            check=False)
    if result.returncode != 0:
        raise ClusterError(f"building the cluster tools failed (exit {result.returncode}); see the output above")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node: CPU nodes take any pod, GPU nodes only pods that tolerate the GPU taint."""

    name: str
    gpus: int = 0
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"

    def manifest(self) -> dict[str, Any]:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "type": "kwok"}
        allocatable = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        taints = []
        if self.gpus:
            labels["nvidia.com/gpu.present"] = "true"
            allocatable[GPU_RESOURCE] = str(self.gpus)
            taints.append({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"})
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
            "spec": {"taints": taints},
            "status": {"allocatable": allocatable, "capacity": allocatable},
        }


KUEUE_API = "kueue.x-k8s.io/v1beta2"


def kueue_queues(gpus: int) -> list[dict[str, Any]]:
    """ResourceFlavor `gpu` (GPU nodes: their label, a toleration of their taint) and ClusterQueue `gpu`
    taking workloads from every namespace, with `gpus` nvidia.com/gpu and ample cpu and memory; a workload
    of a higher priority preempts lower ones in the same ClusterQueue."""
    return [
        {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": "gpu"},
         "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"},
                  "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]}},
        {"apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": "gpu"},
         "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU_RESOURCE], "flavors": [
                      {"name": "gpu", "resources": [{"name": "cpu", "nominalQuota": "1000"},
                                                    {"name": "memory", "nominalQuota": "4Ti"},
                                                    {"name": GPU_RESOURCE, "nominalQuota": str(gpus)}]}]}]}},
    ]


def default_nodes(cpu_nodes: int = 2, gpu_nodes: int = 2) -> list[NodeSpec]:
    return [NodeSpec(f"cpu-{i}") for i in range(cpu_nodes)] + [NodeSpec(f"gpu-{i}", gpus=8) for i in range(gpu_nodes)]


@dataclass
class LocalCluster:
    """One cluster living in `root` (certificates, etcd data, logs, pids, kubeconfig)."""

    root: Path
    bin_dir: Path
    nodes: list[NodeSpec] = field(default_factory=default_nodes)
    # kube-proxy (iptables mode) changes the host's NAT rules: one per machine, so off unless asked for.
    kube_proxy: bool = False
    # The API server writes an audit log (Metadata level, JSON) to logs/audit.log: who made which request.
    audit_log: bool = False
    # Kueue's manager (built with `build.sh --kueue`), its CRDs, a ResourceFlavor for the GPU nodes and a
    # ClusterQueue with an nvidia.com/gpu quota (default: every GPU of the nodes); see start_kueue().
    kueue: bool = False
    kueue_gpu_quota: int | None = None

    @property
    def audit_log_path(self) -> Path:
        return self.root / "logs" / "audit.log"

    @classmethod
    def existing(cls, root: Path) -> LocalCluster:
        """The cluster recorded in `root` (for status and down), using the binaries it was started with."""
        return cls(root, Path(cls(root, Path())._read_state().get("bin_dir", "")))

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    # ---- lifecycle -------------------------------------------------------

    def up(self, *, die_with_parent: bool = False, timeout: float = 90.0, kube_proxy: bool | None = None) -> float:
        """Fence the cluster's address ranges (see FENCED_RANGES), start every component and wait for Ready
        nodes; return the seconds it took.

        kube_proxy (default: the field of the same name) also starts kube-proxy, see start_kube_proxy()."""
        if self.running():
            raise ClusterError(f"a cluster is already running in {self.root}; run `down` first")
        started = time.monotonic()
        self.fence()
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        (self.root / "logs").mkdir(exist_ok=True)
        pki = self._ensure_pki()
        ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")}
        state = {"ports": ports, "pids": {}, "bin_dir": str(self.bin_dir)}
        self._write_kubeconfig(ports["apiserver"], pki)
        try:
            start = lambda name, args: self._spawn(state, name, args, die_with_parent)  # noqa: E731
            start("etcd", self._etcd_args(ports))
            start("kube-apiserver", self._apiserver_args(ports, pki))
            self._wait_apiserver(ports["apiserver"], pki, deadline=started + timeout)
            start("kube-controller-manager", self._controller_manager_args(ports, pki))
            start("kube-scheduler", self._scheduler_args(ports))
            start("kwok", self._kwok_args(ports))
            self._create_nodes()
            self.kubectl("wait", "--for=condition=Ready", "node", "--all", f"--timeout={int(timeout)}s")
            # Pods cannot be created before the namespace's default ServiceAccount exists.
            self._wait(lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
                       "the default ServiceAccount", started + timeout)
            if self.kube_proxy if kube_proxy is None else kube_proxy:
                self.start_kube_proxy(die_with_parent=die_with_parent, timeout=max(1.0, started + timeout - time.monotonic()))
            if self.kueue:
                self.start_kueue(die_with_parent=die_with_parent, timeout=max(1.0, started + timeout - time.monotonic()))
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    def down(self) -> list[str]:
        """Stop every process this cluster started (and nothing else), and lift the network fence unless
        another running cluster holds it; return the names of the stopped processes."""
        state = self._read_state()
        stopped = []
        for name, pid in reversed(list(state.get("pids", {}).items())):
            if self.owns_process(pid, state):
                _terminate(pid)
                stopped.append(name)
        if "kube-proxy" in state.get("pids", {}):
            _cleanup_kube_proxy_rules(Path(state["bin_dir"]), self.root / "logs")
        self.state_file.unlink(missing_ok=True)
        self._unfence()
        return stopped

    def start_kube_proxy(self, *, die_with_parent: bool = False, timeout: float = 30.0) -> None:
        """Start kube-proxy (iptables mode) on this running cluster and wait for its first rule sync.

        It writes the host's iptables NAT rules (KUBE-* chains), so Service ClusterIPs route to ready
        endpoints for traffic from the host and from pod network namespaces (see e2e/kubelet). One per
        machine: a second one would fight over the same chains. `down()` or stop_kube_proxy() stops it and
        removes its rules (`kube-proxy --cleanup`)."""
        state = self._read_state()
        if not state.get("pids"):
            raise ClusterError(f"no cluster is running in {self.root}")
        if self.owns_process(state["pids"].get("kube-proxy", -1), state):
            return
        missing = [tool for tool in ("iptables", "iptables-save", "iptables-restore") if not shutil.which(tool)]
        if missing:
            raise ClusterError(f"kube-proxy needs {', '.join(missing)}: install Debian's iptables (`make deps`)")
        ports = {"kube-proxy-healthz": free_port(), "kube-proxy-metrics": free_port()}
        state["ports"].update(ports)
        config = self.root / "kube-proxy.yaml"
        config.write_text(json.dumps(self._kube_proxy_config(ports), indent=2))
        self._spawn(state, "kube-proxy", [f"--config={config}"], die_with_parent)
        deadline = time.monotonic() + timeout

        def synced() -> bool:
            # /healthz says 200 before the first sync; this metric is set by a completed one
            url = f"http://127.0.0.1:{ports['kube-proxy-metrics']}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    metrics = response.read().decode()
            except OSError:
                return False
            done = 'kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} '
            return any(line.startswith(done) and float(line.split()[-1]) > 0 for line in metrics.splitlines())

        try:
            self._wait(synced, "kube-proxy's first iptables sync", deadline)
        except BaseException:
            self.stop_kube_proxy()
            raise

    def start_kueue(self, *, die_with_parent: bool = False, timeout: float = 60.0) -> None:
        """Install Kueue's CRDs, start its manager against this cluster and create the queues: ResourceFlavor
        `gpu` (the GPU nodes' label and taint), ClusterQueue `gpu` (every namespace; quotas for cpu, memory and
        nvidia.com/gpu, lower priorities preempted) and LocalQueue `training` in `default` (more with
        local_queue()).

        Without its webhooks: no Mutating/ValidatingWebhookConfiguration is registered, so the API server never
        calls Kueue. They default and validate Kueue's own objects and gate the Jobs and Pods of Kueue's built-in
        integrations; modelops writes its Workloads complete (podSet names, priority resolved from the
        PriorityClass, queue name) and holds its own pods until admission, so nothing here needs them, and
        registering them would take a CA bundle and the API server calling a host process over TLS. Kueue still
        serves its webhook port (it cannot start without), with a self-signed certificate nobody asks for.
        Kueue also insists on metrics certificates at /etc/kueue/metrics/certs: the manager runs in a mount
        namespace of its own where /etc is an overlay holding them, so the host's /etc is never written."""
        state = self._read_state()
        if not state.get("pids"):
            raise ClusterError(f"no cluster is running in {self.root}")
        if self.owns_process(state["pids"].get("kueue", -1), state):
            return  # already running (its queues too)
        crds, binary = self.bin_dir / "kueue-crds", self.bin_dir / "kueue"
        if not binary.exists() or not crds.is_dir():
            raise ClusterError(f"Kueue is not built in {self.bin_dir}: run e2e/tools/build.sh --kueue")
        deadline = time.monotonic() + timeout
        self.kubectl("apply", "--server-side", "-f", os.path.realpath(crds))  # kubectl reads no linked folder
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", f"--timeout={int(timeout)}s")
        home = self.root / "kueue"
        certs, upper = home / "certs", home / "etc" / "kueue" / "metrics" / "certs"
        for folder in (certs, upper, home / "etc-work"):
            folder.mkdir(parents=True, exist_ok=True)
        if not (certs / "tls.crt").exists():
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key",
                            "-out", "tls.crt", "-days", "3650", "-subj", "/CN=kueue", "-addext",
                            "subjectAltName=IP:127.0.0.1"], cwd=certs, check=True, capture_output=True)
        for name in ("tls.crt", "tls.key"):
            shutil.copyfile(certs / name, upper / name)
        ports = {"kueue-health": free_port(), "kueue-metrics": free_port(), "kueue-webhook": free_port(),
                 "kueue-visibility": free_port()}
        state["ports"].update(ports)
        config = home / "config.yaml"
        config.write_text(json.dumps({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": "kube-system",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{ports['kueue-health']}"},
            "metrics": {"bindAddress": f"127.0.0.1:{ports['kueue-metrics']}"},
            "webhook": {"host": "127.0.0.1", "port": ports["kueue-webhook"], "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            # the one integration it must run; modelops manages its own Workloads, not through Kueue's jobs
            "integrations": {"frameworks": ["batch/job"]},
        }, indent=2))
        overlay = f"lowerdir=/etc,upperdir={home / 'etc'},workdir={home / 'etc-work'}"
        self._spawn(state, "kueue", [f"--config={config}", f"--kubeconfig={self.kubeconfig}",
                                     f"--visibility-server-port={ports['kueue-visibility']}",
                                     "--feature-gates=VisibilityOnDemand=false"], die_with_parent,
                    wrapper=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f'mount -t overlay overlay -o "{overlay}" /etc && exec "$0" "$@"'])
        # the wrapper execs the manager at once: from then on the pid is this cluster's kueue
        pid = state["pids"]["kueue"]
        until = time.monotonic() + 10
        while not self.owns_process(pid, state) and _alive(pid) and time.monotonic() < until:
            time.sleep(0.05)

        def ready() -> bool:
            try:
                url = f"http://127.0.0.1:{ports['kueue-health']}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        self._wait(ready, "Kueue's manager /readyz", deadline)
        gpus = self.kueue_gpu_quota if self.kueue_gpu_quota is not None else sum(n.gpus for n in self.nodes)
        self.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in kueue_queues(gpus)))
        self.local_queue("default")

    def local_queue(self, namespace: str, name: str = "training", cluster_queue: str = "gpu") -> None:
        """A Kueue LocalQueue in `namespace` feeding the ClusterQueue (what a team's namespace gets)."""
        self.kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": KUEUE_API, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue}}))

    def stop_kube_proxy(self) -> bool:
        """Stop kube-proxy and remove its iptables rules; False when it was not running."""
        state = self._read_state()
        pid = state.get("pids", {}).pop("kube-proxy", None)
        if pid is None:
            return False
        if self.owns_process(pid, state):
            _terminate(pid)
        self.state_file.write_text(json.dumps(state, indent=2))
        _cleanup_kube_proxy_rules(Path(state["bin_dir"]), self.root / "logs")
        return True

    def running(self) -> bool:
        state = self._read_state()
        return any(self.owns_process(pid, state) for pid in state.get("pids", {}).values())

    def status(self) -> dict[str, object]:
        state = self._read_state()
        components = {name: ("running" if self.owns_process(pid, state) else "stopped")
                      for name, pid in state.get("pids", {}).items()}
        return {"root": str(self.root), "kubeconfig": str(self.kubeconfig), "components": components,
                "ports": state.get("ports", {}), "fence": fence_status()}

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                                input=stdin, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # ---- network fence -----------------------------------------------------

    def fence(self) -> None:
        """Add the fence's routes where missing and register this cluster as a holder (idempotent; up() calls
        it). Raise ClusterError while a range would still leave the machine: no root, someone else's route in
        the way, or the host's own network inside a range."""
        problems = []
        try:
            with _fence_holders() as holders:
                if conflicts := _host_networks_in_fence():
                    raise ClusterError(f"the host's own network lies in the cluster's ranges ({', '.join(conflicts)}); "
                                       "fencing those off would cut this machine off that network")
                for route in (_fence_route(*fenced) for fenced in FENCED_RANGES):
                    added = _ip("route", "add", *route)
                    if added.returncode and "File exists" not in added.stderr:
                        problems.append(f"`ip route add {' '.join(route)}`: {added.stderr.strip()}")
                if not _open_ranges():
                    (holders / _holder_name(self.root)).write_text(f"{self.root.resolve()}\n{os.getpid()}\n")
                    return
        except OSError as error:  # not root: /run/modelops is not ours to write
            problems.append(str(error))
        if unfenced := _open_ranges():
            raise ClusterError(
                f"traffic to the cluster's made-up addresses would leave this machine ({', '.join(unfenced)}); "
                "fencing them off needs root (CAP_NET_ADMIN): " + ("; ".join(problems) or "a route is in the way"))

    def _unfence(self) -> None:
        """Unregister this cluster; with no other live holder left, delete the fence's routes (ours only)."""
        try:
            with _fence_holders() as holders:
                (holders / _holder_name(self.root)).unlink(missing_ok=True)
                for holder in holders.glob("*"):
                    if _holder_alive(holder):
                        return
                    holder.unlink(missing_ok=True)
                for cidr, kind, table in FENCED_RANGES:
                    _ip("route", "del", *_fence_route(cidr, kind, table))
        except (OSError, ClusterError):
            pass  # not root, or no iproute2: then up() added nothing either

    # ---- processes ---------------------------------------------------------

    def _spawn(self, state: dict[str, Any], name: str, args: list[str], die_with_parent: bool, *,
               wrapper: list[str] | None = None) -> None:
        """Start bin_dir/name; a `wrapper` command execs it (as "$0" "$@") after preparing its namespace."""
        log = open(self.root / "logs" / f"{name}.log", "ab")
        process = subprocess.Popen([*(wrapper or []), str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent if die_with_parent else None)
        log.close()
        state["pids"][name] = process.pid
        self.state_file.write_text(json.dumps(state, indent=2))

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
            return state
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    @staticmethod
    def owns_process(pid: int, state: dict[str, Any]) -> bool:
        """A pid counts only while it still runs one of this cluster's binaries (pids get reused): one in its
        bin_dir, or one linked there from a tool group of its own (kueue)."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return False
        bin_dir = state.get("bin_dir", "\0")
        if exe.startswith(bin_dir):
            return True
        linked = Path(bin_dir) / Path(exe).name
        return linked.is_symlink() and os.path.realpath(linked) == exe

    def _wait(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}; logs are in {self.root / 'logs'}")
            self._check_alive()
            time.sleep(0.2)

    def _check_alive(self) -> None:
        state = self._read_state()
        for name, pid in state.get("pids", {}).items():
            if not self.owns_process(pid, state):
                tail = (self.root / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise ClusterError(f"{name} exited during start-up:\n" + "\n".join(tail))

    def _wait_apiserver(self, port: int, pki: dict[str, Path], deadline: float) -> None:
        context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        context.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context, timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        self._wait(ready, "kube-apiserver /readyz", deadline)

    def _create_nodes(self) -> None:
        manifests = "\n---\n".join(json.dumps(node.manifest()) for node in self.nodes)
        self.kubectl("create", "-f", "-", stdin=manifests)

    # ---- configuration -----------------------------------------------------

    def _ensure_pki(self) -> dict[str, Path]:
        """CA, API server serving certificate, admin client certificate, service-account key pair."""
        pki = self.root / "pki"
        files = {n: pki / n for n in ("ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt",
                                      "admin.key", "sa.key", "sa.pub")}
        if all(p.exists() for p in files.values()):
            return files
        pki.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "3650", "-subj", "/CN=modelops-local-ca")
        sans = "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default," \
               "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
        for name, subject, extensions in (
            ("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
            ("admin", "/O=system:masters/CN=kubernetes-admin", "extendedKeyUsage=clientAuth"),
        ):
            (pki / f"{name}.ext").write_text(extensions + "\n")
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                    "-subj", subject)
            openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                    "-out", f"{name}.crt", "-days", "3650", "-extfile", f"{name}.ext")
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        return files

    def _write_kubeconfig(self, port: int, pki: dict[str, Path]) -> None:
        import base64

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "modelops-local", "cluster": {
                "server": f"https://127.0.0.1:{port}", "certificate-authority-data": b64(pki["ca.crt"])}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64(pki["admin.crt"]), "client-key-data": b64(pki["admin.key"])}}],
            "contexts": [{"name": "modelops-local", "context": {"cluster": "modelops-local", "user": "admin"}}],
            "current-context": "modelops-local",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
        self.kubeconfig.chmod(0o600)

    def _etcd_args(self, ports: dict[str, int]) -> list[str]:
        client, peer = f"http://127.0.0.1:{ports['etcd']}", f"http://127.0.0.1:{ports['etcd-peer']}"
        return [f"--data-dir={self.root / 'etcd'}", f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}", f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296"]

    def _apiserver_args(self, ports: dict[str, int], pki: dict[str, Path]) -> list[str]:
        return [
            f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki['apiserver.crt']}", f"--tls-private-key-file={pki['apiserver.key']}",
            f"--client-ca-file={pki['ca.crt']}",
            f"--service-account-key-file={pki['sa.pub']}", f"--service-account-signing-key-file={pki['sa.key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            # The Endpoints reconciler refuses loopback addresses; nothing here needs the `kubernetes` endpoints.
            "--endpoint-reconciler-type=none",
            *self._audit_args(),
        ]

    def _audit_args(self) -> list[str]:
        if not self.audit_log:
            return []
        policy = self.root / "audit-policy.yaml"
        policy.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                                      "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]}))
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json", "--audit-log-maxsize=0"]

    def _component_auth(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1"]

    def _controller_manager_args(self, ports: dict[str, int], pki: dict[str, Path]) -> list[str]:
        return [*self._component_auth(), f"--secure-port={ports['controller-manager']}",
                f"--service-account-private-key-file={pki['sa.key']}", f"--root-ca-file={pki['ca.crt']}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki['ca.crt']}", f"--cluster-signing-key-file={pki['ca.key']}"]

    def _scheduler_args(self, ports: dict[str, int]) -> list[str]:
        return [*self._component_auth(), f"--secure-port={ports['scheduler']}"]

    def _kube_proxy_config(self, ports: dict[str, int]) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "mode": "iptables", "clusterCIDR": CLUSTER_CIDR,
            # kube-proxy reads its Node (addresses); the host plays every kwok node, any one will do.
            "hostnameOverride": self.nodes[0].name,
            "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
            "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
            # 0 = leave the host's conntrack sysctls as they are
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            # tests change Services and endpoints all the time: sync at once instead of at most once a second
            "iptables": {"minSyncPeriod": "0s", "syncPeriod": "30s",
                         # no route_localnet sysctl and no KUBE-FIREWALL chain on the host: nothing needs
                         # NodePorts on 127.0.0.1
                         "localhostNodePorts": False},
        }

    def _kwok_args(self, ports: dict[str, int]) -> list[str]:
        return [f"--kubeconfig={self.kubeconfig}", f"--config={STAGES_FILE}",
                "--manage-all-nodes=false", f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--cidr={POD_CIDR}", f"--node-ip={NODE_IP}", "--node-lease-duration-seconds=40",
                f"--server-address=127.0.0.1:{ports['kwok']}"]


def fence_status() -> dict[str, str]:
    """How each fenced range is routed now, probed at its second-last address: 'unreachable' (no route off
    the machine), 'local' (answered by the host) or 'open via <dev>' (it would leave by that route)."""
    status = {}
    for cidr, _, _ in FENCED_RANGES:
        probe = str(ipaddress.ip_network(cidr).broadcast_address - 1)
        result = _ip("-j", "route", "get", probe)
        if result.returncode:
            status[cidr] = "unreachable"  # e.g. "No route to host": the kernel refuses to route it at all
        else:
            route = json.loads(result.stdout)[0]
            status[cidr] = "local" if route.get("type") == "local" else f"open via {route.get('dev', '?')}"
    return status


def _open_ranges() -> list[str]:
    return [f"{cidr} {how}" for cidr, how in fence_status().items() if how.startswith("open")]


def _fence_route(cidr: str, kind: str, table: str) -> list[str]:
    return [kind, cidr, *(["dev", "lo"] if kind == "local" else []), "table", table, "proto", FENCE_PROTO]


def _host_networks_in_fence() -> list[str]:
    """The host's addresses (on anything but `lo`) and gateways that lie inside a fenced range."""
    ranges = [ipaddress.ip_network(cidr) for cidr, _, _ in FENCED_RANGES]

    def inside(address: str) -> bool:
        return any(ipaddress.ip_address(address) in net for net in ranges)

    found = []
    for link in json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]"):
        found += [f"{a['local']} on {link['ifname']}" for a in link.get("addr_info", [])
                  if link["ifname"] != "lo" and inside(a["local"])]
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all").stdout or "[]"):
        if "gateway" in route and inside(route["gateway"]):
            found.append(f"gateway {route['gateway']} of {route.get('dst')}")
    return found


@contextmanager
def _fence_holders() -> Iterator[Path]:
    """The holders' directory, locked against other clusters starting or stopping at the same time."""
    FENCE_HOLDERS.mkdir(parents=True, exist_ok=True)
    with open(FENCE_HOLDERS.parent / "fenced-ranges.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield FENCE_HOLDERS


def _holder_name(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def _holder_alive(holder: Path) -> bool:
    """Its cluster runs, or the process that started it still lives (it may be starting right now)."""
    try:
        root, pid = holder.read_text().splitlines()
    except (OSError, ValueError):
        return False
    return LocalCluster.existing(Path(root)).running() or _alive(int(pid))


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ClusterError("`ip` is missing: install Debian's iproute2 (`make deps`)") from None


def _terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reap it when it is our child."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # started by another process (e.g. `make cluster-up`); init reaps it


def _cleanup_kube_proxy_rules(bin_dir: Path, log_dir: Path) -> None:
    """Remove the KUBE-* chains and rules a stopped kube-proxy leaves behind: `kube-proxy --cleanup`, then
    the chains it keeps for a kubelet (KUBE-MARK-MASQ, KUBE-PROXY-CANARY); no kubelet runs here."""
    binary = bin_dir / "kube-proxy"
    if binary.exists():
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "kube-proxy-cleanup.log", "ab") as log:
            subprocess.run([str(binary), "--cleanup"], stdout=log, stderr=subprocess.STDOUT, check=False, timeout=60)
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool):
            for table in ("filter", "nat", "mangle"):
                _remove_kube_chains(tool, table)


def _remove_kube_chains(tool: str, table: str) -> None:
    saved = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True, check=False).stdout
    chains = [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":KUBE-")]
    for line in saved.splitlines():  # jumps from the built-in chains first, then the chains themselves
        rule = shlex.split(line)
        if rule[:1] == ["-A"] and not rule[1].startswith("KUBE-") and "-j" in rule \
                and rule[rule.index("-j") + 1].startswith("KUBE-"):
            subprocess.run([tool, "-t", table, "-D", *rule[1:]], capture_output=True, check=False)
    for flag in ("-F", "-X"):
        for chain in chains:
            subprocess.run([tool, "-t", table, flag, chain], capture_output=True, check=False)


def _alive(pid: int) -> bool:
    try:
        # A zombie (exited, not yet reaped by its parent) counts as gone.
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _die_with_parent() -> None:
    """Runs in the child: ask the kernel to SIGKILL it when the starting process dies (PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
