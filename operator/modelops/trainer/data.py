"""Data sets (built-in and user files), cleaning, seeded splits, augmentation settings, normalisation, fingerprints.

Sequences are token ids: 0 is padding (PAD_ID), 1 stands for an unknown token (UNK_ID), real tokens are
2..vocab_size-1. They are held as int64 [N, length] arrays padded with 0 at the end; a row's length is
the position after its last non-pad token. Serving uses the same ids (docs/serving.md)."""

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

BUILTIN_DATASETS = ("digits", "synthetic-tabular", "synthetic-sequence")
PAD_ID = 0
UNK_ID = 1
FIRST_TOKEN = 2
DEFAULT_MAX_LENGTH = 64
SEQUENCE_MODELS = ("gru", "transformer")  # the architectures that read token ids
_MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


class Kind(str, Enum):
    """Images are [channels, height, width]; tabular rows are [features]; sequences are [length] token ids."""

    IMAGE = "image"
    TABULAR = "tabular"
    SEQUENCE = "sequence"


class Missing(str, Enum):
    """What cleaning does with missing feature values (rows without a label are always dropped)."""

    DROP = "drop"
    FILL = "fill"


@dataclass(frozen=True)
class RawData:
    """Features (float32, NaN = missing) and labels as loaded, before cleaning."""

    name: str
    kind: Kind
    x: NDArray[Any]  # float32 (NaN = missing); int64 token ids for sequences
    labels: NDArray[np.int64]  # class indices, -1 = missing
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning did; `sequences` for token data (empty and too-long rows dropped, unknown tokens)."""

    rows_in: int
    rows_dropped: int
    values_filled: int
    unlabelled_dropped: int
    sequences: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"rowsIn": self.rows_in, "rowsDropped": self.rows_dropped,
                                  "valuesFilled": self.values_filled, "unlabelledDropped": self.unlabelled_dropped}
        return report | ({"sequences": dict(self.sequences)} if self.sequences is not None else {})


@dataclass(frozen=True)
class Vocabulary:
    """What a sequence model needs of its data: ids below vocab_size, at most max_length tokens a row."""

    vocab_size: int
    max_length: int

    def to_dict(self) -> dict[str, int]:
        return {"vocabSize": self.vocab_size, "maxLength": self.max_length, "padId": PAD_ID, "unknownId": UNK_ID}


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
    """Images: 1-pixel shifts and light noise unless --no-augment; tabular and sequences: none (--augment is
    ignored, with a log line)."""
    if kind is not Kind.IMAGE:
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

    x: NDArray[Any]
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
    vocabulary: Vocabulary | None = None  # sequences only

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's dims; a sequence's length is variable (-1)."""
        return (-1,) if self.kind is Kind.SEQUENCE else tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "fingerprint": self.fingerprint,
                "inputShape": list(self.input_shape), "classes": list(self.class_names),
                "samples": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
                "cleaning": self.cleaning.to_dict(),
                **({"vocabulary": self.vocabulary.to_dict()} if self.vocabulary else {})}


# ---------------------------------------------------------------- loading

def load_builtin(name: str, seed: int) -> RawData:
    """`digits` (scikit-learn's bundled 8x8 images), `synthetic-tabular` or `synthetic-sequence` (generated from
    `seed`)."""
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
    if name == "synthetic-sequence":
        tokens, labels = synthetic_sequences(2000, seed)
        return RawData(name, Kind.SEQUENCE, tokens, labels, SEQUENCE_CLASSES)
    raise TrainerError(f"unknown data set {name!r}; choose from {', '.join(BUILTIN_DATASETS)}")


# The built-in sequence set: filler tokens and four markers A, B, C, D, each once, at random places. The
# class is 2 * (A before B) + (C before D): every sequence holds the same markers, so token counts say
# nothing about the class (a bag-of-tokens model stays at chance, 1/4) and only their order does.
SEQUENCE_CLASSES = ("B<A,D<C", "B<A,C<D", "A<B,D<C", "A<B,C<D")
SEQUENCE_FILLERS = 12  # ids 2..13
SEQUENCE_MARKERS = (14, 15, 16, 17)  # A, B, C, D
SEQUENCE_LENGTHS = (6, 16)  # inclusive


