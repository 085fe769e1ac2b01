"""Command line of the training runtime: parse flags, prepare data, train (DDP when WORLD_SIZE > 1), publish on rank 0."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from modelops.trainer import TrainerError
from modelops.trainer.data import (BUILTIN_DATASETS, DEFAULT_MAX_LENGTH, Kind, Missing, default_augmentation,
                                   SEQUENCE_MODELS, load_builtin, load_path, prepare)
from modelops.trainer.distributed import DistEnv
from modelops.trainer.progress import failure_message, utc_now, write_termination_log

log = logging.getLogger("modelops.trainer")
PROG = "python -m modelops.trainer"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer no smaller than `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be in [0, 1)")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be >= 1")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    """The trainer's flags (the TrainingJob controller generates the documented ones)."""
    env = os.environ
    p = _Parser(prog=PROG, description="Train a classifier and publish it to a Triton model repository.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=BUILTIN_DATASETS, help="a built-in data set")
    source.add_argument("--data-path", type=Path, help="user data: .csv (with --label-column) or .npz (x, y)")
    p.add_argument("--label-column", help="label column of a .csv data set")
    p.add_argument("--missing", choices=[m.value for m in Missing], default="drop",
                   help="rows with missing feature values: drop them or fill with the column median")
    p.add_argument("--model", choices=["cnn", "mlp", "gru", "transformer"],
                   help="default: cnn for images, mlp for tabular data, gru for sequences")
    p.add_argument("--hidden-sizes", type=_sizes, default=(64,),
                   help="fully connected layers, e.g. 64,32; sequence models: the first is the GRU state or the "
                        "encoder's feed-forward width, the rest the head's layers")
    p.add_argument("--embedding-dim", type=_positive_int, default=32, help="sequence models: token embedding width")
    p.add_argument("--layers", type=_positive_int, default=1, help="sequence models: GRU or encoder layers")
    p.add_argument("--heads", type=_positive_int, default=2, help="transformer: attention heads")
    p.add_argument("--max-length", type=_positive_int, default=DEFAULT_MAX_LENGTH,
                   help="sequences: longer rows are dropped in cleaning; serving cuts inputs at this length")
    p.add_argument("--vocab-size", type=_int_at_least(3),
                   help="sequences: ids 2..N-1 are tokens (0 pads, 1 is unknown); default: the largest id seen + 1")
    p.add_argument("--channels", type=_sizes, default=(16, 32), help="CNN convolution channels, e.g. 16,32")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=64, help="per process")
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="image augmentation (shifts, noise; never flips); default on for images")
    p.add_argument("--val-fraction", type=_fraction, default=0.1)
    p.add_argument("--test-fraction", type=_fraction, default=0.2)
    p.add_argument("--repository", type=Path, default=Path(env.get("MODELOPS_REPOSITORY") or "/models"),
                   help="model repository root (env MODELOPS_REPOSITORY, default /models)")
    p.add_argument("--model-name", default=env.get("MODELOPS_MODEL_NAME") or None,
                   help="published model name (env MODELOPS_MODEL_NAME)")
    p.add_argument("--checkpoint-dir", type=Path,
                   help="default <repository>/<model>/.checkpoints/<MODELOPS_JOB_NAME>-<MODELOPS_JOB_UID> "
                        "(or 'local' outside a TrainingJob)")
    p.add_argument("--no-resume", action="store_true", help="discard this run's checkpoint and start fresh")
    p.add_argument("--max-batch-size", type=_non_negative_int, default=64, help="for config.pbtxt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--num-threads", type=_positive_int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--dist-timeout", type=_positive_float, default=600.0, help="seconds for collectives")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def run_key(args: argparse.Namespace, fingerprint: str) -> str:
    """Identifies checkpoints this run may resume from: everything that shapes the weights except --epochs."""
    keys = ("model", "hidden_sizes", "channels", "dropout", "batch_size", "lr", "weight_decay", "seed",
            "augment", "val_fraction", "test_fraction", "missing", "embedding_dim", "layers", "heads",
            "max_length", "vocab_size")
    material = {k: getattr(args, k) for k in keys} | {"fingerprint": fingerprint}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _preflight(args: argparse.Namespace, key: str) -> dict[str, Any] | None:
    """Rank 0, before training: repository and checkpoint dir writable; an already published run is not redone."""
    from modelops.trainer import checkpoint
    from modelops.trainer.publish import check_repository

    check_repository(args.repository, args.model_name)
    try:
        args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainerError(f"checkpoint directory {args.checkpoint_dir} is not writable: {exc.strerror}") from None
    if args.no_resume:
        checkpoint.clear(args.checkpoint_dir)
    marker = checkpoint.read_published(args.checkpoint_dir)
    if marker and marker.get("runKey") == key and marker.get("epochs") == args.epochs:
        return marker
    return None


def default_checkpoint_dir(repository: Path, model_name: str) -> Path:
    """Per TrainingJob object: its restarts resume, a new job of the same name starts fresh. Inside the
    model's folder and hidden, so Triton (which loads only numeric version folders) never trips on it."""
    job = os.environ.get("MODELOPS_JOB_NAME")
    uid = os.environ.get("MODELOPS_JOB_UID", "")[:8]
    run_name = f"{job}-{uid}" if job and uid else (job or "local")
    return repository / model_name / ".checkpoints" / run_name


def run(args: argparse.Namespace) -> int:
    """The whole run; raises TrainerError on bad input."""
    dist = DistEnv.from_env()
    if not args.model_name:
        raise TrainerError("--model-name is required (or set MODELOPS_MODEL_NAME)")
    if args.checkpoint_dir is None:
        args.checkpoint_dir = default_checkpoint_dir(args.repository, args.model_name)
    if args.label_column and args.data_path is None:
        log.info("--label-column ignored: it applies to --data-path .csv files")

    sequence = args.model in SEQUENCE_MODELS
    raw = load_builtin(args.dataset, args.seed) if args.dataset else \
        load_path(args.data_path, args.label_column, sequence=sequence)
    if (raw.kind is Kind.SEQUENCE) != sequence and args.model is not None:
        raise TrainerError(f"model {args.model} does not fit {raw.kind.value} data"
                           + ("; use --model gru or transformer" if raw.kind is Kind.SEQUENCE else ""))
    data = prepare(raw, missing=Missing(args.missing), val_fraction=args.val_fraction,
                   test_fraction=args.test_fraction, seed=args.seed, max_length=args.max_length,
                   vocab_size=args.vocab_size)
    augmentation = default_augmentation(data.kind, args.augment)
    args.model = args.model or {Kind.IMAGE: "cnn", Kind.TABULAR: "mlp", Kind.SEQUENCE: "gru"}[data.kind]
    key = run_key(args, data.fingerprint)
    log.info("data %s: %s samples %s, %d classes, fingerprint %s", data.name, data.kind.value,
             data.describe()["samples"], data.num_classes, data.fingerprint[:19])

    import torch  # heavy; only after the cheap input checks

    from modelops.trainer import distributed, loop
    from modelops.trainer.models import ModelSpec, Stats, build_model, build_sequence_model
    from modelops.trainer.progress import NullReporter, PodAnnotationSink, ProgressReporter

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    spec = ModelSpec(args.model, args.hidden_sizes, args.channels, args.dropout, embedding_dim=args.embedding_dim,
                     layers=args.layers, heads=args.heads)
    torch.manual_seed(args.seed)
    norm = data.normalization
    model: torch.nn.Module
    if data.vocabulary is not None:
        model = build_sequence_model(spec, data.vocabulary.vocab_size, data.vocabulary.max_length, data.num_classes)
    else:
        model = build_model(spec, data.input_shape, data.num_classes,
                            Stats(torch.from_numpy(norm.mean), torch.from_numpy(norm.std), tuple(norm.mean.shape)))
    device = distributed.select_device(args.device, dist)
    distributed.init_process_group(dist, device, args.dist_timeout)
    try:
        outcome: Any = None
        if dist.is_main:
            try:
                outcome = {"marker": _preflight(args, key)}
            except TrainerError as exc:
                outcome = {"error": str(exc)}
        outcome = loop.broadcast_object(outcome, dist)
        if "error" in outcome:
            raise TrainerError(outcome["error"] if dist.is_main else f"rank 0 failed: {outcome['error']}")
        reporter = ProgressReporter(PodAnnotationSink.from_env()) if dist.is_main else NullReporter()
        if outcome["marker"] is not None:
            marker = outcome["marker"]
            log.info("this run already published %s version %s; nothing to do", args.model_name,
                     marker["model"]["version"])
            reporter.final(**marker["progress"])
            return 0
        log.info("training %s on %s (world size %d, augmentation %s)", args.model, device, dist.world_size,
                 augmentation.to_dict() if augmentation.enabled else "off")
        config = loop.LoopConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                 augmentation=augmentation, run_key=key, weight_decay=args.weight_decay,
                                 checkpoint_dir=args.checkpoint_dir)
        result = loop.train(model, data, config, device=device, dist=dist, reporter=reporter)
        if dist.is_main:
            _publish(args, data, spec, augmentation, model, result, reporter, device, key, dist)
        return 0
    finally:
        distributed.destroy_process_group()


