"""Find and run a local tritonserver (the one shipped in the nvidia-pytriton wheel) as a subprocess."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)


class TritonServerError(RuntimeError):
    """tritonserver is missing, failed to start, or did not become ready."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the tritonserver binary, its backends and the Python packages it needs live."""

    binary: Path
    backends: Path
    site_packages: Path

    @property
    def lib_dirs(self) -> list[Path]:
        """Shared-library folders shipped next to the binary (for LD_LIBRARY_PATH)."""
        root = self.binary.parent.parent
        return [p for p in (root / "lib", root / "external_libs", self.backends / "python") if p.is_dir()]


def find_triton() -> TritonInstall | None:
    """Locate the tritonserver of the installed nvidia-pytriton wheel; None when it is not installed."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    binary = package / "tritonserver" / "bin" / "tritonserver"
    backends = package / "tritonserver" / "backends"
    if not (binary.is_file() and os.access(binary, os.X_OK) and backends.is_dir()):
        return None
    return TritonInstall(binary=binary, backends=backends, site_packages=package.parent)


def ensure_python_stub(install: TritonInstall, python_version: str | None = None) -> Path:
    """Copy the python-backend stub for this Python into `backends/python/` once (idempotent, atomic)."""
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    target = install.backends / "python" / "triton_python_backend_stub"
    if target.is_file():
        return target
    source = install.backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not source.is_file():
        raise TritonServerError(f"no python-backend stub for Python {version} at {source}")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".stub-")
    os.close(fd)
    shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return target


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now (all distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class TritonServer:
    """A tritonserver process on free local ports; use as a context manager, or start()/stop().

    `models` are loaded at start in explicit model-control mode; with no models and
    model_control="none", Triton loads every model in the repository.
    """

    def __init__(
        self,
        model_repository: str | Path,
        *,
        models: Sequence[str] = (),
        model_control: str = "explicit",
        extra_args: Sequence[str] = (),
        extra_pythonpath: Sequence[str | Path] = (),
        env: Mapping[str, str] | None = None,
        log_path: str | Path | None = None,
        startup_timeout: float = 120.0,
        install: TritonInstall | None = None,
    ) -> None:
        found = install or find_triton()
        if found is None:
            raise TritonServerError("tritonserver not found: install nvidia-pytriton==0.7.0")
        self.install = found
        self.model_repository = Path(model_repository).resolve()
        self.models = tuple(models)
        self.model_control = model_control
        self.extra_args = tuple(extra_args)
        self.extra_pythonpath = tuple(str(p) for p in extra_pythonpath)
        self.env = dict(env or {})
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        self.http_port, self.grpc_port, self.metrics_port = 0, 0, 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        """host:port for tritonclient.http."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port for tritonclient.grpc."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        """The tritonserver command line."""
        cmd = [str(self.install.binary),
               f"--model-repository={self.model_repository}",
               f"--backend-directory={self.install.backends}",
               f"--model-control-mode={self.model_control}",
               f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
               f"--metrics-port={self.metrics_port}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
               "--allow-cpu-metrics=true", "--exit-on-error=true"]
        cmd += [f"--load-model={name}" for name in self.models]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        """The process environment: PYTHONPATH reaches the wheel's and this interpreter's packages."""
        env = dict(os.environ)
        paths = [*self.extra_pythonpath, str(self.install.site_packages),
                 *(p for p in sys.path if p.endswith("site-packages"))]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # the python-backend stub embeds Python and finds this environment through the first python3 on PATH
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        libs = [str(p) for p in self.install.lib_dirs] + [env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        env.update(self.env)
        return env

    def start(self) -> TritonServer:
        """Start tritonserver and wait until /v2/health/ready answers 200."""
        if self._process is not None:
            return self
        ensure_python_stub(self.install)
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        log_file = open(self.log_path, "w+b") if self.log_path else tempfile.TemporaryFile()  # noqa: SIM115
        self._log_file = log_file
        self._process = subprocess.Popen(self.command(), env=self.environment(), stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.stop)
        log.info("tritonserver pid %d: http %s grpc %s", self._process.pid, self.http_url, self.grpc_url)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll readiness until startup_timeout; raise TritonServerError with the log tail on failure."""
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise TritonServerError(f"tritonserver not ready after {self.startup_timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output."""
        log_file = self._log_file
        if log_file is None:
            return ""
        log_file.flush()
        log_file.seek(0, os.SEEK_END)
        size = log_file.tell()
        log_file.seek(max(0, size - chars))
        return log_file.read().decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL to the server's own process group (its python-backend stubs) after timeout."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d did not stop in %.0fs; killing", process.pid, timeout)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # leftovers of the session we started
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
