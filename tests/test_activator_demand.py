"""The operator hears a held request at once: engine/demand.ActivatorDemand long-polling a real `modelops
activator` process (loopback ports), whose only target never answers (a pod still starting), so the request
stays held. Measures the time from the request sent to the ModelService's pass enqueued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from modelops.engine.demand import ActivatorDemand
from modelops.triton.server import free_ports
from support import REPO


def test_a_held_request_enqueues_its_modelservice_within_a_second_and_a_lost_activator_is_forgotten(
        tmp_path: Path) -> None:
    http, grpc_port, admin, closed_http, closed_grpc = free_ports(5)
    log = (tmp_path / "activator.log").open("w+")
    backend = f"ns/digits=digits:1@127.0.0.1:{closed_http}:{closed_grpc}"  # nothing listens: never ready
    process = subprocess.Popen([sys.executable, "-m", "modelops", "activator", "--no-watch", "--backend", backend,
                                "--address", "127.0.0.1", f"--http-port={http}", f"--grpc-port={grpc_port}",
                                f"--admin-port={admin}", "--hold-seconds=30"], stdout=log, stderr=subprocess.STDOUT,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
    woken: list[tuple[tuple[str, str, str], float]] = []
    demand = ActivatorDemand(None, "ops/activator", lambda key: woken.append((key, time.monotonic())),  # type: ignore[arg-type]
                             wait=5)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, log.seek(0) or log.read()
                time.sleep(0.2)
        demand.set_addresses(("127.0.0.1",), admin)
        time.sleep(0.5)  # the first (full) answer: nothing held
        assert woken == [] and demand.snapshot("ns", "digits").held == 0

        def infer() -> None:
            request = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/digits/infer", data=b"{}",
                                             headers={"Host": "digits.ns"}, method="POST")
            try:
                urllib.request.urlopen(request, timeout=40).close()
            except (urllib.error.HTTPError, OSError):
                pass  # answered 503 at the hold's end, or the connection cut when the process is killed
        sent = time.monotonic()
        threading.Thread(target=infer, daemon=True).start()
        deadline = time.monotonic() + 5
        while not woken and time.monotonic() < deadline:
            time.sleep(0.005)
        assert woken and woken[0][0] == ("ModelService", "ns", "digits")
        latency = woken[0][1] - sent
        print(f"held request -> pass enqueued: {latency * 1000:.1f} ms")
        assert latency < 1.0
        held = demand.snapshot("ns", "digits")
        assert held.held == 1 and held.since is not None and abs(held.since - time.time()) < 5
        assert demand.addresses() == ("127.0.0.1",)

        process.send_signal(signal.SIGKILL)  # the activator lost: what it held no longer counts
        process.wait(10)
        deadline = time.monotonic() + 10
        while demand.snapshot("ns", "digits").held and time.monotonic() < deadline:
            time.sleep(0.1)
        assert demand.snapshot("ns", "digits").held == 0
    finally:
        demand.stop()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