def _publish(args: argparse.Namespace, data: Any, spec: Any, augmentation: Any, model: Any, result: Any,
             reporter: Any, device: Any, key: str, dist: DistEnv) -> None:
    import torch

    from modelops.trainer import checkpoint, loop
    from modelops.trainer.export import to_torchscript
    from modelops.trainer.publish import publish
    from modelops.triton.signature import Signature

    progress = {"epoch": result.epoch, "epochs": args.epochs, "step": result.step, "loss": result.loss,
                "valAccuracy": loop.finite(result.val_accuracy), "samplesPerSecond": result.samples_per_second}
    reporter.update(phase="Publishing", **progress, force=True)
    test_x = torch.as_tensor(data.test.x, device=device)
    test_accuracy = loop.accuracy(model, test_x, torch.as_tensor(data.test.y, device=device))
    log.info("test accuracy %.4f on %d samples", test_accuracy, len(data.test))
    example = torch.as_tensor((data.test.x if len(data.test) else data.train.x)[:8])
    model_bytes = to_torchscript(model, example)
    signature = Signature.sequence_classifier(data.num_classes) if data.vocabulary is not None else \
        Signature.classifier(data.input_shape, data.num_classes, data.normalization.to_dict())
    evaluation_set, evaluation = held_out_set(data.test.x, data.test.y, model, device)
    metadata = {
        "createdAt": utc_now(),
        "evaluation": evaluation,
        "lineage": lineage(os.environ),
        "framework": {"torch": torch.__version__, "python": platform.python_version()},
        "labels": list(data.class_names),
        "metrics": {"testAccuracy": loop.finite(test_accuracy), "valAccuracy": loop.finite(result.val_accuracy),
                    "trainLoss": loop.finite(result.loss), "epochs": result.epoch, "steps": result.step,
                    "samplesPerSecond": round(result.samples_per_second, 1)},
        "dataset": {**data.describe(), "augmentation": augmentation.to_dict(),
                    "normalization": data.normalization.to_dict()},
        "model": spec.to_dict(),
        "trainer": {"args": {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
                             for k, v in sorted(vars(args).items())},
                    "worldSize": dist.world_size, "localWorldSize": dist.local_world_size,
                    "device": str(device), "runKey": key,
                    "resumedFromEpoch": result.resumed_from_epoch, "stateSha256": result.state_sha256},
    }
    published = publish(args.repository, args.model_name, model_bytes=model_bytes, signature=signature,
                        metadata=metadata, max_batch_size=args.max_batch_size,
                        extra_files={EVAL_FILE: evaluation_set} if evaluation_set else None)
    # The signature lets a ModelService render its config.pbtxt and check what Triton loaded.
    reported_model = {**published.to_dict(), "signature": {k: signature.to_dict()[k] for k in ("inputs", "outputs")},
                      "datasetFingerprint": data.fingerprint}
    final = {"phase": "Succeeded", **progress, "testAccuracy": loop.finite(test_accuracy), "model": reported_model}
    try:
        checkpoint.write_published(args.checkpoint_dir, {"runKey": key, "epochs": args.epochs,
                                                         "model": published.to_dict(), "progress": final})
    except OSError as exc:
        log.warning("could not record the published version in %s: %s", args.checkpoint_dir, exc.strerror)
    reporter.final(**final)


