"""Feature-mapping (FM) source selection, for sources without a classifier head.

DP4TL (Zhang et al., "Selectivity Drives Productivity: Efficient Dataset Pruning for Enhanced
Transfer Learning", NeurIPS 2023, Sec. 4, FM for self-supervised pretraining): the source set is
split into groups (its classes, or k-means clusters of its features); every target training
feature votes for the group whose centroid is nearest in L2, and the most voted groups are kept.
The vote and the ranking are LM's, applied to the score matrix S = -||f - c||^2. A sample-level
variant keeps the source samples nearest to any target feature.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from tlpipe.pruning._arrays import as_feature_matrix, as_float_matrix, as_labels, feature_chunks, to_numpy
from tlpipe.pruning.kmeans import group_sums, kmeans, nearest, squared_distances
from tlpipe.pruning.label_mapping import select_by_votes
from tlpipe.pruning.selection import (
    ClassSelection,
    SampleSelection,
    check_ratio,
    kept_sample_indices,
    num_kept,
    rank_classes,
    select_top_samples,
)


@dataclass(frozen=True)
class FeatureMapping(ClassSelection):
    """A `ClassSelection` over source groups, with the groups themselves.

    Attributes:
        groups: int64 [N_source] group id of every source sample (its class, or its cluster).
        centroids: float64 [G, D] mean feature of every group.
    """

    groups: np.ndarray
    centroids: np.ndarray

    @property
    def kept_samples(self) -> np.ndarray:
        """int64 positions, ascending, of the source samples whose group is kept."""
        return kept_sample_indices(self.groups, self.kept)


def _check_same_dim(target: np.ndarray, source: np.ndarray, source_name: str) -> None:
    if target.shape[1] != source.shape[1]:
        raise ValueError(
            f"target_features and {source_name} must have the same feature size D, "
            f"got {target.shape[1]} and {source.shape[1]}"
        )


def _source_chunks(target: np.ndarray, source_features) -> Iterator[np.ndarray]:
    """`feature_chunks` of the source features, each checked against the target's feature size."""
    for chunk in feature_chunks(source_features, "source_features"):
        _check_same_dim(target, chunk, "source_features")
        yield chunk


def group_centroids(features, groups, num_groups: int) -> np.ndarray:
    """Mean feature of every group, in float64.

    Args:
        features: [N, D] float features, or an iterator of [n, D] chunks of them in order (summed as
            they come: memory does not grow with N).
        groups: [N] group id in [0, num_groups) of every row; every group needs a member.
        num_groups: G.

    Returns:
        float64 [G, D].
    """
    groups = to_numpy(groups)
    groups = as_labels(groups, "groups", groups.shape[0] if groups.ndim else -1, num_groups)
    return _group_means(feature_chunks(features, "features"), groups, num_groups, "groups")


def _group_means(chunks, groups: np.ndarray, num_groups: int, groups_name: str) -> np.ndarray:
    sums, counts, seen = 0.0, np.zeros(num_groups, dtype=np.int64), 0
    for chunk in chunks:
        members, seen = groups[seen : seen + len(chunk)], seen + len(chunk)
        if seen > len(groups):
            break
        chunk_sums, chunk_counts = group_sums(chunk, members, num_groups)
        sums, counts = sums + chunk_sums, counts + chunk_counts
    if seen != len(groups):
        raise ValueError(f"{groups_name} must hold one id per feature row: {len(groups)} ids for "
                         f"{'more than ' if seen > len(groups) else ''}{min(seen, len(groups))} rows")
    if (counts == 0).any():
        raise ValueError(f"every group needs a member; empty groups: {np.flatnonzero(counts == 0).tolist()}")
    return sums / counts[:, None]


def map_features_to_groups(target_features, centroids, *, ratio: float) -> ClassSelection:
    """Keeps the K groups whose centroids are nearest to the most target features (DP4TL FM).

    Args:
        target_features: [N_target, D] features of the target TRAIN images.
        centroids: [G, D] source-group centroids.
        ratio: fraction of groups to drop, in [0, 1).

    Returns:
        A `ClassSelection` over the G groups with method "fm": votes counts the target features
        nearest to each centroid, psum sums the softmax of S = -||f - c||^2 (float64).
    """
    target = as_float_matrix(target_features, "target_features")
    centroids = as_float_matrix(centroids, "centroids")
    _check_same_dim(target, centroids, "centroids")
    num_kept(len(centroids), ratio)
    scores = -squared_distances(target, centroids)  # [N_target, G]
    return select_by_votes(scores, ratio=ratio, rank=rank_classes, method="fm")


