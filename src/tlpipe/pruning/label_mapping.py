"""Label-mapping (LM) class selection and its variants.

DP4TL (Zhang et al., "Selectivity Drives Productivity: Efficient Dataset Pruning for Enhanced
Transfer Learning", NeurIPS 2023, Sec. 4): a surrogate source classifier is run on the target
training images, every image votes for its top-1 source class, and the most voted source classes
are kept. The vote-and-rank step works on any score matrix [N_target, C]; feature mapping (FM)
reuses it with negative squared distances to source-group centroids.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from tlpipe.pruning._arrays import as_labels, to_numpy
from tlpipe.pruning.selection import (
    ClassSelection,
    num_kept,
    rank_classes,
    rank_classes_by_psum,
    rank_classes_least_voted,
)

RankRule = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as_numpy_logits(logits) -> np.ndarray:
    """Returns the logits as a 2-D numpy array, keeping their dtype (float32 stays float32)."""
    logits = to_numpy(logits)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty 2-D array [N_target, C], got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be floating point, got dtype {logits.dtype}")
    return logits


def count_label_votes(logits) -> tuple[np.ndarray, np.ndarray]:
    """Counts top-1 votes and summed softmax probability per source class (DP4TL LM, step 2).

    Args:
        logits: [N_target, C] surrogate source-classifier logits on the target TRAIN images,
            numpy or torch, or any score matrix where higher means closer. Target labels are
            not used.

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


def select_by_votes(scores, *, ratio: float, rank: RankRule = rank_classes, method: str = "lm") -> ClassSelection:
    """Votes with a score matrix, ranks the columns and keeps the first K (DP4TL LM, steps 2-3).

    Args:
        scores: [N_target, C] logits, or any score matrix where higher means closer.
        ratio: fraction of columns (classes or groups) to drop, in [0, 1).
        rank: the ranking rule, `(votes, psum) -> ranking`, e.g. `rank_classes`.
        method: the name stored in the result.

    Returns:
        A `ClassSelection` with votes and psum.
    """
    scores = _as_numpy_logits(scores)
    k = num_kept(scores.shape[1], ratio)
    votes, psum = count_label_votes(scores)
    ranking = rank(votes, psum)
    kept = np.sort(ranking[:k])
    return ClassSelection(kept=kept, ranking=ranking, votes=votes, psum=psum, ratio=float(ratio), method=method)


def select_classes_label_mapping(logits, *, ratio: float) -> ClassSelection:
    """Keeps the K source classes most voted for by the target training set (DP4TL LM).

    Args:
        logits: [N_target, C] surrogate logits on the target TRAIN images (numpy or torch).
        ratio: fraction of source classes to drop, in [0, 1); 0 keeps every class.

    Returns:
        A `ClassSelection` with method "lm".
    """
    return select_by_votes(logits, ratio=ratio, rank=rank_classes, method="lm")


def select_classes_least_voted(logits, *, ratio: float) -> ClassSelection:
    """Keeps the K LEAST voted source classes: the ablation that reverses LM (method "lm_bottom").

    Ranks by votes (asc), then psum (asc), then class id (asc).

    Args:
        logits: [N_target, C] surrogate logits on the target TRAIN images.
        ratio: fraction of source classes to drop, in [0, 1).

    Returns:
        A `ClassSelection` with method "lm_bottom".
    """
    return select_by_votes(logits, ratio=ratio, rank=rank_classes_least_voted, method="lm_bottom")


def select_classes_soft_votes(logits, *, ratio: float) -> ClassSelection:
    """Keeps the K classes with the largest summed softmax probability (method "lm_soft").

    Soft LM: each target image spreads one vote over the source classes by its softmax instead of
    giving it all to its top-1 class. Ties go to top-1 votes (desc), then class id (asc).

    Args:
        logits: [N_target, C] surrogate logits on the target TRAIN images.
        ratio: fraction of source classes to drop, in [0, 1).

    Returns:
        A `ClassSelection` with method "lm_soft".
    """
    return select_by_votes(logits, ratio=ratio, rank=rank_classes_by_psum, method="lm_soft")


def _round_robin(rankings: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Merges rankings: each in turn contributes its best class not yet placed, until all are."""
    placed = np.zeros(num_classes, dtype=bool)
    cursor = [0] * len(rankings)
    order: list[int] = []
    while len(order) < num_classes:
        placed_before = len(order)
        for i, ranking in enumerate(rankings):
            while cursor[i] < ranking.size and placed[ranking[cursor[i]]]:
                cursor[i] += 1
            if cursor[i] == ranking.size or len(order) == num_classes:
                continue  # this ranking is exhausted, or every class is placed
            placed[ranking[cursor[i]]] = True
            order.append(int(ranking[cursor[i]]))
        if len(order) == placed_before:
            raise ValueError("rankings do not cover every class")  # unreachable for full rankings
    return np.asarray(order, dtype=np.int64)


def select_classes_balanced(logits, target_labels, *, ratio: float) -> ClassSelection:
    """Class-balanced LM: every target class gets a turn at picking source classes ("lm_balanced").

    Votes are counted per target class t (rows of class t only) and ranked with the LM rule; the
    kept set is built round-robin over target classes in ascending order, each adding its next
    ranked source class not yet kept, so a large target class cannot claim every slot.

    Args:
        logits: [N_target, C] surrogate logits on the target TRAIN images.
        target_labels: [N_target] integer target class of every row.
        ratio: fraction of source classes to drop, in [0, 1).

    Returns:
        A `ClassSelection` with method "lm_balanced"; `ranking` is the round-robin order
        continued until all C classes are placed; `votes` and `psum` are the global counts.
    """
    logits = _as_numpy_logits(logits)
    target_labels = as_labels(target_labels, "target_labels", logits.shape[0])
    num_classes = logits.shape[1]
    k = num_kept(num_classes, ratio)
    rankings = [rank_classes(*count_label_votes(logits[target_labels == t])) for t in np.unique(target_labels)]
    ranking = _round_robin(rankings, num_classes)
    votes, psum = count_label_votes(logits)
    kept = np.sort(ranking[:k])
    return ClassSelection(kept=kept, ranking=ranking, votes=votes, psum=psum, ratio=float(ratio), method="lm_balanced")
