"""Selection results, the keep-count rule, ranking rules and the random baselines.

The ranking rules order source classes for the label-mapping (LM) family of DP4TL (Zhang et al.,
"Selectivity Drives Productivity: Efficient Dataset Pruning for Enhanced Transfer Learning",
NeurIPS 2023, Sec. 4); `select_top_samples` is the keep-the-highest-scores step shared by the
sample-level baselines in `scores.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlpipe.pruning._arrays import to_numpy


@dataclass(frozen=True)
class ClassSelection:
    """Which source classes survive pruning, and why.

    Attributes:
        kept: int64 [K] kept class ids, sorted ascending.
        ranking: int64 [C] every class id, most preferred first; `kept` is its first K entries.
        votes: int64 [C] top-1 votes per class (LM and FM methods, else None).
        psum: float64 [C] summed softmax probability per class (LM and FM methods, else None).
        ratio: the pruning ratio, the fraction of classes dropped.
        method: the method name, one of `CLASS_METHODS`.
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


@dataclass(frozen=True)
class SampleSelection:
    """Which source samples survive sample-level pruning.

    Attributes:
        kept: int64 [K] kept sample positions, ascending (the original source order).
        scores: float64 [N] the score of every sample (higher is kept first), or None (random).
        ratio: the pruning ratio, the fraction of samples dropped.
        method: the method name, one of `SAMPLE_METHODS`.
    """

    kept: np.ndarray
    scores: np.ndarray | None
    ratio: float
    method: str

    @property
    def num_kept(self) -> int:
        """Number of kept samples."""
        return int(self.kept.size)


def check_ratio(ratio: float) -> None:
    """Raises ValueError unless 0 <= ratio < 1 (NaN fails too)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")


def num_kept(num_classes: int, ratio: float) -> int:
    """Number of classes kept at a pruning ratio: K = round(C * (1 - ratio)), at least 1.

    Python's `round` (half to even) is used; exact .5 cases do not arise for the ratios used here.

    Args:
        num_classes: C, the number of source classes (>= 1).
        ratio: fraction of classes to drop, in [0, 1).
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_ratio(ratio)
    return max(1, round(num_classes * (1.0 - ratio)))


def num_kept_samples(num_samples: int, ratio: float) -> int:
    """Number of samples kept at a pruning ratio: round(N * (1 - ratio)), at least 1.

    Args:
        num_samples: N, the number of source samples (>= 1).
        ratio: fraction of samples to drop, in [0, 1).
    """
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    check_ratio(ratio)
    return max(1, round(num_samples * (1.0 - ratio)))


def _check_votes_psum(votes, psum) -> tuple[np.ndarray, np.ndarray]:
    votes = np.asarray(votes)
    psum = np.asarray(psum, dtype=np.float64)
    if votes.ndim != 1 or votes.shape != psum.shape:
        raise ValueError(f"votes and psum must be 1-D of equal length, got {votes.shape} and {psum.shape}")
    return votes.astype(np.int64), psum


def rank_classes(votes: np.ndarray, psum: np.ndarray) -> np.ndarray:
    """Orders all classes by votes (desc), then psum (desc), then class id (asc): the LM rule.

    `torch.topk`, used by the DP4TL reference, breaks ties in an implementation-defined way;
    this rule is deterministic and agrees with it wherever no tie sits at the K boundary.

    Args:
        votes: [C] vote counts.
        psum: [C] summed softmax probabilities.

    Returns:
        int64 [C] class ids, most preferred first.
    """
    votes, psum = _check_votes_psum(votes, psum)
    # np.lexsort sorts by the LAST key first.
    return np.lexsort((np.arange(votes.size), -psum, -votes)).astype(np.int64)


def rank_classes_least_voted(votes: np.ndarray, psum: np.ndarray) -> np.ndarray:
    """Orders all classes by votes (asc), then psum (asc), then class id (asc): the LM ablation.

    Args:
        votes: [C] vote counts.
        psum: [C] summed softmax probabilities.

    Returns:
        int64 [C] class ids, least voted first.
    """
    votes, psum = _check_votes_psum(votes, psum)
    return np.lexsort((np.arange(votes.size), psum, votes)).astype(np.int64)


def rank_classes_by_psum(votes: np.ndarray, psum: np.ndarray) -> np.ndarray:
    """Orders all classes by psum (desc), then votes (desc), then class id (asc): soft LM.

    Args:
        votes: [C] vote counts.
        psum: [C] summed softmax probabilities.

    Returns:
        int64 [C] class ids, most probable first.
    """
    votes, psum = _check_votes_psum(votes, psum)
    return np.lexsort((np.arange(votes.size), -votes, -psum)).astype(np.int64)


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


def select_samples_random(num_samples: int, *, ratio: float, seed: int) -> SampleSelection:
    """Keeps round(N * (1 - ratio)) uniformly random source samples: the sample-level baseline.

    Args:
        num_samples: N, the number of source samples.
        ratio: fraction of samples to drop, in [0, 1).
        seed: seed of the `numpy.random.Generator`; equal seeds give equal selections.

    Returns:
        A `SampleSelection` with method "random_samples" and no scores.
    """
    k = num_kept_samples(num_samples, ratio)
    order = np.random.default_rng(seed).permutation(int(num_samples))
    kept = np.sort(order[:k]).astype(np.int64)
    return SampleSelection(kept=kept, scores=None, ratio=float(ratio), method="random_samples")


def select_top_samples(scores, *, ratio: float, method: str) -> SampleSelection:
    """Keeps the round(N * (1 - ratio)) highest-scoring samples; equal scores go by index (asc).

    Args:
        scores: [N] one finite score per source sample (numpy or torch); higher is kept first.
        ratio: fraction of samples to drop, in [0, 1).
        method: the name stored in the result.

    Returns:
        A `SampleSelection` holding the scores as float64.
    """
    scores = to_numpy(scores)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array [N], got shape {scores.shape}")
    k = num_kept_samples(scores.size, ratio)
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite (no NaN or inf)")
    order = np.lexsort((np.arange(scores.size), -scores))
    kept = np.sort(order[:k]).astype(np.int64)
    return SampleSelection(kept=kept, scores=scores, ratio=float(ratio), method=method)


def kept_sample_indices(source_labels, kept_classes) -> np.ndarray:
    """Positions of the source samples whose class is kept (pruning is class-level).

    Args:
        source_labels: [N_source] class (or group) id of every source sample, in source order.
        kept_classes: kept class ids, any order.

    Returns:
        int64 [M] 0-based positions, ascending (the original source order).
    """
    source_labels = np.asarray(source_labels)
    if source_labels.ndim != 1:
        raise ValueError(f"source_labels must be 1-D [N_source], got shape {source_labels.shape}")
    return np.flatnonzero(np.isin(source_labels, np.asarray(kept_classes))).astype(np.int64)
