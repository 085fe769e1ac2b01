"""Benchmark the trainer on CPU: 1 rank vs 2 pods x 1 rank vs 1 pod x 2 local ranks (gloo DDP, the pods being
processes with the operator's env), and our loop's overhead vs a bare torch loop."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def final_progress(stdout: str) -> dict[str, object]:
    lines = [line for line in stdout.splitlines() if line.startswith("PROGRESS ")]
    return json.loads(lines[-1].removeprefix("PROGRESS "))


def trainer_command(repository: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "modelops.trainer", "--dataset", args.dataset, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--no-augment", "--num-threads", "1", "--repository",
            str(repository), "--model-name", "bench", "--log-level", "WARNING"]


def ddp_throughput(pods: int, nproc: int, args: argparse.Namespace) -> tuple[float, float]:
    """(global training samples/s that rank 0 reports, training time only; wall seconds incl. startup) of
    `pods` pods of `nproc` ranks each, every pod a process with the env the operator gives a worker pod
    (the trainer launches a pod's local ranks itself)."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
        sock.close()
        world = pods * nproc
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        started = time.perf_counter()
        procs = [subprocess.Popen(trainer_command(Path(tmp), args),
                                  env={**env, "GROUP_RANK": str(pod), "RANK": str(pod * nproc), "LOCAL_RANK": "0"},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for pod in range(pods)]
        outputs = [proc.communicate() for proc in procs]
        wall = time.perf_counter() - started
        for pod, (proc, (_, err)) in enumerate(zip(procs, outputs)):
            if proc.returncode:
                raise SystemExit(f"trainer failed ({pods} pods x {nproc} ranks, pod {pod}, exit {proc.returncode}):\n"
                                 + "\n---\n".join(e for _, e in outputs))
        return float(final_progress(outputs[0][0])["samplesPerSecond"]), wall  # type: ignore[arg-type]


def loop_overhead(args: argparse.Namespace) -> tuple[float, float, float]:
    """(bare samples/s, ours samples/s in training time, ours samples/s in wall time incl. validation+checkpoints)."""
    import torch
    from torch import nn

    from modelops.trainer.data import NO_AUGMENTATION, Missing, load_builtin, prepare
    from modelops.trainer.distributed import DistEnv
    from modelops.trainer.loop import LoopConfig, train
    from modelops.trainer.models import ModelSpec, Stats, build_model
    from modelops.trainer.progress import ProgressReporter

    torch.set_num_threads(1)
    data = prepare(load_builtin(args.dataset, 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.2, seed=0)
    norm = data.normalization
    spec = ModelSpec("cnn" if len(data.input_shape) == 3 else "mlp")

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model(spec, data.input_shape, data.num_classes,
                           Stats(torch.from_numpy(norm.mean), torch.from_numpy(norm.std), tuple(norm.mean.shape)))

    def bare() -> float:
        model = fresh()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        loss_fn = nn.CrossEntropyLoss()
        x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for _ in range(args.epochs):
            model.train()
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), args.batch_size):
                index = order[start:start + args.batch_size]
                loss = loss_fn(model(x[index]), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return args.epochs * len(y) / (time.perf_counter() - started)

    def ours() -> tuple[float, float]:
        model = fresh()
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as devnull:
            config = LoopConfig(epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, seed=0,
                                augmentation=NO_AUGMENTATION, run_key="bench", weight_decay=1e-4,
                                checkpoint_dir=Path(tmp))
            reporter = ProgressReporter(None, out=devnull, termination_log=None)
            started = time.perf_counter()
            result = train(model, data, config, device=torch.device("cpu"), dist=DistEnv(), reporter=reporter)
            wall = time.perf_counter() - started
        return result.samples_per_second, args.epochs * len(data.train) / wall

    bare(), ours()  # warm-up
    bare_runs, our_runs = [], []
    for _ in range(args.repeats):  # interleaved, best of N, so background load hits both alike
        bare_runs.append(bare())
        our_runs.append(ours())
    return max(bare_runs), max(r[0] for r in our_runs), max(r[1] for r in our_runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", default="digits", choices=["digits", "synthetic-tabular"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-loop", action="store_true", help="only the rank layouts, not the loop overhead")
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}, dataset {args.dataset}, {args.epochs} epochs, batch {args.batch_size} "
          f"per rank, 1 thread per rank, no GPU", flush=True)
    runs: dict[str, list[tuple[float, float]]] = {"1 rank": [], "2 pods x 1 rank": [], "1 pod x 2 ranks": []}
    shapes = {"1 rank": (1, 1), "2 pods x 1 rank": (2, 1), "1 pod x 2 ranks": (1, 2)}
    for _ in range(args.repeats):  # interleaved, best of N: background load hits every shape alike
        for name, (pods, nproc) in shapes.items():
            runs[name].append(ddp_throughput(pods, nproc, args))
    best = {name: max(r[0] for r in results) for name, results in runs.items()}
    walls = {name: min(r[1] for r in results) for name, results in runs.items()}
    for name in shapes:
        print(f"{name:17s}: {best[name]:10.0f} samples/s (global, training time)   wall {walls[name]:5.1f}s "
              f"incl. startup")
    one = best["1 rank"]
    print(f"ratios: 2 pods x 1 / 1 rank = {best['2 pods x 1 rank'] / one:.2f}, "
          f"1 pod x 2 / 1 rank = {best['1 pod x 2 ranks'] / one:.2f}, "
          f"1 pod x 2 / 2 pods x 1 = {best['1 pod x 2 ranks'] / best['2 pods x 1 rank']:.2f}", flush=True)
    if args.skip_loop:
        return
    bare, ours_train, ours_wall = loop_overhead(args)
    print(f"bare torch loop  : {bare:10.0f} samples/s")
    print(f"our loop (train) : {ours_train:10.0f} samples/s   ratio ours/bare = {ours_train / bare:.2f}")
    print(f"our loop (wall)  : {ours_wall:10.0f} samples/s   ratio ours/bare = {ours_wall / bare:.2f} "
          "(incl. per-epoch validation and checkpoint)")


if __name__ == "__main__":
    main()
