import numpy as np
import pytest
import torch

from tlpipe.pruning import kmeans, nearest, squared_distances


def _blobs(seed=0, per_blob=30):
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 5.0]])
    truth = np.repeat(np.arange(3), per_blob)
    order = rng.permutation(truth.size)  # interleave the blobs
    truth = truth[order]
    return means[truth] + rng.normal(scale=0.5, size=(truth.size, 3)), truth, means


def test_squared_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    brute = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(a, b), brute, rtol=1e-12, atol=1e-12)
    assert (squared_distances(a, a) >= 0).all()


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_nearest_is_chunk_independent(chunk_size):
    rng = np.random.default_rng(1)
    q, p = rng.normal(size=(11, 3)), rng.normal(size=(6, 3))
    brute = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    index, d2 = nearest(q, p, chunk_size=chunk_size)
    np.testing.assert_array_equal(index, brute.argmin(1))
    np.testing.assert_allclose(d2, brute.min(1), rtol=1e-12, atol=1e-12)


def test_nearest_bad_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        nearest(np.zeros((2, 2)), np.zeros((2, 2)), chunk_size=0)


def test_kmeans_is_deterministic():
    x, _, _ = _blobs()
    x = x + np.random.default_rng(5).normal(scale=3.0, size=x.shape)  # overlapping: several iterations
    labels_a, centroids_a = kmeans(x, 4, seed=7)
    labels_b, centroids_b = kmeans(x.copy(), 4, seed=7)
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_array_equal(centroids_a, centroids_b)
    assert labels_a.dtype == np.int64 and centroids_a.dtype == np.float64
    assert centroids_a.shape == (4, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_separated_blobs(seed):
    x, truth, means = _blobs(seed)
    labels, centroids = kmeans(torch.from_numpy(x).float(), 3, seed=seed)
    # same partition up to renaming: every cluster is exactly one blob
    pairs = set(zip(labels.tolist(), truth.tolist()))
    assert len(pairs) == 3 and len({c for c, _ in pairs}) == 3
    for cluster, blob in pairs:
        np.testing.assert_allclose(centroids[cluster], x[truth == blob].mean(0), atol=1e-5)
        np.testing.assert_allclose(centroids[cluster], means[blob], atol=0.5)


def test_kmeans_k1_is_the_mean():
    x, _, _ = _blobs()
    labels, centroids = kmeans(x, 1, seed=0)
    assert (labels == 0).all()
    np.testing.assert_allclose(centroids[0], x.mean(0), rtol=1e-12)


def test_kmeans_k_equals_n_gives_singletons():
    x = np.array([[0.0], [1.0], [5.0], [9.0]])
    labels, centroids = kmeans(x, 4, seed=0)
    assert sorted(labels.tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(centroids[labels], x)


def test_kmeans_with_fewer_distinct_points_than_k():
    x = np.array([[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 3)
    labels, centroids = kmeans(x, 3, seed=0)
    assert labels.shape == (6,) and set(labels.tolist()) <= {0, 1, 2}
    assert np.unique(labels[:3]).size == 1 and np.unique(labels[3:]).size == 1 and labels[0] != labels[3]
    labels_b, centroids_b = kmeans(x, 3, seed=0)
    np.testing.assert_array_equal(labels, labels_b)
    np.testing.assert_array_equal(centroids, centroids_b)


@pytest.mark.parametrize(
    ("k", "kwargs", "match"),
    [(5, {}, "k must"), (0, {}, "k must"), (2.5, {}, "k must"), (2, {"iters": 0}, "iters"), (2, {"tol": -1.0}, "tol")],
)
def test_kmeans_bad_arguments(k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmeans(np.zeros((4, 2)), k, seed=0, **kwargs)


@pytest.mark.parametrize("features", [np.zeros((0, 2)), np.zeros(4), np.array([[0.0, np.nan]]), np.zeros((3, 2), np.int64)])
def test_kmeans_bad_features(features):
    with pytest.raises(ValueError, match="features"):
        kmeans(features, 1, seed=0)


def test_empty_cluster_is_reseeded_at_the_farthest_point():
    from tlpipe.pruning.kmeans import _update_centroids

    x = np.array([[0.0], [1.0], [10.0], [2.0]])
    centroids = np.array([[1.0], [100.0], [200.0]])  # clusters 1 and 2 attract nobody
    labels, d2 = nearest(x, centroids)
    new = _update_centroids(x, labels, d2, centroids)
    # cluster 0 -> mean 3.25; farthest from it is 10.0 (d2 81), then 0.0 (d2 1, lowest index among ties)
    np.testing.assert_array_equal(new, [[3.25], [10.0], [0.0]])
