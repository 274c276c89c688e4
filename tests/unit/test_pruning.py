import numpy as np
import pytest
import torch

from tlpipe.pruning import (
    ClassSelection,
    count_label_votes,
    kept_sample_indices,
    num_kept,
    rank_classes,
    select_classes,
    select_classes_label_mapping,
    select_classes_random,
)

LM_CASES = ["L1", "L2", "L3"]


@pytest.fixture(scope="module")
def lm_fixture(parity_cases):
    return parity_cases("label_mapping")


@pytest.mark.parametrize("case", LM_CASES)
def test_votes_psum_ranking_match_fixture(lm_fixture, case):
    c = lm_fixture[case]
    votes, psum = count_label_votes(c["logits"])
    assert votes.dtype == np.int64
    np.testing.assert_array_equal(votes, c["expected_votes"])
    np.testing.assert_allclose(psum, c["expected_psum"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(rank_classes(votes, psum), c["expected_ranking"])


@pytest.mark.parametrize("case", LM_CASES)
def test_kept_sets_and_samples_match_fixture(lm_fixture, case):
    c = lm_fixture[case]
    num_classes = c["logits"].shape[1]
    for ratio, k in zip(c["pruning_ratios"], c["K"]):
        assert num_kept(num_classes, float(ratio)) == k
        sel = select_classes_label_mapping(c["logits"], ratio=float(ratio))
        assert sel.num_kept == k
        np.testing.assert_array_equal(sel.kept, c[f"kept_K{k}"])
        if "source_sample_labels" in c:
            got = kept_sample_indices(c["source_sample_labels"], sel.kept)
            np.testing.assert_array_equal(got, c[f"kept_sample_indices_K{k}"])


def test_torch_logits_give_same_votes(lm_fixture):
    c = lm_fixture["L2"]
    votes_np, psum_np = count_label_votes(c["logits"])
    votes_t, psum_t = count_label_votes(torch.from_numpy(c["logits"]))
    np.testing.assert_array_equal(votes_np, votes_t)
    np.testing.assert_array_equal(psum_np, psum_t)


def test_votes_and_psum_by_hand():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    votes, psum = count_label_votes(logits)
    np.testing.assert_array_equal(votes, [2, 1, 0])
    expected = sum(np.exp(row) / np.exp(row).sum() for row in logits.astype(np.float64))
    np.testing.assert_allclose(psum, expected, rtol=1e-12)
    assert psum.dtype == np.float64
    assert psum.sum() == pytest.approx(3.0)


def test_psum_breaks_vote_ties():
    # classes 0 and 1 both get one vote; class 1 also collects more probability from row 2
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 1.0, 1.2]], dtype=np.float32)
    votes, psum = count_label_votes(logits)
    np.testing.assert_array_equal(votes, [1, 1, 1])
    assert psum[1] > psum[0]
    np.testing.assert_array_equal(rank_classes(votes, psum)[:2], [1, 0])
    assert select_classes_label_mapping(logits, ratio=0.6).kept.tolist() == [1]


def test_class_id_breaks_full_ties():
    votes = np.array([0, 2, 2, 0, 2])
    psum = np.array([0.0, 1.5, 1.5, 0.0, 1.5])
    np.testing.assert_array_equal(rank_classes(votes, psum), [1, 2, 4, 0, 3])


def test_votes_outrank_psum():
    votes = np.array([1, 2])
    psum = np.array([10.0, 0.1])
    np.testing.assert_array_equal(rank_classes(votes, psum), [1, 0])


def test_ratio_zero_keeps_all_classes():
    logits = np.random.default_rng(0).normal(size=(20, 7)).astype(np.float32)
    sel = select_classes_label_mapping(logits, ratio=0.0)
    np.testing.assert_array_equal(sel.kept, np.arange(7))
    assert sel.num_kept == sel.num_classes == 7
    assert sel.method == "lm" and sel.ratio == 0.0


def test_ratio_leaving_one_class():
    logits = np.array([[0.0, 1.0, 0.0, 0.0]] * 3 + [[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    sel = select_classes_label_mapping(logits, ratio=0.9)  # round(0.4) = 0, clamped to 1
    assert sel.kept.tolist() == [1]
    assert sel.kept.dtype == np.int64


@pytest.mark.parametrize(("num_classes", "ratio", "expected"), [(100, 0.3, 70), (10, 0.99, 1), (1, 0.5, 1), (1000, 0.95, 50)])
def test_num_kept(num_classes, ratio, expected):
    assert num_kept(num_classes, ratio) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan")])
def test_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="ratio"):
        num_kept(10, ratio)
    with pytest.raises(ValueError, match="ratio"):
        select_classes_label_mapping(np.zeros((2, 10), np.float32), ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
        select_classes_random(10, ratio=ratio, seed=0)


@pytest.mark.parametrize("shape", [(5,), (0, 3), (3, 0), (2, 3, 4)])
def test_bad_logits_shape(shape):
    with pytest.raises(ValueError, match="logits"):
        count_label_votes(np.zeros(shape, np.float32))


def test_random_baseline_deterministic_and_sized():
    a = select_classes_random(50, ratio=0.7, seed=3)
    b = select_classes_random(50, ratio=0.7, seed=3)
    c = select_classes_random(50, ratio=0.7, seed=4)
    assert isinstance(a, ClassSelection) and a.method == "random"
    assert a.num_kept == 15 and len(set(a.kept.tolist())) == 15
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.kept, np.sort(a.kept))
    assert not np.array_equal(a.kept, c.kept)
    assert sorted(a.ranking.tolist()) == list(range(50))
    assert a.votes is None and a.psum is None


def test_select_classes_dispatch():
    logits = np.random.default_rng(1).normal(size=(30, 10)).astype(np.float32)
    lm = select_classes("lm", ratio=0.5, seed=0, logits=logits)
    np.testing.assert_array_equal(lm.kept, select_classes_label_mapping(logits, ratio=0.5).kept)
    rnd = select_classes("random", ratio=0.5, seed=2, num_classes=10)
    np.testing.assert_array_equal(rnd.kept, select_classes_random(10, ratio=0.5, seed=2).kept)
    inferred = select_classes("random", ratio=0.5, seed=2, logits=logits)
    np.testing.assert_array_equal(inferred.kept, rnd.kept)


def test_select_classes_errors():
    with pytest.raises(ValueError, match="method must be one of lm, lm_bottom, lm_soft, lm_balanced, random, fm, got 'topk'"):
        select_classes("topk", ratio=0.5, seed=0, num_classes=10)
    with pytest.raises(ValueError, match="logits"):
        select_classes("lm", ratio=0.5, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        select_classes("random", ratio=0.5, seed=0)


def test_kept_sample_indices_by_hand():
    labels = np.array([3, 0, 1, 3, 2, 0])
    np.testing.assert_array_equal(kept_sample_indices(labels, [3, 0]), [0, 1, 3, 5])
    assert kept_sample_indices(labels, []).size == 0
    with pytest.raises(ValueError, match="source_labels"):
        kept_sample_indices(labels.reshape(2, 3), [0])
