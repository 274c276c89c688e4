import numpy as np
import pytest

import tlpipe.pruning.feature_mapping as fm_module
from tlpipe.pruning import (
    ClassSelection,
    FeatureMapping,
    group_centroids,
    kept_sample_indices,
    map_features_to_groups,
    nearest_target_scores,
    select_groups_feature_mapping,
    select_samples_feature_mapping,
)

LM_CASES = ["L1", "L2", "L3"]


@pytest.fixture(scope="module")
def lm_fixture(parity_cases):
    return parity_cases("label_mapping")


def _features_from_logits(logits, a):
    # centroids c_j = a e_j and f = L / (2a) give -||f - c_j||^2 = L_j - ||f||^2 - a^2: LM's logits
    # plus a per-row constant, so FM's votes and softmax sums are LM's.
    centroids = a * np.eye(logits.shape[1])
    return logits.astype(np.float64) / (2.0 * a), centroids


@pytest.mark.parametrize("a", [0.5, 3.0])
@pytest.mark.parametrize("case", LM_CASES)
def test_fm_matches_label_mapping_fixture(lm_fixture, case, a):
    c = lm_fixture[case]
    target, centroids = _features_from_logits(c["logits"], a)
    for ratio, k in zip(c["pruning_ratios"], c["K"]):
        sel = map_features_to_groups(target, centroids, ratio=float(ratio))
        assert sel.method == "fm" and sel.num_kept == k
        np.testing.assert_array_equal(sel.votes, c["expected_votes"])
        np.testing.assert_allclose(sel.psum, c["expected_psum"], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(sel.ranking, c["expected_ranking"])
        np.testing.assert_array_equal(sel.kept, c[f"kept_K{k}"])
        if "source_sample_labels" in c:
            got = kept_sample_indices(c["source_sample_labels"], sel.kept)
            np.testing.assert_array_equal(got, c[f"kept_sample_indices_K{k}"])


def test_fm_with_labeled_source_matches_fixture_samples(lm_fixture):
    c = lm_fixture["L2"]
    a = 0.5
    target, centroids = _features_from_logits(c["logits"], a)
    labels = c["source_sample_labels"]
    source = centroids[labels]  # every member sits on its class centroid
    for ratio, k in zip(c["pruning_ratios"], c["K"]):
        fm = select_groups_feature_mapping(target, source, labels, ratio=float(ratio))
        assert isinstance(fm, FeatureMapping) and isinstance(fm, ClassSelection)
        np.testing.assert_array_equal(fm.centroids, centroids)
        np.testing.assert_array_equal(fm.groups, labels)
        np.testing.assert_array_equal(fm.ranking, c["expected_ranking"])
        np.testing.assert_array_equal(fm.kept, c[f"kept_K{k}"])
        np.testing.assert_array_equal(fm.kept_samples, c[f"kept_sample_indices_K{k}"])


def test_fm_by_hand():
    centroids = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    target = np.array([[1.0, 0.0], [9.0, 1.0], [8.0, -1.0], [0.5, 0.5]])
    sel = map_features_to_groups(target, centroids, ratio=0.6)  # K = round(1.2) = 1
    np.testing.assert_array_equal(sel.votes, [2, 2, 0])
    # votes tie between groups 0 and 1; psum decides: softmax of -d^2 is near one-hot here
    scores = -((target[:, None, :] - centroids[None]) ** 2).sum(-1)
    p = np.exp(scores - scores.max(1, keepdims=True))
    psum = (p / p.sum(1, keepdims=True)).sum(0)
    np.testing.assert_allclose(sel.psum, psum, rtol=1e-12)
    assert sel.kept.tolist() == [int(np.argmax(psum[:2]))]
    assert select_groups_feature_mapping(target, centroids, [0, 1, 2], ratio=0.0).kept.tolist() == [0, 1, 2]


def test_group_centroids_by_hand():
    features = np.array([[0.0, 2.0], [4.0, 0.0], [1.0, 1.0], [3.0, 3.0]])
    np.testing.assert_allclose(group_centroids(features, [1, 0, 1, 0], 2), [[3.5, 1.5], [0.5, 1.5]])
    with pytest.raises(ValueError, match=r"empty groups: \[2\]"):
        group_centroids(features, [1, 0, 1, 0], 3)


def _unlabeled():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0], [30.0, 30.0]])
    source_truth = rng.integers(0, 4, size=80)
    source = means[source_truth] + rng.normal(size=(80, 2))
    target = means[[0, 0, 0, 3, 3, 1]] + rng.normal(size=(6, 2))
    return target, source, source_truth


