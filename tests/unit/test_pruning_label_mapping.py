import numpy as np
import pytest

import tlpipe.pruning.label_mapping as lm_module
from tlpipe.pruning import (
    count_label_votes,
    rank_classes,
    select_by_votes,
    select_classes_balanced,
    select_classes_label_mapping,
    select_classes_least_voted,
    select_classes_soft_votes,
)

LM_CASES = ["L1", "L2", "L3"]
LOGIT_METHODS = {
    "lm": select_classes_label_mapping,
    "lm_bottom": select_classes_least_voted,
    "lm_soft": select_classes_soft_votes,
}


@pytest.fixture(scope="module")
def lm_fixture(parity_cases):
    return parity_cases("label_mapping")


def _balanced(logits, *, ratio):
    return select_classes_balanced(logits, np.arange(len(logits)) % 2, ratio=ratio)


ALL_METHODS = {**LOGIT_METHODS, "lm_balanced": _balanced}


def test_least_voted_by_hand():
    # votes [3, 1, 2, 0]
    logits = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 2, 2]] * 5
    sel = select_classes_least_voted(logits, ratio=0.5)
    assert sel.method == "lm_bottom"
    np.testing.assert_array_equal(sel.ranking, [3, 1, 2, 0])
    assert sel.kept.tolist() == [1, 3]


def test_least_voted_ties_by_psum_then_id():
    # classes 0 and 1 both get one vote; class 1 collects more probability, so it ranks later
    logits = np.array([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 1.0, 1.2, 0.0]], dtype=np.float32)
    sel = select_classes_least_voted(logits, ratio=0.5)
    assert sel.ranking[0] == 3
    assert sel.ranking.tolist().index(0) < sel.ranking.tolist().index(1)
    # flat rows: argmax 0 gets both votes, classes 1 and 2 tie on votes and psum -> id asc
    flat = select_by_votes(np.zeros((2, 3)), ratio=0.0, rank=lm_module.rank_classes_least_voted)
    assert flat.ranking.tolist() == [1, 2, 0]


@pytest.mark.parametrize("case", LM_CASES)
def test_least_voted_reverses_lm_on_fixture(lm_fixture, case):
    c = lm_fixture[case]
    sel = select_classes_least_voted(c["logits"], ratio=0.5)
    np.testing.assert_array_equal(sel.ranking, c["expected_ranking"][::-1])
    np.testing.assert_array_equal(sel.votes, c["expected_votes"])


def test_soft_and_hard_votes_disagree():
    # class 0 wins two rows narrowly (p ~ 0.52 each); class 1 wins one row outright (p ~ 1)
    logits = np.array([[0.1, 0.0, -9.0], [0.1, 0.0, -9.0], [-5.0, 5.0, -9.0]], dtype=np.float32)
    votes, psum = count_label_votes(logits)
    np.testing.assert_array_equal(votes, [2, 1, 0])
    assert psum[1] > psum[0]
    assert select_classes_label_mapping(logits, ratio=0.7).kept.tolist() == [0]
    soft = select_classes_soft_votes(logits, ratio=0.7)
    assert soft.kept.tolist() == [1] and soft.method == "lm_soft"
    np.testing.assert_array_equal(soft.ranking, [1, 0, 2])
    np.testing.assert_array_equal(soft.votes, votes)
    np.testing.assert_array_equal(soft.psum, psum)


def test_soft_votes_ties_by_votes_then_id():
    # flat rows: psum is equal for every class, and argmax of a flat row is 0 (votes [3, 0, 0])
    logits = np.zeros((3, 3), dtype=np.float32)
    sel = select_classes_soft_votes(logits, ratio=0.0)
    np.testing.assert_array_equal(sel.ranking, [0, 1, 2])
    np.testing.assert_array_equal(sel.votes, [3, 0, 0])


def _two_target_classes():
    # Source classes 0..4. Rows get 10 on their top-1 class plus a per-target background, so the
    # zero-vote classes are ordered by the background: target 2 prefers 3 > 4, target 5 prefers 4 > 3.
    background = {2: np.array([0.0, 0.0, 0.0, 2.0, 1.0]), 5: np.array([0.0, 0.0, 0.0, 1.0, 2.0])}
    rows = [(5, 0), (2, 0), (5, 0), (2, 1), (2, 0), (5, 2)]  # (target label, top-1 source class)
    logits = np.stack([background[t] + 10.0 * np.eye(5)[j] for t, j in rows]).astype(np.float32)
    return logits, np.array([t for t, _ in rows])


