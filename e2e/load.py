"""A bounded load generator: Triton inference requests through tritonclient, at a capped rate."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                key = error[:80]
                self.errors[key] = self.errors.get(key, 0) + 1

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, self.failed


def infer(address: str, model: str, batch: np.ndarray, timeout: float = 10.0) -> np.ndarray:
    """One request: FP32 INPUT__0 [batch, ...] -> OUTPUT__0 logits."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(address, connection_timeout=timeout, network_timeout=timeout)
    try:
        request = triton.InferInput("INPUT__0", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch.astype(np.float32))
        result = client.infer(model, [request], outputs=[triton.InferRequestedOutput("OUTPUT__0")])
        return np.asarray(result.as_numpy("OUTPUT__0"))
    finally:
        client.close()


class LoadGenerator:
    """`workers` threads sending single-sample requests to `address`, together at most `rate` per second,
    until stop() or `max_seconds` (a hard bound: load tests here must end by themselves)."""

    def __init__(self, address: str, model: str, samples: np.ndarray, *, rate: float = 50.0, workers: int = 4,
                 max_seconds: float = 600.0) -> None:
        self.address, self.model, self.samples = address, model, samples
        self.interval = workers / rate
        self.workers, self.max_seconds = workers, max_seconds
        self.stats = LoadStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LoadGenerator:
        deadline = time.monotonic() + self.max_seconds
        self._threads = [threading.Thread(target=self._run, args=(i, deadline), daemon=True, name=f"load-{i}")
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, worker: int, deadline: float) -> None:
        index = worker
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            sample = self.samples[index % len(self.samples)][None]
            index += self.workers
            try:
                # A connection per request: kube-proxy balances connections, so a kept-alive client would
                # stay on one pod and never reach new replicas or the canary.
                infer(self.address, self.model, sample)
                self.stats.record(None)
            except Exception as error:  # noqa: BLE001 - every failure is counted, by message
                self.stats.record(f"{type(error).__name__}: {error}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self.stats