def synthetic_sequences(n: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """`n` seeded sequences of the built-in order task, zero-padded to the longest, and their classes."""
    rng = np.random.default_rng(seed)
    low, high = SEQUENCE_LENGTHS
    tokens = np.zeros((n, high), dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(low, high + 1))
        sequence = rng.integers(FIRST_TOKEN, FIRST_TOKEN + SEQUENCE_FILLERS, size=length)
        places = rng.choice(length, size=len(SEQUENCE_MARKERS), replace=False)
        sequence[places] = SEQUENCE_MARKERS
        tokens[row, :length] = sequence
        a, b, c, d = places
        labels[row] = 2 * int(a < b) + int(c < d)
    return tokens, labels


def load_path(path: str | Path, label_column: str | None = None, *, sequence: bool = False) -> RawData:
    """A user data set: `.csv` with a header and a label column, or `.npz` with arrays `x` and `y`.
    `sequence`: token ids instead of features -- a .csv's one other column holds space-separated ids, an
    .npz's x is an integer [N, length] array padded with 0 at the end."""
    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if not label_column:
            raise TrainerError("--label-column is required for .csv data")
        return _load_token_csv(path, label_column) if sequence else _load_csv(path, label_column)
    if suffix == ".npz":
        return _load_token_npz(path) if sequence else _load_npz(path)
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


def _token_array(rows: list[list[int]]) -> NDArray[np.int64]:
    tokens = np.full((len(rows), max((len(r) for r in rows), default=0)), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
    return tokens


def _load_token_csv(path: Path, label_column: str) -> RawData:
    """Columns: the label and one column of space-separated token ids (an empty cell is an empty sequence)."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainerError(f"cannot read {path}: {exc}") from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    if label_column not in header or len(header) != 2:
        raise TrainerError(f"{path.name}: a sequence .csv has two columns, {label_column!r} and the token ids "
                           f"(found: {', '.join(header) or 'no header'})")
    label_at = header.index(label_column)
    labels: list[str] = []
    sequences: list[list[int]] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise TrainerError(f"{path.name} line {line}: {len(row)} fields, header has 2")
        try:
            sequences.append([int(token) for token in row[1 - label_at].split()])
        except ValueError:
            raise TrainerError(f"{path.name} line {line}: token ids must be integers, got {row[1 - label_at]!r}") \
                from None
        labels.append(row[label_at])
    if not labels:
        raise TrainerError(f"{path} has a header but no data rows")
    codes, names = _encode_labels(labels)
    # A 0 inside a row would read as padding: marked invalid (-1), cleaning counts it as an unknown token.
    tokens = _token_array([[-1 if t == PAD_ID else t for t in s] for s in sequences])
    return RawData(path.stem, Kind.SEQUENCE, tokens, codes, names)


def _load_token_npz(path: Path) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive or "y" not in archive:
                raise TrainerError(f"{path.name} must hold arrays 'x' and 'y' (found: {', '.join(archive.files)})")
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise TrainerError(f"cannot read {path}: {exc}") from None
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or not np.issubdtype(x.dtype, np.integer):
        raise TrainerError(f"{path.name}: sequences need integer token ids x [N, length] (0-padded) and y [N]; "
                           f"got x {list(x.shape)} {x.dtype}, y {list(y.shape)}")
    tokens = x.astype(np.int64)
    lengths = sequence_lengths(tokens)
    inside = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    tokens[inside & (tokens == PAD_ID)] = -1  # a 0 before the last token is not padding: an unknown token
    label_text = ["" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in y.tolist()]
    codes, names = _encode_labels(label_text)
    return RawData(path.stem, Kind.SEQUENCE, tokens, codes, names)


def sequence_lengths(tokens: NDArray[np.int64]) -> NDArray[np.int64]:
    """Each row's length: the position after its last non-pad token (0 for an all-pad row)."""
    if tokens.shape[1] == 0:
        return np.zeros(len(tokens), dtype=np.int64)
    nonpad = tokens != PAD_ID
    last = tokens.shape[1] - np.argmax(nonpad[:, ::-1], axis=1)
    return np.where(nonpad.any(axis=1), last, 0).astype(np.int64)


# ---------------------------------------------------------------- cleaning, split, statistics

def clean_sequences(raw: RawData, *, max_length: int, vocab_size: int | None) -> tuple[RawData, CleaningReport,
                                                                                     Vocabulary]:
    """Drop unlabelled, empty and too long (> max_length) rows; ids outside 2..vocab_size-1 become UNK_ID
    (counted). Without vocab_size the vocabulary is every id the kept rows use."""
    if max_length < 1:
        raise TrainerError("--max-length must be >= 1")
    if vocab_size is not None and vocab_size <= FIRST_TOKEN:
        raise TrainerError(f"--vocab-size must be above {FIRST_TOKEN} (ids 0 and 1 are padding and unknown)")
    labelled = raw.labels >= 0
    tokens, labels = raw.x[labelled].astype(np.int64), raw.labels[labelled]
    lengths = sequence_lengths(tokens)
    empty, too_long = lengths == 0, lengths > max_length
    keep = ~empty & ~too_long
    tokens, labels, lengths = tokens[keep], labels[keep], lengths[keep]
    tokens = tokens[:, :int(lengths.max(initial=0))]
    inside = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    if vocab_size is None:
        vocab_size = max(int(tokens.max(initial=UNK_ID)) + 1, FIRST_TOKEN + 1)
    unknown = inside & ((tokens < FIRST_TOKEN) | (tokens >= vocab_size)) & (tokens != UNK_ID)
    tokens = np.where(unknown, UNK_ID, tokens)
    stats = {"emptyDropped": int(empty.sum()), "tooLongDropped": int(too_long.sum()),
             "unknownTokens": int(unknown.sum()), "maxLength": max_length}
    report = CleaningReport(rows_in=len(raw.labels), rows_dropped=int((~keep).sum()), values_filled=0,
                            unlabelled_dropped=int((~labelled).sum()), sequences=stats)
    if len(labels) == 0:
        raise TrainerError(f"no usable rows left after cleaning {raw.name} ({report.rows_in} rows, "
                           f"{report.unlabelled_dropped} unlabelled, {stats['emptyDropped']} empty, "
                           f"{stats['tooLongDropped']} longer than {max_length} tokens; see --max-length)")
    if len(np.unique(labels)) < 2:
        raise TrainerError(f"{raw.name} has a single class after cleaning; a classifier needs at least two")
    log.info("cleaning %s: %d rows in, %d unlabelled, %d empty, %d too long dropped, %d unknown tokens",
             raw.name, report.rows_in, report.unlabelled_dropped, stats["emptyDropped"], stats["tooLongDropped"],
             stats["unknownTokens"])
    cleaned = RawData(raw.name, raw.kind, np.ascontiguousarray(tokens), labels, raw.class_names)
    return cleaned, report, Vocabulary(vocab_size=vocab_size, max_length=max_length)


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


def prepare(raw: RawData, *, missing: Missing, val_fraction: float, test_fraction: float, seed: int,
            max_length: int = DEFAULT_MAX_LENGTH, vocab_size: int | None = None) -> Prepared:
    """Clean, fingerprint, split and compute normalisation statistics on the train split (sequences: token
    cleaning and a vocabulary instead; token ids are not normalised)."""
    vocabulary = None
    if raw.kind is Kind.SEQUENCE:
        cleaned, report, vocabulary = clean_sequences(raw, max_length=max_length, vocab_size=vocab_size)
    else:
        cleaned, report = clean(raw, missing)
    train, val, test = split(cleaned.x, cleaned.labels, val_fraction=val_fraction,
                             test_fraction=test_fraction, seed=seed)
    norm = normalization(raw.kind, train.x) if vocabulary is None else \
        Normalization(np.zeros((), np.float32), np.ones((), np.float32))
    return Prepared(name=raw.name, kind=raw.kind, class_names=raw.class_names, train=train, val=val, test=test,
                    normalization=norm, fingerprint=fingerprint(cleaned.x, cleaned.labels), cleaning=report,
                    vocabulary=vocabulary)

