"""Fixed splits of prepared data sets: the source's train/val, the target's few-shot train, unlabeled
and test, and the pruned source a teacher trains on."""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from tlpipe.data.images import subset
from tlpipe.data.storage import LABEL, as_table, labels_of, table_fingerprint


def _class_permutations(ds: datasets.Dataset, seed: int) -> list[np.ndarray]:
    """Row indices of each class (class-id order), each shuffled by one seeded generator."""
    return class_permutations(labels_of(ds), ds.features[LABEL].num_classes, seed)


def class_permutations(labels: np.ndarray, num_classes: int, seed: int) -> list[np.ndarray]:
    """Row indices of each class (class-id order), each shuffled by one seeded generator."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def _select(ds: datasets.Dataset, parts: list[np.ndarray]) -> datasets.Dataset:
    # Sorted rows keep the prepared order (class by class); training shuffles on its own.
    rows = np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *parts]))
    # Arrow's take copies the rows into a table of their own. `Dataset.select` would keep an
    # indices mapping instead, which datasets resolves row by row (one Array3D deserialisation
    # each) when the split is hashed and saved: 16 of the stage's 19 s for the built-in source.
    table = as_table(ds).take(pa.array(rows, type=pa.int64()))
    return datasets.Dataset(InMemoryTable(table), info=ds.info.copy(), fingerprint=table_fingerprint(table))


def split_source(ds: datasets.Dataset, *, val_fraction: float, seed: int) -> datasets.DatasetDict:
    """A fixed, stratified train/val split of the source.

    Args:
        ds: A prepared dataset.
        val_fraction: Share of each class held out, in [0, 1); with > 0 every class keeps at least
            one validation and one training image (when it has two).
        seed: Seed of the split.

    Returns:
        A DatasetDict with `train` and `val`.
    """
    val = val_rows(labels_of(ds), ds.features[LABEL].num_classes, val_fraction=val_fraction, seed=seed)
    train = np.setdiff1d(np.arange(len(ds)), val)
    return datasets.DatasetDict(train=_select(ds, [train]), val=_select(ds, [val]))


def val_rows(labels: np.ndarray, num_classes: int, *, val_fraction: float, seed: int) -> np.ndarray:
    """The sorted rows of the source's validation split (see `split_source`), from the labels alone."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    val = []
    for rows in class_permutations(labels, num_classes, seed):
        n_val = max(round(val_fraction * len(rows)), 1) if val_fraction else 0
        n_val = max(min(n_val, len(rows) - 1), 0)  # a class keeps at least one training image
        val.append(rows[:n_val])
    return np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *val]))


def split_target(
    ds: datasets.Dataset, *, shots_per_class: int, test_fraction: float, seed: int,
    test: datasets.Dataset | None = None,
) -> datasets.DatasetDict:  # fmt: skip
    """A fixed few-shot split of the target.

    Args:
        ds: A prepared dataset (the train pool, plus the test images when `test` is None).
        shots_per_class: Labeled `train` images per class.
        test_fraction: Share of each class held out as `test`, in (0, 1); unused with `test`.
        seed: Seed of the split.
        test: The dataset's own test split, used as `test` as it is.

    Returns:
        A DatasetDict with `train` (exactly `shots_per_class` per class), `unlabeled` (the rest of
        the pool, labels kept but not for training) and `test`.
    """
    names = ds.features[LABEL].names
    if test is not None and test.features[LABEL].names != names:
        raise ValueError("the test split's class names differ from the train split's")
    if test is None and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    if shots_per_class < 1:
        raise ValueError(f"shots_per_class={shots_per_class} must be >= 1")
    permutations = _class_permutations(ds, seed)
    fraction = 0.0 if test is not None else test_fraction
    n_tests = [max(round(fraction * len(rows)), 1) if fraction else 0 for rows in permutations]
    pools = [rows[n_test:] for rows, n_test in zip(permutations, n_tests, strict=True)]
    smallest = min(range(len(pools)), key=lambda c: len(pools[c]))
    if shots_per_class > len(pools[smallest]):
        raise ValueError(
            f"shots_per_class={shots_per_class} but class {names[smallest]!r} has only "
            f"{len(pools[smallest])} images in the train pool (max {len(pools[smallest])})"
        )
    held_out = [rows[:n_test] for rows, n_test in zip(permutations, n_tests, strict=True)]
    return datasets.DatasetDict(
        train=_select(ds, [pool[:shots_per_class] for pool in pools]),
        unlabeled=_select(ds, [pool[shots_per_class:] for pool in pools]),
        test=test if test is not None else _select(ds, held_out),
    )


def remap_labels(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Source class ids -> 0..K-1 in the order of `kept` (sorted ids)."""
    lookup = np.full(int(max(labels.max(), kept.max())) + 1, -1, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))
    return lookup[labels]


def pruned_split(train: tuple, val: tuple, kept: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    """(train, val, classes) of the pruned source: the kept train images with their labels remapped
    to 0..K-1 over the classes they cover, and the val images of those classes. Images read by index
    (`tlpipe.data.images`) stay views: nothing is copied."""
    images, labels = train
    classes = np.unique(labels[kept])
    in_val = np.flatnonzero(np.isin(val[1], classes))
    return ((subset(images, kept), remap_labels(labels[kept], classes)),
            (subset(val[0], in_val), remap_labels(val[1][in_val], classes)), classes)
