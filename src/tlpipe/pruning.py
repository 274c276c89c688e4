"""Target-aware source pruning at class level.

Implements the label-mapping (LM) selection of DP4TL (Zhang et al., "Selectivity Drives
Productivity: Efficient Dataset Pruning for Enhanced Transfer Learning", NeurIPS 2023, Sec. 4):
a surrogate source classifier is run on the target training images, every image votes for its
top-1 source class, and the source classes with the most votes are kept. A uniformly random
class subset is provided as the baseline the paper compares against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("lm", "random")


@dataclass(frozen=True)
class ClassSelection:
    """Which source classes survive pruning, and why.

    Attributes:
        kept: int64 [K] kept class ids, sorted ascending.
        ranking: int64 [C] every class id, most preferred first; `kept` is its first K entries.
        votes: int64 [C] top-1 votes per class (LM only, else None).
        psum: float64 [C] summed softmax probability per class (LM only, else None).
        ratio: the pruning ratio, the fraction of classes dropped.
        method: "lm" or "random".
    """

    kept: np.ndarray
    ranking: np.ndarray
    votes: np.ndarray | None
    psum: np.ndarray | None
    ratio: float
    method: str

    @property
    def num_kept(self) -> int:
        """Number of kept classes K."""
        return int(self.kept.size)

    @property
    def num_classes(self) -> int:
        """Number of source classes C before pruning."""
        return int(self.ranking.size)


def _as_numpy_logits(logits) -> np.ndarray:
    """Returns the logits as a 2-D numpy array, keeping their dtype (float32 stays float32)."""
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty 2-D array [N_target, C], got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    return logits


def count_label_votes(logits) -> tuple[np.ndarray, np.ndarray]:
    """Counts top-1 votes and summed softmax probability per source class (DP4TL LM, step 2).

    Args:
        logits: [N_target, C] surrogate source-classifier logits on the target TRAIN images,
            numpy or torch. Target labels are not used.

    Returns:
        votes: int64 [C], votes[c] = number of rows whose argmax is c (taken on the given dtype).
        psum: float64 [C], psum[c] = sum over rows of softmax(row)[c], computed in float64 from
            the given values; it only breaks ties between equal vote counts.
    """
    logits = _as_numpy_logits(logits)
    num_classes = logits.shape[1]
    votes = np.bincount(logits.argmax(axis=1), minlength=num_classes).astype(np.int64)
    # Shift by the row max so exp never overflows; the softmax is unchanged.
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True).astype(np.float64)
    exp = np.exp(shifted)
    psum = (exp / exp.sum(axis=1, keepdims=True)).sum(axis=0)
    return votes, psum


def rank_classes(votes: np.ndarray, psum: np.ndarray) -> np.ndarray:
    """Orders all classes by votes (desc), then psum (desc), then class id (asc).

    `torch.topk`, used by the DP4TL reference, breaks ties in an implementation-defined way;
    this rule is deterministic and agrees with it wherever no tie sits at the K boundary.

    Args:
        votes: [C] vote counts.
        psum: [C] summed softmax probabilities.

    Returns:
        int64 [C] class ids, most preferred first.
    """
    votes = np.asarray(votes)
    psum = np.asarray(psum, dtype=np.float64)
    if votes.ndim != 1 or votes.shape != psum.shape:
        raise ValueError(f"votes and psum must be 1-D of equal length, got {votes.shape} and {psum.shape}")
    ids = np.arange(votes.size)
    # np.lexsort sorts by the LAST key first.
    return np.lexsort((ids, -psum, -votes.astype(np.int64))).astype(np.int64)


def num_kept(num_classes: int, ratio: float) -> int:
    """Number of classes kept at a pruning ratio: K = round(C * (1 - ratio)), at least 1.

    Python's `round` (half to even) is used; exact .5 cases do not arise for the ratios used here.

    Args:
        num_classes: C, the number of source classes (>= 1).
        ratio: fraction of classes to drop, in [0, 1).
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    return max(1, round(num_classes * (1.0 - ratio)))


def select_classes_label_mapping(logits, *, ratio: float) -> ClassSelection:
    """Keeps the K source classes most voted for by the target training set (DP4TL LM).

    Args:
        logits: [N_target, C] surrogate logits on the target TRAIN images (numpy or torch).
        ratio: fraction of source classes to drop, in [0, 1); 0 keeps every class.

    Returns:
        A `ClassSelection` with method "lm".
    """
    logits = _as_numpy_logits(logits)
    k = num_kept(logits.shape[1], ratio)
    votes, psum = count_label_votes(logits)
    ranking = rank_classes(votes, psum)
    kept = np.sort(ranking[:k])
    return ClassSelection(kept=kept, ranking=ranking, votes=votes, psum=psum, ratio=float(ratio), method="lm")


def select_classes_random(num_classes: int, *, ratio: float, seed: int) -> ClassSelection:
    """Keeps K uniformly random source classes: the random-pruning baseline.

    Args:
        num_classes: C, the number of source classes.
        ratio: fraction of source classes to drop, in [0, 1).
        seed: seed of the `numpy.random.Generator`; equal seeds give equal selections.

    Returns:
        A `ClassSelection` with method "random"; `ranking` is a random permutation of the ids.
    """
    k = num_kept(num_classes, ratio)
    ranking = np.random.default_rng(seed).permutation(int(num_classes)).astype(np.int64)
    kept = np.sort(ranking[:k])
    return ClassSelection(
        kept=kept, ranking=ranking, votes=None, psum=None, ratio=float(ratio), method="random"
    )


def select_classes(
    method: str, *, ratio: float, seed: int, logits=None, num_classes: int | None = None
) -> ClassSelection:
    """Dispatches to a class-selection method.

    Args:
        method: "lm" (needs `logits`) or "random" (needs `num_classes`, or `logits` to infer it).
        ratio: fraction of source classes to drop, in [0, 1).
        seed: seed for the random baseline; LM is deterministic and ignores it.
        logits: [N_target, C] surrogate logits on the target TRAIN images.
        num_classes: C, for the random baseline.

    Returns:
        A `ClassSelection`.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "lm":
        if logits is None:
            raise ValueError("method 'lm' needs logits [N_target, C]")
        return select_classes_label_mapping(logits, ratio=ratio)
    if num_classes is None:
        if logits is None:
            raise ValueError("method 'random' needs num_classes (or logits to infer it)")
        num_classes = _as_numpy_logits(logits).shape[1]
    return select_classes_random(num_classes, ratio=ratio, seed=seed)


def kept_sample_indices(source_labels, kept_classes) -> np.ndarray:
    """Positions of the source samples whose class is kept (pruning is class-level).

    Args:
        source_labels: [N_source] class id of every source sample, in source order.
        kept_classes: kept class ids, any order.

    Returns:
        int64 [M] 0-based positions, ascending (the original source order).
    """
    source_labels = np.asarray(source_labels)
    if source_labels.ndim != 1:
        raise ValueError(f"source_labels must be 1-D [N_source], got shape {source_labels.shape}")
    return np.flatnonzero(np.isin(source_labels, np.asarray(kept_classes))).astype(np.int64)