def test_fm_on_unlabeled_source_is_deterministic():
    target, source, truth = _unlabeled()
    a = select_groups_feature_mapping(target, source, num_clusters=4, ratio=0.5, seed=3)
    b = select_groups_feature_mapping(target, source, num_clusters=4, ratio=0.5, seed=3)
    for field in ("kept", "ranking", "votes", "psum", "groups", "centroids"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.groups.dtype == np.int64 and a.centroids.shape == (4, 2)
    # the two kept clusters are the blobs the target sits in (0 and 3)
    kept_blobs = {int(truth[a.groups == g][0]) for g in a.kept}
    assert kept_blobs == {0, 3}
    np.testing.assert_array_equal(a.kept_samples, np.flatnonzero(np.isin(truth, [0, 3])))


def test_fm_ratio_leaving_one_group():
    target, source, truth = _unlabeled()
    fm = select_groups_feature_mapping(target, source, num_clusters=4, ratio=0.9, seed=0)
    assert fm.num_kept == 1 and int(truth[fm.groups == fm.kept[0]][0]) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clusters": 4, "ratio": 1.0}, "ratio"),
        ({"num_clusters": 4, "ratio": -0.5}, "ratio"),
        ({"num_clusters": 81, "ratio": 0.5}, "num_clusters"),
        ({"num_clusters": 0, "ratio": 0.5}, "num_clusters"),
        ({"ratio": 0.5}, "exactly one of source_labels"),
        ({"source_labels": np.zeros(80, np.int64), "num_clusters": 2, "ratio": 0.5}, "exactly one of source_labels"),
        ({"source_labels": np.zeros(79, np.int64), "ratio": 0.5}, "source_labels"),
        ({"source_labels": np.zeros(80, np.float64), "ratio": 0.5}, "source_labels"),
    ],
)
def test_fm_bad_arguments_raise_before_kmeans(kwargs, match, monkeypatch):
    def no_compute(*args, **kw):
        raise AssertionError("k-means ran before the arguments were checked")

    monkeypatch.setattr(fm_module, "kmeans", no_compute)
    target, source, _ = _unlabeled()
    with pytest.raises(ValueError, match=match):
        select_groups_feature_mapping(target, source, **kwargs)


