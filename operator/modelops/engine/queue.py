"""One work queue: events add keys, bursts coalesce into one pending pass per key, a bounded set of worker
threads runs passes, each pass says when it wants to run again, and every failure is retried with
exponential backoff and jitter (controller-runtime's default: 5 ms doubling to 1000 s)."""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from modelops.engine.pause import Pause
from modelops.metrics import QUEUE_DELAYED, QUEUE_DEPTH, QUEUE_RETRIES, QUEUE_WAIT_SECONDS

log = logging.getLogger(__name__)
Key = tuple[str, ...]
"""(kind, namespace, name) of a resource to reconcile; (namespace, name) of a pod to check."""


class Backoff:
    """Per-key failure backoff: base * 2**(failures-1), capped, with up to `jitter` extra (fraction)."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0, jitter: float = 0.1,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.jitter, self._rng = base, cap, jitter, rng
        self._failures: dict[Key, int] = {}
        self._lock = threading.Lock()

    def next_delay(self, key: Key) -> float:
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self.cap, self.base * 2.0 ** min(failures - 1, 60))
        return delay * (1 + self.jitter * self._rng())

    def failures(self, key: Key) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._failures.pop(key, None)


@dataclass(frozen=True)
class Failure:
    """What a failed pass hands to the failure listener."""

    key: Key
    error: BaseException
    failures: int
    retry_in: float


class RetryAfter(Exception):
    """Raised by a pass that wants to be retried no sooner than `seconds` (e.g. a 429's Retry-After)."""

    def __init__(self, seconds: float, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.seconds, self.cause = seconds, cause


class WorkQueue:
    """Keys in, passes out. `process(key)` returns None (done until the next event) or the seconds after
    which the key should be processed again; that answer replaces any earlier schedule of the key."""

    def __init__(self, name: str, process: Callable[[Key], float | None], *, workers: int, pause: Pause,
                 backoff: Backoff | None = None, on_failure: Callable[[Failure], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self._process, self._workers, self._pause = name, process, workers, pause
        self.backoff = backoff or Backoff()
        self._on_failure = on_failure
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[Key] = deque()
        self._queued: dict[Key, float] = {}  # key -> when it became ready (for the wait metric)
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()  # added again while being processed: run once more afterwards
        self._due: dict[Key, float] = {}
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        QUEUE_RETRIES.labels(name)  # 0 until the first retry, not "no data"
        pause.listen(lambda _: self._wake())

    # ---- adding ------------------------------------------------------------

    def add(self, key: Key) -> None:
        """Process `key` as soon as a worker is free; a key already waiting is not queued twice."""
        with self._cond:
            self._due.pop(key, None)
            self._make_ready(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Process `key` after `delay` seconds, or earlier if it is already scheduled earlier."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if key in self._queued or self._due.get(key, float("inf")) <= due:
                return
            self._schedule(key, due)

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready)

    def delayed(self) -> int:
        with self._cond:
            return len(self._due)

    # ---- running -----------------------------------------------------------

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (key := self._next()) is not None:
            requeue: float | None = None
            try:
                requeue = self._process(key)
                self.backoff.forget(key)
            except Exception as error:  # every failure is retried: a transient one must not end the loop
                requeue = self._failed(key, error)
            finally:
                self._done(key, requeue)

    def _failed(self, key: Key, error: Exception) -> float:
        QUEUE_RETRIES.labels(self.name).inc()
        delay = self.backoff.next_delay(key)
        if isinstance(error, RetryAfter):
            delay, error = max(delay, error.seconds), error.cause  # type: ignore[assignment]
        failures = self.backoff.failures(key)
        level = logging.WARNING if failures in (1, 5) or failures % 20 == 0 else logging.DEBUG
        log.log(level, "%s: pass of %s failed (%d in a row), retry in %.2fs: %s", self.name, key, failures, delay,
                error, exc_info=not _expected(error))
        if self._on_failure:
            try:
                self._on_failure(Failure(key, error, failures, delay))
            except Exception:
                log.exception("%s: failure listener raised for %s", self.name, key)
        return delay

    def _next(self) -> Key | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = self._clock()
                self._promote_due(now)
                if self._pause.running:
                    while self._ready:
                        key = self._ready.popleft()
                        ready_since = self._queued.pop(key)
                        if key in self._processing:  # another worker has it: run again after that one
                            self._dirty.add(key)
                            continue
                        self._processing.add(key)
                        QUEUE_WAIT_SECONDS.labels(self.name).observe(max(0.0, now - ready_since))
                        self._report()
                        return key
                timeout = None
                if self._heap:
                    timeout = max(0.0, self._heap[0][0] - now)
                self._report()
                self._cond.wait(timeout if timeout is None else min(timeout, 60.0))

    def _done(self, key: Key, requeue: float | None) -> None:
        with self._cond:
            self._processing.discard(key)
            # The pass that just ran decides the next one: its answer replaces an older schedule.
            self._due.pop(key, None)
            if key in self._dirty:  # added again while it ran: run once more now
                self._dirty.discard(key)
                self._make_ready(key)
            elif requeue is not None:
                if requeue <= 0:
                    self._make_ready(key)
                else:
                    self._schedule(key, self._clock() + requeue)
            self._report()

    # ---- internals (hold self._cond) ----------------------------------------

    def _make_ready(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued[key] = self._clock()
            self._ready.append(key)
            self._cond.notify()

    def _schedule(self, key: Key, due: float) -> None:
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._cond.notify()

    def _promote_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            due, _, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:  # else superseded by a later add/schedule
                del self._due[key]
                self._make_ready(key)
        if len(self._heap) > 4 * max(len(self._due), 64):  # drop superseded entries now and then
            self._heap = [(d, s, k) for d, s, k in self._heap if self._due.get(k) == d]
            heapq.heapify(self._heap)

    def _report(self) -> None:
        QUEUE_DEPTH.labels(self.name).set(len(self._ready))
        QUEUE_DELAYED.labels(self.name).set(len(self._due))

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def _expected(error: BaseException) -> bool:
    """API errors and timeouts are the weather, not bugs: log them without a traceback."""
    from modelops.kube import ApiError

    return isinstance(error, (ApiError, TimeoutError, ConnectionError))
