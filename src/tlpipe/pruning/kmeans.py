"""Squared L2 distances, chunked nearest-neighbour search and a deterministic k-means.

k-means groups an unlabeled source set for DP4TL's feature mapping (Zhang et al., "Selectivity
Drives Productivity: Efficient Dataset Pruning for Enhanced Transfer Learning", NeurIPS 2023,
Sec. 4, FM for self-supervised pretraining). Initialisation is k-means++ (Arthur & Vassilvitskii,
"k-means++: The Advantages of Careful Seeding", SODA 2007), then Lloyd iterations.
"""

from __future__ import annotations

import numpy as np

from tlpipe.pruning._arrays import as_float_matrix


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """||a_i - b_j||^2 for all pairs, in float64, as ||a||^2 - 2 a.b + ||b||^2 clipped at 0.

    Args:
        a: [N, D] float array.
        b: [M, D] float array.

    Returns:
        float64 [N, M].
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(axis=1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(axis=1)[None, :]
    return np.maximum(d2, 0.0)  # rounding can push a zero distance slightly below 0


def nearest(queries: np.ndarray, points: np.ndarray, *, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Index of and squared distance to the nearest point, for every query (ties: lowest index).

    Processes `chunk_size` queries at a time, so memory stays O(chunk_size * M).

    Args:
        queries: [N, D] float array.
        points: [M, D] float array.
        chunk_size: queries per chunk (>= 1).

    Returns:
        index: int64 [N]; sq_distance: float64 [N].
    """
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    index = np.empty(len(queries), dtype=np.int64)
    sq_distance = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), int(chunk_size)):
        d2 = squared_distances(queries[start : start + chunk_size], points)
        index[start : start + len(d2)] = d2.argmin(axis=1)
        sq_distance[start : start + len(d2)] = d2.min(axis=1)
    return index, sq_distance


def group_sums(features: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group feature sums [k, D] (float64) and member counts [k] (int64); empty groups sum to 0."""
    counts = np.bincount(labels, minlength=k).astype(np.int64)
    order = np.argsort(labels, kind="stable")
    present, starts = np.unique(labels[order], return_index=True)
    sums = np.zeros((k, features.shape[1]), dtype=np.float64)
    sums[present] = np.add.reduceat(features[order], starts, axis=0)
    return sums, counts


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre is drawn with probability proportional to D(x)^2."""
    chosen = [int(rng.integers(len(x)))]
    d2 = squared_distances(x, x[chosen[0] : chosen[0] + 1])[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        # All points already coincide with a centre: any draw is as good as another.
        nxt = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(nxt)
        d2 = np.minimum(d2, squared_distances(x, x[nxt : nxt + 1])[:, 0])
    return x[chosen].copy()


def _update_centroids(x, labels, sq_dist, centroids) -> np.ndarray:
    """Means of the members; an empty cluster is re-seeded at the point farthest from its centre."""
    k = len(centroids)
    sums, counts = group_sums(x, labels, k)
    new = centroids.copy()
    filled = counts > 0
    new[filled] = sums[filled] / counts[filled, None]
    sq_dist = sq_dist.copy()
    for j in np.flatnonzero(~filled):
        far = int(sq_dist.argmax())  # lowest index among equally far points
        new[j] = x[far]
        sq_dist[far] = -1.0  # each point re-seeds at most one empty cluster
    return new


def kmeans(
    features, k: int, *, seed: int, iters: int = 100, tol: float = 1e-6, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters features with k-means++ seeding and Lloyd iterations, deterministically.

    Equal inputs and seed give identical labels and centroids. Stops when no label changes or the
    squared centroid shift falls below `tol` times the mean per-feature variance.

    Args:
        features: [N, D] float features (numpy or torch), computed on in float64.
        k: number of clusters, 1 <= k <= N.
        seed: seed of the `numpy.random.Generator` used by the seeding.
        iters: maximum number of Lloyd iterations (>= 1).
        tol: relative tolerance on the centroid shift (>= 0).
        chunk_size: rows per distance chunk, bounding memory to O(chunk_size * k).

    Returns:
        labels: int64 [N] cluster of every row, its nearest final centroid.
        centroids: float64 [k, D].
    """
    x = as_float_matrix(features, "features")
    if int(k) != k or not 1 <= k <= len(x):
        raise ValueError(f"k must be an integer in [1, N={len(x)}], got {k!r}")
    if int(iters) != iters or iters < 1:
        raise ValueError(f"iters must be a positive integer, got {iters!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    centroids = _kmeans_plus_plus(x, int(k), np.random.default_rng(seed))
    threshold = tol * float(x.var(axis=0).mean())
    labels, sq_dist = nearest(x, centroids, chunk_size=chunk_size)
    for _ in range(int(iters)):
        new = _update_centroids(x, labels, sq_dist, centroids)
        shift = float(((new - centroids) ** 2).sum())
        centroids = new
        new_labels, sq_dist = nearest(x, centroids, chunk_size=chunk_size)
        converged = np.array_equal(new_labels, labels) or shift <= threshold
        labels = new_labels
        if converged:
            break
    return labels, centroids