def select_groups_feature_mapping(
    target_features,
    source_features,
    source_labels=None,
    *,
    num_clusters: int | None = None,
    ratio: float,
    seed: int = 0,
) -> FeatureMapping:
    """Groups the source set, then keeps the groups the target votes for (DP4TL FM).

    Args:
        target_features: [N_target, D] features of the target TRAIN images.
        source_features: [N_source, D] features of the source images, same extractor; with
            `source_labels`, also an iterator of [n, D] chunks of them in order (never held whole).
        source_labels: [N_source] source class ids; the classes are the groups. If None, the
            groups are `num_clusters` k-means clusters of `source_features`.
        num_clusters: k for k-means; required exactly when `source_labels` is None.
        ratio: fraction of groups to drop, in [0, 1).
        seed: k-means seed; equal seeds give equal groups.

    Returns:
        A `FeatureMapping` with method "fm"; its `kept_samples` are the source samples to keep.
    """
    target = as_float_matrix(target_features, "target_features")
    if (source_labels is None) == (num_clusters is None):
        raise ValueError("pass exactly one of source_labels (class groups) or num_clusters (k-means groups)")
    if source_labels is not None:  # the centroids are summed as the features come: they may be chunks
        groups = to_numpy(source_labels)
        groups = as_labels(groups, "source_labels", groups.shape[0] if groups.ndim else -1)
        if not len(groups):
            raise ValueError("source_labels must be non-empty")
        num_groups = int(groups.max()) + 1
        num_kept(num_groups, ratio)
        chunks = _source_chunks(target, source_features)
    else:
        source = as_feature_matrix(source_features, "source_features")  # k-means reads them many times
        _check_same_dim(target, source, "source_features")
        if int(num_clusters) != num_clusters or not 1 <= num_clusters <= len(source):
            raise ValueError(f"num_clusters must be an integer in [1, N_source={len(source)}], got {num_clusters!r}")
        num_groups = int(num_clusters)
        num_kept(num_groups, ratio)
        groups, _ = kmeans(source, num_groups, seed=seed)
        chunks = iter([source])
    centroids = _group_means(chunks, groups, num_groups, "source_labels")
    selection = map_features_to_groups(target, centroids, ratio=ratio)
    values = {f.name: getattr(selection, f.name) for f in fields(selection)}
    return FeatureMapping(**values, groups=groups, centroids=centroids)


def nearest_target_scores(target_features, source_features, *, chunk_size: int = 1024) -> np.ndarray:
    """Score of every source sample: minus its squared L2 distance to the nearest target feature.

    Args:
        target_features: [N_target, D] features of the target TRAIN images.
        source_features: [N_source, D] source features, same extractor, or an iterator of [n, D] chunks
            of them in order.
        chunk_size: source rows per distance chunk; memory is O(chunk_size * N_target).

    Returns:
        float64 [N_source], higher is closer to the target.
    """
    target = as_float_matrix(target_features, "target_features")
    scores = []
    for source in _source_chunks(target, source_features):
        scores.append(-nearest(source, target, chunk_size=chunk_size)[1])
    return np.concatenate(scores)


def select_samples_feature_mapping(
    target_features, source_features, *, ratio: float, chunk_size: int = 1024
) -> SampleSelection:
    """Keeps the source samples nearest to the target set: the sample-level FM variant.

    Args:
        target_features: [N_target, D] features of the target TRAIN images.
        source_features: [N_source, D] source features, same extractor, or an iterator of [n, D] chunks
            of them in order.
        ratio: fraction of source samples to drop, in [0, 1).
        chunk_size: source rows per distance chunk.

    Returns:
        A `SampleSelection` with method "fm_samples"; ties go by index (asc).
    """
    check_ratio(ratio)
    scores = nearest_target_scores(target_features, source_features, chunk_size=chunk_size)
    return select_top_samples(scores, ratio=ratio, method="fm_samples")
