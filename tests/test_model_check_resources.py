"""The model check against Tritons that are not there yet leaves nothing behind: thousands of failing checks,
from fresh threads and from a reused pool, against local servers that refuse, never accept, stall, answer
500 or answer garbage, all end `pending` within their timeout, and the process's open file descriptors,
threads and RSS stay flat. No cluster, no tritonserver; loopback only."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelops.triton.check import check_model

# The servers run in a child process, so that their own sockets do not count among this process's fds.
SERVERS = r'''
import asyncio, json, socket, sys

async def stall(reader, writer):  # accepts, reads, never answers; lets go when the client does
    while await reader.read(65536):
        pass
    writer.close()

async def error_500(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!")
    await writer.drain()
    writer.close()

async def garbage(reader, writer):
    await reader.read(65536)
    writer.write(b"\x00\xff SSH-2.0-definitely-not-http\r\n\r\n")
    await writer.drain()
    writer.close()

async def main():
    ports = {}
    for name, handler in (("stall", stall), ("error_500", error_500), ("garbage", garbage)):
        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=4096)
        ports[name] = server.sockets[0].getsockname()[1]
    # A listener whose accept queue is full: the kernel drops further SYNs, so a connect never completes,
    # as for a pod IP that nothing answers yet.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    ports["blackhole"] = full.getsockname()[1]
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", ports["blackhole"]))
        fillers.append(filler)
    print(json.dumps(ports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the test closes stdin

asyncio.run(main())
'''

FAST = 0.5   # servers that answer at once (refuse, 500, garbage): the timeout is never reached
SLOW = 0.05  # servers that never answer: every check waits the whole timeout


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, tuple[str, float]]]:
    """kind -> (address, timeout to check it with)."""
    child = subprocess.Popen([sys.executable, "-c", SERVERS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
        closed.close()
        yield {"refused": (f"127.0.0.1:{refused}", FAST),
               "error_500": (f"127.0.0.1:{ports['error_500']}", FAST),
               "garbage": (f"127.0.0.1:{ports['garbage']}", FAST),
               "stall": (f"127.0.0.1:{ports['stall']}", SLOW),
               "blackhole": (f"127.0.0.1:{ports['blackhole']}", SLOW)}
    finally:
        child.kill()
        child.communicate()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def settle() -> None:
    """Let finished threads exit and garbage go before measuring."""
    deadline = time.monotonic() + 5
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    gc.collect()


@pytest.mark.parametrize("kind", ["refused", "error_500", "garbage", "stall", "blackhole"])
def test_a_server_that_is_not_a_ready_triton_is_pending_within_the_timeout(
        servers: dict[str, tuple[str, float]], kind: str) -> None:
    address, _ = servers[kind]
    for where in ("this thread", "a fresh thread"):
        results = []
        started = time.monotonic()
        if where == "this thread":
            results.append(check_model(address, "m", 1, None, timeout=0.3))
        else:
            worker = threading.Thread(target=lambda: results.append(check_model(address, "m", 1, None, timeout=0.3)))
            worker.start()
            worker.join()
        elapsed = time.monotonic() - started
        assert results and results[0].verdict == "pending", (where, results)
        assert elapsed < 0.3 + 0.5, f"{kind} from {where}: {elapsed:.2f} s with a 0.3 s timeout"


def test_the_check_brings_no_heavy_client_into_the_operator() -> None:
    """The operator's RSS budget: the check speaks Triton's HTTP API itself (no tritonclient, numpy, gevent)."""
    code = ("import sys, modelops.triton.check as c; c.check_model('127.0.0.1:9', 'm', 1, None, timeout=0.1); "
            "print(sorted({'tritonclient', 'numpy', 'gevent'} & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_thousands_of_failing_checks_leave_no_fds_threads_or_memory_behind(
        servers: dict[str, tuple[str, float]]) -> None:
    kinds = sorted(servers)
    verdicts: Counter[str] = Counter()
    lock = threading.Lock()

    def check(i: int) -> None:
        address, timeout = servers[kinds[i % len(kinds)]]
        verdict = check_model(address, "m", 1, None, timeout=timeout).verdict
        with lock:
            verdicts[verdict] += 1

    def fresh_threads(count: int, at_once: int = 16) -> None:
        """Each check in a thread of its own that then ends, as the operator's timer threads did."""
        for first in range(0, count, at_once):
            batch = [threading.Thread(target=check, args=(i,)) for i in range(first, min(first + at_once, count))]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join()

    def reused_pool(count: int) -> None:
        """The same checks on a small pool of long-lived workers."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(check, range(count)))

    fresh_threads(100)  # warm up: imports, allocator arenas, the child's listeners
    reused_pool(100)
    settle()
    fds, tasks, rss = open_fds(), threads(), rss_mb()

    started = time.monotonic()
    fresh_threads(1500)
    reused_pool(1500)
    settle()
    took = time.monotonic() - started

    assert verdicts == {"pending": 3200}, verdicts
    assert abs(open_fds() - fds) <= 5, f"open fds {fds} -> {open_fds()} after 3000 checks"
    assert threads() - tasks <= 2, f"threads {tasks} -> {threads()} after 3000 checks"
    assert rss_mb() - rss < 20, f"RSS {rss:.1f} MB -> {rss_mb():.1f} MB after 3000 checks"
    assert took < 40, f"3000 checks took {took:.1f} s"
