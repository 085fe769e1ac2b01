"""One pod as local processes: its network namespace, a process group per container in a private mount and
UTS namespace with the pod's bind mounts, and its probes."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .network import PodNetwork, ip
from .spec import (Api, Mount, SetupError, container_env, container_mounts, expand, is_file_source,
                   materialize_volumes, nested, pod_hostname, readable, resolv_conf, termination_log_path)

log = logging.getLogger(__name__)

NETNS_PREFIX = "mo-"
MESSAGE_LIMIT = 4096
# absolute paths: the container's PATH is the pod's business
TOOLS = {name: shutil.which(name) or f"/usr/bin/{name}" for name in ("ip", "sh", "unshare", "nsenter", "mount", "hostname")}


class MountPoints:
    """Mount points made on the host where a mountPath does not exist there (empty directories or files:
    the mount namespace is private, the filesystem is not); remove() deletes them again, when empty."""

    def __init__(self) -> None:
        self.created: list[Path] = []

    def ensure(self, target: Path, file: bool) -> None:
        missing = []
        path = target
        while not path.exists():
            missing.append(path)
            path = path.parent
        for index, path in enumerate(reversed(missing)):
            if file and index == len(missing) - 1:
                path.touch()
            else:
                path.mkdir()
            self.created.append(path)
        if target.is_dir() == file:
            raise SetupError("CreateContainerError", f"mount point {target} exists but is not a {'file' if file else 'directory'}")

    def remove(self) -> None:
        for path in reversed(self.created):
            try:
                if path.is_dir():
                    path.rmdir()
                elif path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                pass  # not empty any more (something else uses it): keep it
        self.created.clear()


class Container:
    """A container's process: `ip netns exec <pod netns> unshare -m -u sh <mount script> <argv>`, in its own
    process group (the script execs the command, so the group leader's exit status is the container's)."""

    def __init__(self, spec: dict[str, Any], pod_dir: Path) -> None:
        self.spec, self.name = spec, spec["name"]
        self.log_path = pod_dir / f"{self.name}.log"
        self.termination_log = pod_dir / f"{self.name}.termination-log"
        self.script = pod_dir / f"{self.name}.sh"
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.mounts: list[Mount] = []
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, netns: str, on_exit: Callable[[Container], None]) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [TOOLS["ip"], "netns", "exec", netns, TOOLS["unshare"], "--mount", "--uts", "--propagation", "private",
                 "--", TOOLS["sh"], str(self.script), *self.argv],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
                start_new_session=True)
        log.info("container %s started: pid %d, log %s", self.name, self.process.pid, self.log_path)
        threading.Thread(target=self._wait, args=(on_exit,), name=f"wait-{self.name}", daemon=True).start()

    def _wait(self, on_exit: Callable[[Container], None]) -> None:
        assert self.process is not None
        self.process.wait()
        on_exit(self)

    @property
    def exit_code(self) -> int | None:
        """The container's exit code once it ended; 128 + n when killed by signal n, as a runtime reports it."""
        code = self.process.poll() if self.process else None
        return None if code is None else (128 - code if code < 0 else code)

    def termination_message(self) -> str:
        message = readable(self.termination_log, MESSAGE_LIMIT)
        if not message.strip() and self.exit_code and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = readable(self.log_path, 2048)
        return message[-MESSAGE_LIMIT:]

    def signal_group(self, sig: int) -> bool:
        """Signal the container's process group; False when no process of it is left."""
        if self.process is None:
            return False
        try:
            os.killpg(self.process.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def write_script(self, hostname: str, pod_dir: Path, host_points: MountPoints) -> None:
        """The mount script run inside the new namespaces; mount points missing on the host are made first."""
        q = shlex.quote
        term_target = termination_log_path(self.spec)
        mounts = [Mount(pod_dir / "hosts", "/etc/hosts"), Mount(pod_dir / "resolv.conf", "/etc/resolv.conf"),
                  *self.mounts, Mount(self.termination_log, term_target)]
        targets = [m.target for m in self.mounts]
        lines = ["set -e", f"{TOOLS['hostname']} {q(hostname)}"]
        for mount in mounts:
            file = is_file_source(mount.source)
            if nested(mount.target, targets):  # inside another volume: made inside that volume, in the namespace
                lines.append(f"[ -e {q(mount.target)} ] || " + (f": > {q(mount.target)}" if file else f"mkdir -p {q(mount.target)}"))
            else:
                host_points.ensure(Path(mount.target), file)
            lines.append(f"{TOOLS['mount']} --bind {q(str(mount.source))} {q(mount.target)}")
            if mount.read_only:
                lines.append(f"{TOOLS['mount']} -o remount,bind,ro {q(mount.target)}")
        workdir = self.spec.get("workingDir") or "/"
        lines += [f"mkdir -p {q(workdir)}", f"cd {q(workdir)}", 'exec "$@"']
        self.script.write_text("\n".join(lines) + "\n")


class Prober(threading.Thread):
    """Runs one readiness or liveness probe (httpGet, tcpSocket, exec) with its period and thresholds;
    calls on_change(ready) when the result flips (it starts as not ready)."""

    def __init__(self, kind: str, probe: dict[str, Any], container: Container, pod_ip: str,
                 on_change: Callable[[bool], None]) -> None:
        super().__init__(name=f"{kind}-{container.name}", daemon=True)
        self.kind, self.probe, self.container, self.pod_ip, self.on_change = kind, probe, container, pod_ip, on_change
        self.ports = {p["name"]: p["containerPort"] for p in container.spec.get("ports") or [] if p.get("name")}
        self.stopped = threading.Event()
        self.ok = False

    def run(self) -> None:
        if self.stopped.wait(self.probe.get("initialDelaySeconds", 0)):
            return
        successes = failures = 0
        while not self.stopped.is_set():
            if self.check():
                successes, failures = successes + 1, 0
            else:
                successes, failures = 0, failures + 1
            if not self.ok and successes >= self.probe.get("successThreshold", 1):
                self.ok = True
                self.on_change(True)
            elif failures and (self.ok or self.kind == "liveness") and failures >= self.probe.get("failureThreshold", 3):
                self.ok = False
                self.on_change(False)
                failures = 0
            self.stopped.wait(self.probe.get("periodSeconds", 10))

    def check(self) -> bool:
        timeout = float(self.probe.get("timeoutSeconds", 1))
        if "httpGet" in self.probe:
            get = self.probe["httpGet"]
            scheme, host = get.get("scheme", "HTTP").lower(), get.get("host") or self.pod_ip
            url = f"{scheme}://{host}:{self._port(get['port'])}{get.get('path', '/')}"
            request = urllib.request.Request(url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return 200 <= response.status < 400
            except (urllib.error.URLError, OSError, ValueError):
                return False
        if "tcpSocket" in self.probe:
            target = (self.probe["tcpSocket"].get("host") or self.pod_ip, self._port(self.probe["tcpSocket"]["port"]))
            try:
                socket.create_connection(target, timeout=timeout).close()
                return True
            except OSError:
                return False
        if "exec" in self.probe and self.container.process is not None:
            command = [TOOLS["nsenter"], "-t", str(self.container.process.pid), "-m", "-n", "-u", "--",
                       *self.probe["exec"]["command"]]
            try:
                return subprocess.run(command, env=self.container.env, capture_output=True, timeout=timeout,
                                      check=False).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        return False

    def _port(self, port: int | str) -> int:
        return int(self.ports.get(port, port))  # type: ignore[arg-type]


class PodRuntime:
    """A pod's sandbox and containers; the first container is the main one, its exit ends the pod."""

    def __init__(self, pod: dict[str, Any], work_dir: Path, gateway_ip: str) -> None:
        meta = pod["metadata"]
        self.pod, self.uid = pod, meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = work_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        short = self.uid.replace("-", "")[:11]
        self.network = PodNetwork(f"{NETNS_PREFIX}{short}", f"mo{short}", pod["status"]["podIP"], gateway_ip)
        self.hosts = self.dir / "hosts"
        self.containers = [Container(c, self.dir) for c in pod["spec"]["containers"]]
        self.probers: list[Prober] = []
        self.ready: dict[str, bool] = {}
        self.reported_ready: bool | None = None
        self.exit_reported = False

    @property
    def main(self) -> Container:
        return self.containers[0]

    def prepare(self, api: Api, base_env: Mapping[str, str], hosts: str) -> None:
        """Resolve everything that can fail (env, volumes, commands) before touching the host."""
        if self.pod["spec"].get("initContainers"):
            raise SetupError("CreateContainerConfigError", "initContainers are not supported by the e2e kubelet stand-in")
        self.dir.mkdir(parents=True, exist_ok=True)
        volumes = materialize_volumes(self.pod, self.dir, api)
        for container in self.containers:
            env = container_env(self.pod, container.spec, api, {**base_env, "HOSTNAME": pod_hostname(self.pod)})
            container.argv = [expand(a, env) for a in (container.spec.get("command") or []) + (container.spec.get("args") or [])]
            if not container.argv:
                raise SetupError("CreateContainerConfigError",
                                 f"container {container.name} has no command: images are not run, all containers run from the repo's venv")
            container.env, container.mounts = env, container_mounts(container.spec, volumes, env)
            container.termination_log.write_bytes(b"")
        (self.dir / "resolv.conf").write_text(resolv_conf(self.pod))
        self.write_hosts(hosts)

    def start(self, host_points: MountPoints, on_exit: Callable[[PodRuntime, Container], None],
              on_ready: Callable[[PodRuntime], None]) -> None:
        self.network.create()
        try:
            for container in self.containers:
                container.write_script(pod_hostname(self.pod), self.dir, host_points)
            for container in self.containers:
                container.start(self.network.netns, lambda c: on_exit(self, c))
                for kind in ("readiness", "liveness"):
                    probe = container.spec.get(f"{kind}Probe")
                    if probe:
                        callback = self._readiness(container, on_ready) if kind == "readiness" else self._liveness(container)
                        self.probers.append(Prober(kind, probe, container, self.network.pod_ip, callback))
                if container.spec.get("readinessProbe"):
                    self.ready[container.name] = False
            for prober in self.probers:
                prober.start()
        except BaseException:
            self.stop(0)
            raise

    def _readiness(self, container: Container, on_ready: Callable[[PodRuntime], None]) -> Callable[[bool], None]:
        def changed(ok: bool) -> None:
            self.ready[container.name] = ok
            on_ready(self)
        return changed

    def _liveness(self, container: Container) -> Callable[[bool], None]:
        def changed(ok: bool) -> None:
            if not ok:  # a kubelet would restart the container; here it is only logged
                log.warning("%s: liveness probe of container %s failed", self.key, container.name)
        return changed

    @property
    def pod_ready(self) -> bool:
        return all(self.ready.values())

    def write_hosts(self, content: str) -> None:
        """Rewrite /etc/hosts in place (same inode): the containers see it through their bind mounts."""
        if not self.hosts.exists() or self.hosts.read_text() != content:
            with open(self.hosts, "w") as f:
                f.write(content)

    def stop(self, grace: float) -> None:
        """SIGTERM every container's process group, SIGKILL what is left after `grace` seconds, then end any
        process still in the pod's network namespace and remove the namespace and its veth."""
        for prober in self.probers:
            prober.stopped.set()
        alive = [c for c in self.containers if c.signal_group(signal.SIGTERM)]
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [c for c in alive if c.signal_group(0)]
        for container in alive:
            container.signal_group(signal.SIGKILL)
        for pid in ip("netns", "pids", self.network.netns, check=False).stdout.split():
            try:  # started by our containers but left their process group (setsid)
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for container in self.containers:
            if container.process is not None:
                try:
                    container.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log.warning("%s: container %s did not end", self.key, container.name)
        self.network.delete()