def test_fm_mismatched_feature_sizes():
    with pytest.raises(ValueError, match="same feature size"):
        map_features_to_groups(np.zeros((3, 2)), np.zeros((4, 3)), ratio=0.5)
    with pytest.raises(ValueError, match="same feature size"):
        select_groups_feature_mapping(np.zeros((3, 2)), np.zeros((4, 3)), num_clusters=2, ratio=0.5)
    with pytest.raises(ValueError, match="target_features"):
        map_features_to_groups(np.zeros(3), np.zeros((4, 3)), ratio=0.5)
    with pytest.raises(ValueError, match="ratio"):
        map_features_to_groups(np.zeros((3, 2)), np.zeros((4, 2)), ratio=1.0)


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, [0, 1, 2, 3, 4]), (0.4, [0, 2, 4]), (0.6, [0, 2]), (0.9, [0])])
def test_fm_samples_by_hand(ratio, expected):
    target = np.array([[0.0], [10.0]])
    source = np.array([[1.0], [5.0], [9.0], [-3.0], [11.0]])  # min d^2: 1, 25, 1, 9, 1
    sel = select_samples_feature_mapping(target, source, ratio=ratio)
    assert sel.method == "fm_samples" and sel.kept.tolist() == expected
    np.testing.assert_array_equal(sel.scores, [-1.0, -25.0, -1.0, -9.0, -1.0])


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_fm_sample_scores_match_brute_force(chunk_size):
    rng = np.random.default_rng(2)
    target, source = rng.normal(size=(9, 5)), rng.normal(size=(40, 5))
    brute = -((source[:, None, :] - target[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(nearest_target_scores(target, source, chunk_size=chunk_size), brute, rtol=1e-10)


@pytest.mark.parametrize(
    ("target", "source", "ratio", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 3)), 0.5, "same feature size"),
        (np.zeros((3, 2)), np.zeros((0, 2)), 0.5, "source_features"),
        (np.zeros((3, 2)), np.zeros((4, 2)), 1.0, "ratio"),
        (np.zeros((3, 2), np.int64), np.zeros((4, 2)), 0.5, "target_features"),
    ],
)
def test_fm_samples_bad_inputs(target, source, ratio, match):
    with pytest.raises(ValueError, match=match):
        select_samples_feature_mapping(target, source, ratio=ratio)


def _chunks(features, size):
    return iter([features[s : s + size] for s in range(0, len(features), size)])


@pytest.mark.parametrize("size", [1, 7, 1000])
def test_source_features_as_chunks_select_what_the_array_selects(size):
    """Features computed a chunk at a time (a source too large to hold them) give the same selections."""
    rng = np.random.default_rng(5)
    target, source, labels = rng.normal(size=(20, 4)), rng.normal(size=(61, 4)), rng.integers(0, 6, size=61)
    whole = select_groups_feature_mapping(target, source, labels, ratio=0.5)
    chunked = select_groups_feature_mapping(target, _chunks(source, size), labels, ratio=0.5)
    np.testing.assert_array_equal(chunked.kept, whole.kept)
    np.testing.assert_allclose(chunked.centroids, whole.centroids, rtol=1e-12)
    np.testing.assert_allclose(group_centroids(_chunks(source, size), labels, 6), whole.centroids, rtol=1e-12)
    kmeans_whole = select_groups_feature_mapping(target, source, num_clusters=4, ratio=0.5, seed=1)
    kmeans_chunked = select_groups_feature_mapping(target, _chunks(source, size), num_clusters=4, ratio=0.5, seed=1)
    np.testing.assert_array_equal(kmeans_chunked.groups, kmeans_whole.groups)
    samples = select_samples_feature_mapping(target, _chunks(source.astype(np.float32), size), ratio=0.7)
    np.testing.assert_array_equal(samples.kept, select_samples_feature_mapping(target, source.astype(np.float32),
                                                                               ratio=0.7).kept)


def test_chunks_that_do_not_fit_the_groups_or_each_other():
    source, labels = np.zeros((10, 3)), np.arange(10) % 2
    with pytest.raises(ValueError, match="one id per feature row: 9 ids for more than 9 rows"):
        group_centroids(_chunks(source, 4), labels[:9], 2)
    with pytest.raises(ValueError, match="one id per feature row: 10 ids for 8 rows"):
        group_centroids(_chunks(source[:8], 4), labels, 2)
    with pytest.raises(ValueError, match="same feature size"):
        group_centroids(iter([source[:5], np.zeros((5, 2))]), labels, 2)
    with pytest.raises(ValueError, match="no rows"):
        group_centroids(iter([]), labels, 2)
    with pytest.raises(ValueError, match="same feature size"):
        select_groups_feature_mapping(np.zeros((3, 2)), _chunks(source, 4), labels, ratio=0.5)
    with pytest.raises(ValueError, match="source_labels must hold one id per feature row"):
        select_groups_feature_mapping(np.zeros((3, 3)), _chunks(source, 4), labels[:7], ratio=0.5)
