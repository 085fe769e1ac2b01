"""Data sets (built-in and user files), cleaning, seeded splits, augmentation settings, normalisation, fingerprints."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelops.trainer import TrainerError

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits", "synthetic-tabular")
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


class Kind(str, Enum):
    """Images are [channels, height, width]; tabular rows are [features]."""

    IMAGE = "image"
    TABULAR = "tabular"


class Missing(str, Enum):
    """What cleaning does with missing feature values (rows without a label are always dropped)."""

    DROP = "drop"
    FILL = "fill"


@dataclass(frozen=True)
class RawData:
    """Features (float32, NaN = missing) and labels as loaded, before cleaning."""

    name: str
    kind: Kind
    x: NDArray[np.float32]
    labels: NDArray[np.int64]  # class indices, -1 = missing
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning did."""

    rows_in: int
    rows_dropped: int
    values_filled: int
    unlabelled_dropped: int

    def to_dict(self) -> dict[str, int]:
        return {"rowsIn": self.rows_in, "rowsDropped": self.rows_dropped,
                "valuesFilled": self.values_filled, "unlabelledDropped": self.unlabelled_dropped}


@dataclass(frozen=True)
class Augmentation:
    """Training-time image augmentation on raw inputs: random shifts and gaussian noise, never flips."""

    max_shift: int = 0
    noise_std: float = 0.0  # in units of the train data's standard deviation
    flips: bool = False  # flips change what a digit means, so they stay off

    @property
    def enabled(self) -> bool:
        return self.max_shift > 0 or self.noise_std > 0

    def to_dict(self) -> dict[str, Any]:
        return {"maxShift": self.max_shift, "noiseStd": self.noise_std, "flips": self.flips}


NO_AUGMENTATION = Augmentation()


def default_augmentation(kind: Kind, requested: bool | None) -> Augmentation:
    """Images: 1-pixel shifts and light noise unless --no-augment; tabular: none (--augment is ignored, with a log line)."""
    if kind is Kind.TABULAR:
        if requested:
            log.info("--augment ignored: augmentation applies to image data only")
        return NO_AUGMENTATION
    return NO_AUGMENTATION if requested is False else Augmentation(max_shift=1, noise_std=0.05)


@dataclass(frozen=True)
class Normalization:
    """Per-channel (images) or per-feature (tabular) mean and std of the train split."""

    mean: NDArray[np.float32]  # broadcastable to one sample's shape
    std: NDArray[np.float32]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.reshape(-1).tolist(), "std": self.std.reshape(-1).tolist(),
                "shape": list(self.mean.shape)}


