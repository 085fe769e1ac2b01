"""The pod network on the host: one network namespace + veth per pod, routed through a gateway IP, and a relay to the API server."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


class NetworkError(RuntimeError):
    """An `ip` command failed."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class HostNetwork:
    """The host side shared by every pod: the gateway address (on `lo`) and IP forwarding.

    Pods get a /32 address and a default route via the gateway; the host routes each pod IP to its veth.
    There is no bridge: all pod traffic is routed by the host, so kube-proxy's iptables rules see it all
    (pod -> ClusterIP -> pod on the same host needs no br_netfilter). The gateway is a local address of the
    host, so the host answers the pods' ARP for it; `lo` holds it because this kernel has no dummy links.
    """

    def __init__(self, gateway_ip: str) -> None:
        self.gateway_ip = gateway_ip
        self._added_address = False
        self._old_forward: str | None = None

    def up(self) -> None:
        if f" {self.gateway_ip}/" not in ip("-4", "-o", "addr", "show", "dev", "lo").stdout:
            ip("addr", "add", f"{self.gateway_ip}/32", "dev", "lo")
            self._added_address = True
        old = IP_FORWARD.read_text().strip()
        if old != "1":  # pod-to-pod traffic is forwarded by the host
            IP_FORWARD.write_text("1\n")
            self._old_forward = old

    def down(self) -> None:
        if self._added_address:
            ip("addr", "del", f"{self.gateway_ip}/32", "dev", "lo", check=False)
            self._added_address = False
        if self._old_forward is not None:
            IP_FORWARD.write_text(self._old_forward + "\n")
            self._old_forward = None


@dataclass(frozen=True)
class PodNetwork:
    """A pod's network namespace: `lo` and `eth0` (the pod IP) inside, a veth end on the host."""

    netns: str
    host_veth: str
    pod_ip: str
    gateway_ip: str

    def create(self) -> None:
        self.delete()  # leftovers of a kubelet that was killed
        ip("netns", "add", self.netns)
        try:
            ip("link", "add", self.host_veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            ip("link", "set", self.host_veth, "up")
            inside = ("-n", self.netns)
            ip(*inside, "link", "set", "lo", "up")
            ip(*inside, "addr", "add", f"{self.pod_ip}/32", "dev", "eth0")
            ip(*inside, "link", "set", "eth0", "up")
            ip(*inside, "route", "add", self.gateway_ip, "dev", "eth0", "scope", "link")
            ip(*inside, "route", "add", "default", "via", self.gateway_ip, "dev", "eth0")
            # `replace`: kwok reuses the IPs of deleted pods, whose veth may not be gone yet
            ip("route", "replace", f"{self.pod_ip}/32", "dev", self.host_veth, "src", self.gateway_ip)
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        """Remove the veth (and with it the host route) and the namespace; no error when absent.

        The host route is never deleted by address: a newer pod may own the same IP by now."""
        ip("link", "del", self.host_veth, check=False)
        ip("netns", "del", self.netns, check=False)

    @staticmethod
    def remove_leftovers(prefix: str) -> list[str]:
        """Delete the network namespaces named `prefix`* left by a killed kubelet, after SIGKILLing the pod
        processes still inside them (their veths go with the namespaces)."""
        lines = ip("netns", "list", check=False).stdout.splitlines()
        names = [line.split()[0] for line in lines if line.startswith(prefix)]
        for name in names:
            for pid in ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            ip("netns", "del", name, check=False)
        return names


class TcpRelay:
    """Accepts TCP connections on (host, port) and pipes each to `upstream`: here, the pod network's way
    to an API server that listens on 127.0.0.1 only (TLS passes through untouched)."""

    def __init__(self, listen_host: str, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._server = socket.create_server((listen_host, 0), backlog=64)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="apiserver-relay", daemon=True)

    def start(self) -> TcpRelay:
        self._thread.start()
        return self

    def stop(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self._server.close()
        self._thread.join(timeout=5)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            _close(conn)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError as error:
                log.warning("relay: cannot reach %s:%d: %s", *self.upstream, error)
                _close(client)
                continue
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