@pytest.mark.parametrize(("ratio", "kept"), [(0.0, [0, 1, 2, 3, 4]), (0.2, [0, 1, 2, 4]), (0.4, [0, 1, 2]), (0.6, [0, 2]), (0.9, [0])])
def test_balanced_round_robin_by_hand(ratio, kept):
    logits, labels = _two_target_classes()
    # per target: 2 -> [0, 1, 3, 4, 2], 5 -> [0, 2, 4, 3, 1]; round robin 2, 5, 2, 5, 2: 0, 2, 1, 4, 3
    sel = select_classes_balanced(logits, labels, ratio=ratio)
    assert sel.method == "lm_balanced"
    np.testing.assert_array_equal(sel.ranking, [0, 2, 1, 4, 3])
    assert sel.kept.tolist() == kept
    votes, psum = count_label_votes(logits)
    np.testing.assert_array_equal(sel.votes, votes)
    np.testing.assert_array_equal(sel.psum, psum)


def test_balanced_gives_each_target_class_a_turn():
    # target 0 has many rows all voting class 0/1; target 1 a single row voting class 3
    logits = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 3]] * 5
    labels = np.array([0, 0, 0, 0, 0, 1])
    assert select_classes_label_mapping(logits, ratio=0.5).kept.tolist() == [0, 1]
    assert select_classes_balanced(logits, labels, ratio=0.5).kept.tolist() == [0, 3]


@pytest.mark.parametrize("case", LM_CASES)
def test_balanced_with_one_target_class_is_lm(lm_fixture, case):
    c = lm_fixture[case]
    sel = select_classes_balanced(c["logits"], np.zeros(len(c["logits"]), np.int64), ratio=float(c["pruning_ratios"][0]))
    np.testing.assert_array_equal(sel.ranking, c["expected_ranking"])
    np.testing.assert_array_equal(sel.kept, c[f"kept_K{c['K'][0]}"])


@pytest.mark.parametrize("labels", [np.zeros(5, np.int64), np.zeros((6, 1), np.int64), np.zeros(6, np.float32), -np.ones(6, np.int64)])
def test_balanced_bad_target_labels(labels):
    logits, _ = _two_target_classes()
    with pytest.raises(ValueError, match="target_labels"):
        select_classes_balanced(logits, labels, ratio=0.5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_ratio_zero_keeps_all(method):
    logits = np.random.default_rng(0).normal(size=(20, 7)).astype(np.float32)
    sel = ALL_METHODS[method](logits, ratio=0.0)
    np.testing.assert_array_equal(sel.kept, np.arange(7))
    assert sorted(sel.ranking.tolist()) == list(range(7))
    assert sel.method == method


@pytest.mark.parametrize("method", ALL_METHODS)
def test_ratio_leaving_one_class(method):
    logits = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    sel = ALL_METHODS[method](logits, ratio=0.9)  # round(0.4) = 0, clamped to 1
    assert sel.num_kept == 1 and sel.kept.dtype == np.int64
    assert sel.kept[0] == sel.ranking[0]


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("ratio", [-0.1, 1.0, float("nan")])
def test_bad_ratio_raises_before_votes(method, ratio, monkeypatch):
    def no_compute(_):
        raise AssertionError("votes counted before the ratio was checked")

    monkeypatch.setattr(lm_module, "count_label_votes", no_compute)
    with pytest.raises(ValueError, match="ratio"):
        ALL_METHODS[method](np.zeros((4, 3), np.float32), ratio=ratio)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_bad_logits(method):
    with pytest.raises(ValueError, match="logits"):
        ALL_METHODS[method](np.zeros((4,), np.float32), ratio=0.5)
    with pytest.raises(ValueError, match="logits"):
        ALL_METHODS[method](np.zeros((4, 3), np.int64), ratio=0.5)


def test_select_by_votes_uses_the_given_rule():
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    sel = select_by_votes(scores, ratio=0.4, rank=rank_classes, method="custom")
    assert sel.method == "custom" and sel.kept.tolist() == [0, 1]