@dataclass(frozen=True)
class Split:
    """Features and labels of one split."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Prepared:
    """Everything training needs from the data, and what metadata records about it."""

    name: str
    kind: Kind
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    normalization: Normalization
    fingerprint: str
    cleaning: CleaningReport

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "fingerprint": self.fingerprint,
                "inputShape": list(self.input_shape), "classes": list(self.class_names),
                "samples": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
                "cleaning": self.cleaning.to_dict()}


# ---------------------------------------------------------------- loading

def load_builtin(name: str, seed: int) -> RawData:
    """`digits` (scikit-learn's bundled 8x8 images) or `synthetic-tabular` (generated from `seed`)."""
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.images.astype(np.float32)[:, None, :, :]  # [N, 1, 8, 8], values 0..16
        return RawData(name, Kind.IMAGE, x, digits.target.astype(np.int64),
                       tuple(str(c) for c in digits.target_names))
    if name == "synthetic-tabular":
        from sklearn.datasets import make_classification

        x, y = make_classification(n_samples=2000, n_features=20, n_informative=12, n_redundant=4,
                                   n_classes=4, class_sep=1.5, random_state=seed)
        return RawData(name, Kind.TABULAR, x.astype(np.float32), y.astype(np.int64), ("0", "1", "2", "3"))
    raise TrainerError(f"unknown data set {name!r}; choose from {', '.join(BUILTIN_DATASETS)}")


def load_path(path: str | Path, label_column: str | None = None) -> RawData:
    """A user data set: `.csv` with a header and a label column, or `.npz` with arrays `x` and `y`."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if not label_column:
            raise TrainerError("--label-column is required for .csv data")
        return _load_csv(path, label_column)
    if suffix == ".npz":
        return _load_npz(path)
    raise TrainerError(f"unsupported data file {path.name}: use .csv or .npz")


def _encode_labels(values: list[str]) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """Class indices for label strings (missing -> -1); numeric labels sort numerically."""
    present = sorted({v for v in values if v.strip().lower() not in _MISSING_TOKENS})

    def numeric(v: str) -> float | None:
        try:
            return float(v)
        except ValueError:
            return None

    if present and all(numeric(v) is not None for v in present):
        present.sort(key=lambda v: numeric(v) or 0.0)
        canonical = {v: (str(int(f)) if (f := float(v)).is_integer() else v) for v in present}
    else:
        canonical = {v: v.strip() for v in present}
    names = tuple(dict.fromkeys(canonical[v] for v in present))
    index = {name: i for i, name in enumerate(names)}
    codes = np.array([index[canonical[v]] if v in canonical else -1 for v in values], dtype=np.int64)
    return codes, names


def _load_csv(path: Path, label_column: str) -> RawData:
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainerError(f"cannot read {path}: {exc}") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise TrainerError(f"{path} is empty (a header row is required)")
    header = [cell.strip() for cell in rows[0]]
    if label_column not in header:
        raise TrainerError(f"label column {label_column!r} not in {path.name} (columns: {', '.join(header)})")
    if len(header) < 2:
        raise TrainerError(f"{path.name} has no feature columns besides {label_column!r}")
    label_at = header.index(label_column)
    body = [row for row in rows[1:] if any(cell.strip() for cell in row)]
    if not body:
        raise TrainerError(f"{path} has a header but no data rows")
    features = np.full((len(body), len(header) - 1), np.nan, dtype=np.float32)
    labels: list[str] = []
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise TrainerError(f"{path.name} line {r}: {len(row)} fields, header has {len(header)}")
        labels.append(row[label_at])
        for c, cell in enumerate(row[:label_at] + row[label_at + 1:]):
            if cell.strip().lower() in _MISSING_TOKENS:
                continue
            try:
                features[r - 2, c] = float(cell)
            except ValueError:
                raise TrainerError(f"{path.name} line {r}: non-numeric value {cell!r} in a feature column") from None
    codes, names = _encode_labels(labels)
    return RawData(path.stem, Kind.TABULAR, features, codes, names)


def _load_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise TrainerError(f"{path.name} must hold arrays 'x' and 'y' (found: {', '.join(archive.files)})")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise TrainerError(f"cannot read {path}: {exc}") from None
    if x.ndim not in (2, 3, 4) or y.ndim != 1 or len(x) != len(y):
        raise TrainerError(f"{path.name}: need x [N, features], [N, H, W] or [N, C, H, W] and y [N]; "
                           f"got x {list(x.shape)}, y {list(y.shape)}")
    try:
        features = x.astype(np.float32)
    except (TypeError, ValueError):
        raise TrainerError(f"{path.name}: x is not numeric ({x.dtype})") from None
    kind = Kind.TABULAR if x.ndim == 2 else Kind.IMAGE
    if x.ndim == 3:
        features = features[:, None, :, :]
    label_text = ["" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in y.tolist()]
    codes, names = _encode_labels(label_text)
    return RawData(path.stem, kind, features, codes, names)


# ---------------------------------------------------------------- cleaning, split, statistics

def clean(raw: RawData, missing: Missing) -> tuple[RawData, CleaningReport]:
    """Drop unlabelled rows, then drop rows with missing (NaN/inf) features or fill them with the column median."""
    x = raw.x.copy()
    x[~np.isfinite(x)] = np.nan
    labelled = raw.labels >= 0
    x, labels = x[labelled], raw.labels[labelled]
    flat = x.reshape(len(x), -1)
    rows_dropped, filled = 0, 0
    if missing is Missing.DROP:
        keep = ~np.isnan(flat).any(axis=1)
        rows_dropped = int((~keep).sum())
        x, labels = x[keep], labels[keep]
    else:
        holes = np.isnan(flat)
        filled = int(holes.sum())
        if filled:
            if len(flat) == 0 or holes.all(axis=0).any():
                raise TrainerError("cannot fill missing values: at least one feature has no values at all")
            medians = np.nanmedian(flat, axis=0)
            flat = np.where(holes, medians[None, :], flat)
            x = flat.reshape(x.shape).astype(np.float32)
    report = CleaningReport(rows_in=len(raw.labels), rows_dropped=rows_dropped, values_filled=filled,
                            unlabelled_dropped=int((~labelled).sum()))
    if len(labels) == 0:
        raise TrainerError(f"no usable rows left after cleaning {raw.name} "
                           f"({report.rows_in} rows, {report.unlabelled_dropped} unlabelled, "
                           f"{report.rows_dropped} with missing values; try --missing fill)")
    present = np.unique(labels)
    if len(present) < 2:
        raise TrainerError(f"{raw.name} has a single class after cleaning; a classifier needs at least two")
    log.info("cleaning %s: %d rows in, %d unlabelled dropped, %d dropped for missing values, %d values filled",
             raw.name, report.rows_in, report.unlabelled_dropped, report.rows_dropped, report.values_filled)
    return RawData(raw.name, raw.kind, np.ascontiguousarray(x, dtype=np.float32), labels, raw.class_names), report


def fingerprint(x: NDArray[Any], y: NDArray[Any]) -> str:
    """sha256 over shapes, dtypes and bytes of the cleaned arrays."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)):
        digest.update(f"{array.dtype.str}{list(array.shape)}".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def split(x: NDArray[np.float32], y: NDArray[np.int64], *, val_fraction: float, test_fraction: float,
          seed: int) -> tuple[Split, Split, Split]:
    """A seeded random train/validation/test split."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise TrainerError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n - n_test - n_val < 1 or (test_fraction > 0 and n_test == 0) or (val_fraction > 0 and n_val == 0):
        raise TrainerError(f"{n} rows are too few for the requested validation/test fractions")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test])


def normalization(kind: Kind, train_x: NDArray[np.float32]) -> Normalization:
    """Per-channel stats for images, per-feature stats for tabular data; a zero std becomes 1."""
    axes = (0, 2, 3) if kind is Kind.IMAGE else (0,)
    mean = train_x.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
    std = train_x.std(axis=axes, keepdims=True, dtype=np.float64)[0]
    std = np.where(std < 1e-6, 1.0, std)
    return Normalization(mean.astype(np.float32), std.astype(np.float32))


def prepare(raw: RawData, *, missing: Missing, val_fraction: float, test_fraction: float, seed: int) -> Prepared:
    """Clean, fingerprint, split and compute normalisation statistics on the train split."""
    cleaned, report = clean(raw, missing)
    train, val, test = split(cleaned.x, cleaned.labels, val_fraction=val_fraction,
                             test_fraction=test_fraction, seed=seed)
    return Prepared(name=raw.name, kind=raw.kind, class_names=raw.class_names, train=train, val=val, test=test,
                    normalization=normalization(raw.kind, train.x),
                    fingerprint=fingerprint(cleaned.x, cleaned.labels), cleaning=report)

