import numpy as np
import pytest
import torch

from tlpipe.pruning import (
    SampleSelection,
    num_kept_samples,
    rank_classes,
    rank_classes_by_psum,
    rank_classes_least_voted,
    select_samples_random,
    select_top_samples,
)


@pytest.mark.parametrize(
    ("num_samples", "ratio", "expected"), [(10, 0.0, 10), (10, 0.25, 8), (10, 0.96, 1), (1, 0.5, 1), (20000, 0.9, 2000)]
)
def test_num_kept_samples(num_samples, ratio, expected):
    assert num_kept_samples(num_samples, ratio) == expected


@pytest.mark.parametrize(
    ("num_samples", "ratio", "match"),
    [(10, 1.0, "ratio"), (10, -0.1, "ratio"), (10, float("nan"), "ratio"), (0, 0.5, "num_samples"), (2.5, 0.5, "num_samples")],
)
def test_num_kept_samples_errors(num_samples, ratio, match):
    with pytest.raises(ValueError, match=match):
        num_kept_samples(num_samples, ratio)


def test_least_voted_rule_by_hand():
    votes = np.array([2, 0, 2, 0, 1])
    psum = np.array([1.0, 0.3, 1.0, 0.1, 0.9])
    # votes asc, then psum asc, then id asc
    np.testing.assert_array_equal(rank_classes_least_voted(votes, psum), [3, 1, 4, 0, 2])


def test_psum_rule_by_hand():
    votes = np.array([1, 2, 2, 0])
    psum = np.array([1.0, 1.0, 1.0, 2.0])
    # psum desc, then votes desc, then id asc
    np.testing.assert_array_equal(rank_classes_by_psum(votes, psum), [3, 1, 2, 0])


def test_least_voted_is_reverse_of_lm_without_ties():
    rng = np.random.default_rng(0)
    votes, psum = rng.integers(0, 5, size=30), rng.random(30)
    np.testing.assert_array_equal(rank_classes_least_voted(votes, psum), rank_classes(votes, psum)[::-1])


@pytest.mark.parametrize("rule", [rank_classes_least_voted, rank_classes_by_psum])
def test_rank_rules_check_shapes(rule):
    with pytest.raises(ValueError, match="votes and psum"):
        rule(np.zeros(3), np.zeros(4))


@pytest.mark.parametrize(("ratio", "expected"), [(0.0, [0, 1, 2, 3, 4]), (0.4, [1, 2, 4]), (0.6, [2, 4]), (0.9, [2])])
def test_top_samples_keep_highest_ties_by_index(ratio, expected):
    scores = np.array([0.1, 0.5, 0.9, 0.2, 0.9])
    sel = select_top_samples(scores, ratio=ratio, method="x")
    assert isinstance(sel, SampleSelection) and sel.method == "x" and sel.ratio == ratio
    assert sel.kept.dtype == np.int64 and sel.kept.tolist() == expected
    assert sel.num_kept == len(expected)
    assert sel.scores.dtype == np.float64


def test_top_samples_accept_torch():
    sel = select_top_samples(torch.tensor([3.0, 1.0, 2.0]), ratio=0.5, method="x")
    assert sel.kept.tolist() == [0, 2]


@pytest.mark.parametrize(
    ("scores", "ratio", "match"),
    [([[1.0]], 0.5, "scores"), ([], 0.5, "scores"), ([1.0, np.nan], 0.5, "finite"), ([1.0, 2.0], 1.0, "ratio")],
)
def test_top_samples_errors(scores, ratio, match):
    with pytest.raises(ValueError, match=match):
        select_top_samples(np.asarray(scores, dtype=np.float64), ratio=ratio, method="x")


def test_random_samples_deterministic_and_sized():
    a = select_samples_random(100, ratio=0.7, seed=3)
    b = select_samples_random(100, ratio=0.7, seed=3)
    c = select_samples_random(100, ratio=0.7, seed=4)
    assert a.method == "random_samples" and a.scores is None
    assert a.num_kept == 30 and len(set(a.kept.tolist())) == 30
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.kept, np.sort(a.kept))
    assert not np.array_equal(a.kept, c.kept)
    np.testing.assert_array_equal(select_samples_random(5, ratio=0.0, seed=0).kept, np.arange(5))
    assert select_samples_random(5, ratio=0.95, seed=0).num_kept == 1


@pytest.mark.parametrize(("num_samples", "ratio"), [(10, 1.0), (0, 0.5), (-3, 0.2)])
def test_random_samples_errors(num_samples, ratio):
    with pytest.raises(ValueError):
        select_samples_random(num_samples, ratio=ratio, seed=0)