EVAL_FILE = "eval.npz"
EVAL_MAX_SAMPLES = 2048
"""A larger test split is subsampled (seeded) for the evaluation set that travels with the version."""


def held_out_set(x: Any, y: Any, model: Any, device: Any) -> tuple[bytes, dict[str, Any]]:
    """The evaluation set published next to model.pt (raw features: the model normalises itself) and what
    metadata.json says of it, with the model's accuracy on exactly these rows."""
    import io

    import numpy as np
    import torch

    from modelops.trainer import loop

    if len(y) == 0:
        return b"", {}
    rows = np.arange(len(y))
    if len(rows) > EVAL_MAX_SAMPLES:
        rows = np.sort(np.random.default_rng(0).choice(rows, EVAL_MAX_SAMPLES, replace=False))
    # token ids stay int64 (the model's INT64 input); features are float32
    dtype = np.int64 if np.issubdtype(np.asarray(x).dtype, np.integer) else np.float32
    features, labels = np.asarray(x[rows], dtype=dtype), np.asarray(y[rows], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=features, y=labels)
    raw = buffer.getvalue()
    score = loop.accuracy(model, torch.as_tensor(features, device=device), torch.as_tensor(labels, device=device))
    return raw, {"file": EVAL_FILE, "samples": int(len(labels)), "of": int(len(y)), "metric": "accuracy",
                 "accuracy": loop.finite(score), "sha256": hashlib.sha256(raw).hexdigest()}


def lineage(env: Any) -> dict[str, Any]:
    """Who made this version: the TrainingJob (the operator sets these on its pods) and the trainer image."""
    job = {"namespace": env.get("POD_NAMESPACE"), "name": env.get("MODELOPS_JOB_NAME"),
           "uid": env.get("MODELOPS_JOB_UID")}
    found = {"trainingJob": {k: v for k, v in job.items() if v}, "image": env.get("MODELOPS_TRAINER_IMAGE")}
    return {k: v for k, v in found.items() if v}


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 with a one-line reason on stderr for bad input, 2 for bad flags."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    from modelops.trainer import launch

    launcher = launch.should_launch(os.environ)
    label = f"pod {os.environ.get('GROUP_RANK', '0')}" if launcher else f"rank {rank}"
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s [{label}] %(name)s: %(message)s")
    started = time.monotonic()
    try:
        code = launch.launch(argv) if launcher else run(args)
    except TrainerError as exc:
        message = str(exc)
    except OSError as exc:
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    else:
        log.info("done in %.1fs", time.monotonic() - started)
        return code
    print(f"{PROG}: error: {message}", file=sys.stderr)
    write_termination_log(failure_message(message))
    return 1
