"""Benchmark: the builtin autoscaler against the Kubernetes HPA algorithm at its default settings, on the
same metric traces.

Measures (1) seconds from a load step to the scale-out decision and (2) replica changes under steady,
noisy load over a fixed window. The HPA reference below is written independently from the Kubernetes
documentation (15 s sync period, tolerance 0.1, scale-up 4 pods or 100% per 15 s with no window,
scale-down 100% per 15 s after a 300 s stabilisation window) so the two implementations check each
other. The metric is per-replica: value = offered load / replicas, as queue time or rate per replica
behaves.

Run: .venv/bin/python e2e/bench/bench_autoscale.py [--seed N]
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from modelops.api.modelservice import Autoscaling
from modelops.autoscale.decision import ScaleMemory, decide

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TARGET = 100.0


def hpa_reference(sync: float = 15.0) -> Callable[[float, int, float], int]:
    """The HPA's replica calculation with default behaviour, as documented."""
    recommendations: list[tuple[float, int]] = []
    changes: list[tuple[float, int]] = []
    last_sync = -math.inf

    def step(t: float, current: int, value: float) -> int:
        nonlocal last_sync
        if t - last_sync < sync:
            return current
        last_sync = t
        ratio = value / TARGET
        raw = current if abs(ratio - 1) <= 0.1 else math.ceil(current * ratio)
        raw = min(max(raw, 1), 20)
        recommendations.append((t, raw))
        up = raw                                                       # scale-up window: 0 s
        down = max(n for s, n in recommendations if t - s <= 300)      # scale-down window: 300 s
        desired = current
        if desired < up:
            desired = up
        if desired > down:
            desired = down
        if desired > current:  # policies: max(4 pods, 100%) per 15 s
            added = sum(d for s, d in changes if d > 0 and t - s < 15)
            base = current - added
            desired = min(desired, base + max(4, base))
        # scale-down policy 100% per 15 s never binds
        if desired != current:
            changes.append((t, desired - current))
        return desired

    return step


def builtin(scaling: Autoscaling, period: float = 10.0) -> Callable[[float, int, float], int]:
    memory = ScaleMemory()
    last = -math.inf

    def step(t: float, current: int, value: float) -> int:
        nonlocal memory, last
        if t - last < period:
            return current
        last = t
        decision = decide(current, value, scaling, memory, T0 + timedelta(seconds=t))
        memory = decision.memory
        return decision.desired

    return step


def run(scaler: Callable[[float, int, float], int], load: Callable[[float], float], seconds: int,
        start_replicas: int, tick: float = 1.0) -> list[tuple[float, int]]:
    """Replicas over time; the per-replica metric follows the load and the current replica count."""
    replicas, history = start_replicas, []
    t = 0.0
    while t < seconds:
        value = load(t) / replicas
        replicas = scaler(t, replicas, value)
        history.append((t, replicas))
        t += tick
    return history


def step_latency(history: list[tuple[float, int]], step_at: float, start: int) -> float:
    return next(t for t, n in history if t >= step_at and n > start) - step_at


def changes(history: list[tuple[float, int]]) -> int:
    return sum(1 for (_, a), (_, b) in zip(history, history[1:]) if a != b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--noise", type=float, default=0.15, help="relative noise of the steady load")
    args = parser.parse_args()
    defaults = Autoscaling.model_validate({"minReplicas": 1, "maxReplicas": 20, "target": TARGET})
    damped = Autoscaling.model_validate({"minReplicas": 1, "maxReplicas": 20, "target": TARGET,
                                         "scaleUp": {"stabilizationWindowSeconds": 30}})
    scalers = {"HPA reference (defaults)": lambda: hpa_reference(),
               "builtin (defaults)": lambda: builtin(defaults),
               "builtin (scaleUp window 30s)": lambda: builtin(damped)}

    # 1. load step at t=60 from 1 replica's worth to 4 replicas' worth, phase-averaged over sync offsets.
    print("load step 100 -> 400 (target 100 per replica) at varying offsets; seconds to scale-out decision")
    latencies: dict[str, list[float]] = {name: [] for name in scalers}
    for offset in range(0, 15):
        step_at = 60.0 + offset
        for name, make in scalers.items():
            history = run(make(), lambda t, s=step_at: 400.0 if t >= s else 100.0, 200, 1)
            latencies[name].append(step_latency(history, step_at, 1))
    base = sum(latencies["HPA reference (defaults)"]) / 15
    for name, values in latencies.items():
        mean = sum(values) / len(values)
        print(f"  {name:32s} mean {mean:5.1f}s  max {max(values):5.1f}s  ratio vs HPA {mean / base:4.2f}")

    # 2. steady noisy load around 4 replicas' worth for 30 minutes.
    print(f"steady load 400 +-{args.noise:.0%} noise for 1800 s, starting at 4 replicas; replica changes")
    rng = random.Random(args.seed)
    noise = [1 + rng.uniform(-args.noise, args.noise) for _ in range(1800)]
    counts = {}
    for name, make in scalers.items():
        history = run(make(), lambda t: 400.0 * noise[int(t)], 1800, 4)
        counts[name] = changes(history)
    for name, count in counts.items():
        base_count = counts["HPA reference (defaults)"] or 1
        print(f"  {name:32s} {count:3d} changes  ratio vs HPA {count / base_count:4.2f}")


if __name__ == "__main__":
    main()
