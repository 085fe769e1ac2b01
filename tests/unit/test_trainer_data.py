"""Unit tests of the trainer's data pipeline: loading, cleaning, split, normalisation, fingerprint, augmentation choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelops.trainer import TrainerError
from modelops.trainer.data import (Kind, Missing, clean, default_augmentation, fingerprint, load_builtin, load_path,
                                   normalization, prepare, split)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_digits_are_images_with_ten_classes() -> None:
    raw = load_builtin("digits", seed=0)
    assert raw.kind is Kind.IMAGE
    assert raw.x.shape == (1797, 1, 8, 8) and raw.x.dtype == np.float32
    assert raw.class_names == tuple(str(i) for i in range(10))


def test_synthetic_tabular_is_seeded() -> None:
    a, b, c = (load_builtin("synthetic-tabular", seed=s) for s in (1, 1, 2))
    assert a.kind is Kind.TABULAR and a.x.shape == (2000, 20)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_unknown_builtin_dataset() -> None:
    with pytest.raises(TrainerError, match="unknown data set 'mnist'"):
        load_builtin("mnist", seed=0)


def test_csv_cleaning_drop_and_fill(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "a,label,b\n1,x,2\n,y,4\n3,,6\n5,y,NaN\n7,x,8\n9,y,10\n")
    raw = load_path(path, "label")
    assert raw.class_names == ("x", "y") and raw.x.shape == (6, 2)

    dropped, report = clean(raw, Missing.DROP)
    assert (report.rows_in, report.unlabelled_dropped, report.rows_dropped, report.values_filled) == (6, 1, 2, 0)
    assert dropped.x.tolist() == [[1, 2], [7, 8], [9, 10]]

    filled, report = clean(raw, Missing.FILL)
    assert (report.unlabelled_dropped, report.rows_dropped, report.values_filled) == (1, 0, 2)
    assert filled.x.tolist() == [[1, 2], [6, 4], [5, 6], [7, 8], [9, 10]]  # medians of the labelled rows
    assert filled.labels.tolist() == [0, 1, 1, 0, 1]


def test_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", "f,label\n1,10\n2,2\n3,2.0\n")
    raw = load_path(path, "label")
    assert raw.class_names == ("2", "10") and raw.labels.tolist() == [1, 0, 0]


@pytest.mark.parametrize("text, label, message", [
    ("a,b\n1,2\n", "label", "label column 'label' not in"),
    ("a,label\n1,x\nzz,y\n", "label", "non-numeric value 'zz'"),
    ("a,label\n1,x,3\n", "label", "3 fields, header has 2"),
    ("", "label", "is empty"),
    ("a,label\n", "label", "no data rows"),
])
def test_bad_csv(tmp_path: Path, text: str, label: str, message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        load_path(write_csv(tmp_path / "d.csv", text), label)


def test_missing_file_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="does not exist"):
        load_path(tmp_path / "nope.csv", "label")
    with pytest.raises(TrainerError, match="use .csv or .npz"):
        load_path(write_csv(tmp_path / "d.txt", "x"), None)
    with pytest.raises(TrainerError, match="--label-column is required"):
        load_path(write_csv(tmp_path / "d.csv", "a,label\n1,2\n"), None)


def test_all_nan_data_is_rejected(tmp_path: Path) -> None:
    raw = load_path(write_csv(tmp_path / "d.csv", "a,b,label\n,,x\nnan,NA,y\n"), "label")
    with pytest.raises(TrainerError, match="no usable rows left"):
        clean(raw, Missing.DROP)
    with pytest.raises(TrainerError, match="no values at all"):
        clean(raw, Missing.FILL)


def test_npz_images_and_tabular(tmp_path: Path) -> None:
    np.savez(tmp_path / "img.npz", x=np.zeros((6, 5, 5)), y=np.array([0, 1, 2, 0, 1, 2]))
    raw = load_path(tmp_path / "img.npz")
    assert raw.kind is Kind.IMAGE and raw.x.shape == (6, 1, 5, 5)
    np.savez(tmp_path / "tab.npz", x=np.ones((4, 3)), y=np.array([5, 7, 5, 7]))
    raw = load_path(tmp_path / "tab.npz")
    assert raw.kind is Kind.TABULAR and raw.labels.tolist() == [0, 1, 0, 1] and raw.class_names == ("5", "7")
    np.savez(tmp_path / "bad.npz", features=np.ones((4, 3)))
    with pytest.raises(TrainerError, match="must hold arrays 'x' and 'y'"):
        load_path(tmp_path / "bad.npz")


def test_split_is_seeded_disjoint_and_sized() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100) % 2
    train, val, test = split(x, y, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    ids = np.concatenate([train.x, val.x, test.x])[:, 0]
    assert sorted(ids.tolist()) == list(range(100))
    again = split(x, y, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert np.array_equal(again[2].x, test.x)
    assert not np.array_equal(split(x, y, val_fraction=0.1, test_fraction=0.2, seed=4)[2].x, test.x)
    with pytest.raises(TrainerError, match="sum to less than 1"):
        split(x, y, val_fraction=0.5, test_fraction=0.5, seed=0)


def test_normalization_uses_train_statistics() -> None:
    images = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 2, 4, 4)).astype(np.float32)
    stats = normalization(Kind.IMAGE, images)
    assert stats.mean.shape == (2, 1, 1)
    assert np.allclose(stats.mean, 3.0, atol=0.1) and np.allclose(stats.std, 2.0, atol=0.1)
    constant = normalization(Kind.TABULAR, np.ones((10, 3), dtype=np.float32))
    assert constant.std.tolist() == [1.0, 1.0, 1.0]  # no division by zero
    assert constant.to_dict()["shape"] == [3]


def test_fingerprint_is_stable_and_sensitive() -> None:
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, 0])
    assert fingerprint(x, y) == fingerprint(x.copy(), y.copy())
    assert fingerprint(x, y).startswith("sha256:") and len(fingerprint(x, y)) == 71
    x2 = x.copy()
    x2[0, 0] = 1
    assert fingerprint(x2, y) != fingerprint(x, y)
    assert fingerprint(x, np.array([0, 1, 1])) != fingerprint(x, y)


def test_prepare_digits() -> None:
    data = prepare(load_builtin("digits", 0), missing=Missing.DROP, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.describe()["cleaning"] == {"rowsIn": 1797, "rowsDropped": 0, "valuesFilled": 0, "unlabelledDropped": 0}


def test_augmentation_choice_is_explicit() -> None:
    image = default_augmentation(Kind.IMAGE, None)
    assert image.enabled and image.max_shift == 1 and image.flips is False
    assert not default_augmentation(Kind.IMAGE, False).enabled
    assert not default_augmentation(Kind.TABULAR, True).enabled


def test_synthetic_sequences_are_seeded_and_labelled_by_order() -> None:
    from modelops.trainer.data import SEQUENCE_MARKERS

    a, b, c = (load_builtin("synthetic-sequence", seed=s) for s in (1, 1, 2))
    assert a.kind is Kind.SEQUENCE and a.x.dtype == np.int64 and a.x.shape[0] == 2000
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    for row, label in zip(a.x[:50], a.labels[:50], strict=True):
        where = {int(t): i for i, t in enumerate(row) if t in SEQUENCE_MARKERS}
        first_a, first_b, first_c, first_d = (where[m] for m in SEQUENCE_MARKERS)
        assert label == 2 * (first_a < first_b) + (first_c < first_d)
        # every row holds each marker once: the token counts carry no class information
        assert sorted(where) == list(SEQUENCE_MARKERS)
    assert set(np.unique(a.labels)) == {0, 1, 2, 3}


def test_token_csv_cleaning_reports_empty_too_long_and_unknown(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "label,tokens\npos,2 3 4\nneg,5 6\nneg,\npos,2 3 4 5 6 7\n"
                     ",2 3\nneg,9 0 2\nneg,99 2\n")
    raw = load_path(path, "label", sequence=True)
    assert raw.kind is Kind.SEQUENCE
    data = prepare(raw, missing=Missing.DROP, val_fraction=0, test_fraction=0, seed=0, max_length=4, vocab_size=10)
    report = data.cleaning.to_dict()
    assert report["rowsIn"] == 7 and report["unlabelledDropped"] == 1
    # the empty row and the 6-token row go; 0 inside a row and 99 (>= vocab 10) become the unknown id 1
    assert report["sequences"] == {"emptyDropped": 1, "tooLongDropped": 1, "unknownTokens": 2, "maxLength": 4}
    assert report["rowsDropped"] == 2
    rows = sorted(tuple(int(t) for t in r if t) for r in data.train.x)
    assert rows == sorted([(2, 3, 4), (5, 6), (9, 1, 2), (1, 2)])
    assert data.input_shape == (-1,) and data.vocabulary is not None and data.vocabulary.vocab_size == 10
    assert data.describe()["vocabulary"] == {"vocabSize": 10, "maxLength": 4, "padId": 0, "unknownId": 1}


def test_token_npz_padding_and_default_vocabulary(tmp_path: Path) -> None:
    x = np.array([[2, 5, 0, 0], [3, 0, 4, 0], [0, 0, 0, 0], [7, 7, 7, 7]])
    np.savez(tmp_path / "s.npz", x=x, y=np.array([0, 1, 0, 1]))
    data = prepare(load_path(tmp_path / "s.npz", sequence=True), missing=Missing.DROP, val_fraction=0,
                   test_fraction=0, seed=0)
    assert data.vocabulary is not None and data.vocabulary.vocab_size == 8  # the largest id seen + 1
    assert data.cleaning.to_dict()["sequences"]["emptyDropped"] == 1
    assert sorted(tuple(int(t) for t in r) for r in data.train.x) == [(2, 5, 0, 0), (3, 1, 4, 0), (7, 7, 7, 7)]


@pytest.mark.parametrize("text, message", [
    ("label,a,b\nx,1,2\n", "a sequence .csv has two columns"),
    ("label,tokens\nx,1 two\n", "token ids must be integers"),
])
def test_bad_token_csv(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        load_path(write_csv(tmp_path / "s.csv", text), "label", sequence=True)


def test_float_npz_is_not_a_sequence_set(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 4), np.float32), y=np.array([0, 1, 0]))
    with pytest.raises(TrainerError, match="integer token ids"):
        load_path(tmp_path / "s.npz", sequence=True)


def test_sequences_longer_than_everything_leave_nothing(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "label,tokens\na,2 3 4\nb,2 3 4 5\n")
    with pytest.raises(TrainerError, match="longer than 2 tokens"):
        prepare(load_path(path, "label", sequence=True), missing=Missing.DROP, val_fraction=0, test_fraction=0,
                seed=0, max_length=2)
