import itertools
import math

import numpy as np
import pytest
import torch

from tlpipe.transferability.osborn import (
    CandidateFeatures,
    OsbornTerms,
    balanced_sample,
    cohesion,
    domain_difference,
    osborn_score,
    osborn_terms,
    select_osborn,
    select_top_k,
    task_difference,
)

LN2 = math.log(2.0)


def _random_candidates(num, seed, n_t=24, n_s=20, d=3):
    rng = np.random.default_rng(seed)
    target_labels = np.arange(n_t) % 3
    candidates = []
    for k in range(num):
        labels = None if k == num - 1 else rng.integers(0, 2 + k, n_s)
        target, source = rng.normal(size=(n_t, d)) * (1 + k), rng.normal(size=(n_s, d)) + k
        candidates.append(CandidateFeatures(f"m{k}", target, source, labels))
    return candidates, target_labels


def test_domain_difference_of_identical_point_sets_is_zero():
    points = np.array([[0.0, 1.0], [2.0, -1.0], [3.0, 3.0], [-1.0, 0.5]])
    w_d, plan = domain_difference(points, points[::-1])
    assert w_d == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(plan.sum(axis=1), 0.25) and np.allclose(plan.sum(axis=0), 0.25)


def test_domain_difference_matches_a_1d_transport_by_hand():
    # 1-D optimal transport is monotone: 0 (mass 1/2) -> the two 1s, 2 (mass 1/2) -> the two 4s,
    # so W_D = 1/2 * 1^2 + 1/2 * 2^2 = 2.5 (the crossing plan costs (1 + 16 + 1 + 4) / 4 = 5.5).
    w_d, plan = domain_difference(np.array([[0.0], [2.0]]), np.array([[4.0], [1.0], [4.0], [1.0]]))
    assert w_d == pytest.approx(2.5, abs=1e-12)
    assert np.allclose(plan, [[0, 0.25, 0, 0.25], [0.25, 0, 0.25, 0]])


@pytest.mark.parametrize("reg, rel", [(0.1, 0.05), (0.003, 1e-4)])
def test_sinkhorn_cost_approaches_the_exact_one_from_above(reg, rel):
    rng = np.random.default_rng(0)
    target, source = rng.normal(size=(5, 2)), rng.normal(size=(6, 2)) + 1
    exact, _ = domain_difference(target, source)
    entropic, _ = domain_difference(target, source, method="sinkhorn", reg=reg)
    assert exact <= entropic <= exact * (1 + rel)


def test_frobenius_coupling_keeps_the_marginals():
    _, plan = domain_difference(np.array([[0.0], [2.0], [5.0]]), np.array([[1.0], [4.0]]), method="frobenius", reg=0.5)
    assert np.allclose(plan.sum(axis=1), 1 / 3) and np.allclose(plan.sum(axis=0), 0.5)


def test_task_difference_is_zero_when_target_labels_are_a_function_of_source_labels():
    plan = np.eye(4) / 4  # target i <-> source i
    assert task_difference(plan, [0, 0, 1, 1], source_labels=[0, 1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    # the other way round it is not: source class 0 sends half its mass to each target class
    assert task_difference(plan, [0, 1, 2, 3], source_labels=[0, 0, 1, 1]) == pytest.approx(LN2)


def test_task_difference_matches_a_hand_computation():
    plan = np.array([[0.2, 0.1, 0.0], [0.0, 0.2, 0.1], [0.1, 0.0, 0.3]])  # rows: targets, cols: sources
    # joint[y_t, y_s]: y_t = (0, 1, 1), y_s = (0, 0, 1) -> [[0.3, 0.0], [0.3, 0.4]]; P(y_s) = (0.6, 0.4)
    expected = -(0.3 * math.log(0.3 / 0.6) + 0.3 * math.log(0.3 / 0.6) + 0.4 * math.log(0.4 / 0.4))
    assert task_difference(plan, [0, 1, 1], [0, 0, 1]) == pytest.approx(expected)
    # without source labels everything is one source class: W_T = H(Y_t) with P(y_t) = (0.3, 0.7)
    assert task_difference(plan, [0, 1, 1]) == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)))


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 1, 2, 1], [0, 1, 2, 1], 0.0),  # identical predictors
        ([0, 1, 2, 1], [5, 3, 0, 3], 0.0),  # the same partition under other class names
        ([0, 0, 1, 1], [0, 1, 0, 1], 2 * LN2),  # independent: H(a|b) = H(b|a) = ln 2
        ([0, 0, 1, 1], [0, 0, 0, 0], LN2),  # H(a|b) = ln 2, H(b|a) = 0
    ],
)
def test_cohesion_is_the_sum_of_both_conditional_entropies(a, b, expected):
    assert cohesion(a, b) == pytest.approx(expected, abs=1e-12)
    assert cohesion(b, a) == pytest.approx(expected, abs=1e-12)


def test_score_is_minus_the_scaled_costs_of_members_and_pairs():
    terms = OsbornTerms(("a", "b", "c"), np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.5, 2.0]),
                        np.array([[0.0, 1.0, 3.0], [1.0, 0.0, 2.0], [3.0, 2.0, 0.0]]))
    assert osborn_score(terms, ["a", "c"], standardize=False) == pytest.approx(-(1 + 0.5 + 4 + 2 + 3))
    assert osborn_score(terms, [], standardize=False) == 0.0
    s_d, s_t, s_c = np.std([1, 2, 4]), np.std([0.5, 0.5, 2]), np.std([1, 3, 2])
    expected = -((1 + 2) / s_d + (0.5 + 0.5) / s_t + 2 * 1 / s_c)
    assert osborn_score(terms, ["b", "a"], weights=(1, 1, 2)) == pytest.approx(expected)


@pytest.mark.parametrize("weights, standardize", [((1, 1, 1), True), ((2.0, 0.5, 3.0), True), ((1, 1, 1), False)])
def test_the_set_function_has_diminishing_returns(weights, standardize):
    """Theorem 4.1: f(X + v) - f(X) >= f(Y + v) - f(Y) for X within Y, v outside Y; and gains are <= 0."""
    candidates, target_labels = _random_candidates(5, seed=3)
    terms = osborn_terms(candidates, target_labels=target_labels)
    names = terms.names

    def f(subset):
        return osborn_score(terms, subset, weights=weights, standardize=standardize)

    checked = 0
    for size in range(len(names)):
        for big in itertools.combinations(names, size):
            for small_size in range(size + 1):
                for small in itertools.combinations(big, small_size):
                    for v in set(names) - set(big):
                        gain_small, gain_big = f([*small, v]) - f(small), f([*big, v]) - f(big)
                        assert gain_small >= gain_big - 1e-9
                        assert gain_small <= 1e-12
                        checked += 1
    assert checked > 100


def test_greedy_first_picks_the_model_that_matches_the_target_domain_and_separates_its_classes():
    rng = np.random.default_rng(0)
    centres = np.array([[5.0, 0.0], [0.0, 5.0], [-5.0, -5.0]])
    target_labels = np.arange(30) % 3
    source_labels = np.arange(24) % 3
    good = CandidateFeatures("zz_good", centres[target_labels] + 0.1 * rng.normal(size=(30, 2)),
                             centres[source_labels] + 0.1 * rng.normal(size=(24, 2)), source_labels)
    noise = [CandidateFeatures(f"noise{k}", rng.normal(size=(30, 2)), rng.normal(size=(24, 2)) + 3,
                               rng.integers(0, 3, 24)) for k in range(3)]
    names, record = select_osborn([*noise, good], 3, target_labels=target_labels)
    assert names[0] == "zz_good"
    i = record["names"].index("zz_good")
    assert record["task"][i] == pytest.approx(0.0, abs=1e-9) and record["domain"][i] == min(record["domain"])
    assert record["score"] == pytest.approx(np.cumsum(record["gain"]).tolist())
    assert osborn_score([*noise, good], names, target_labels=target_labels) == pytest.approx(record["score"][-1])


@pytest.mark.parametrize("size", [0, 4, -1, 1.5, True, "2", None])
def test_size_must_be_between_one_and_the_number_of_candidates(size):
    candidates, target_labels = _random_candidates(3, seed=0)
    terms = osborn_terms(candidates, target_labels=target_labels)
    with pytest.raises(ValueError, match=r"size must be an integer in 1\.\.3"):
        select_osborn(terms, size)
    with pytest.raises(ValueError, match=r"size must be an integer in 1\.\.3"):
        select_top_k({"a": 1.0, "b": 2.0, "c": 0.0}, size)


def test_inputs_are_checked_before_any_transport():
    candidates, target_labels = _random_candidates(2, seed=0)
    target, source = candidates[0].target_features, candidates[0].source_features
    with pytest.raises(ValueError, match="m0: target_features must be"):
        osborn_terms([CandidateFeatures("m0", target[:-1], source)], target_labels=target_labels)
    with pytest.raises(ValueError, match="the D of source_features"):
        osborn_terms([CandidateFeatures("m0", target, source[:, :2])], target_labels=target_labels)
    with pytest.raises(ValueError, match="m0.source_labels"):
        osborn_terms([CandidateFeatures("m0", target, source, [0, 1])], target_labels=target_labels)
    with pytest.raises(ValueError, match="unique"):
        osborn_terms([candidates[0], candidates[0]], target_labels=target_labels)
    with pytest.raises(ValueError, match="method must be one of"):
        osborn_terms(candidates, target_labels=target_labels, method="exact")
    with pytest.raises(ValueError, match="max_samples"):
        osborn_terms(candidates, target_labels=target_labels, max_samples=0)
    terms = osborn_terms(candidates, target_labels=target_labels)
    with pytest.raises(ValueError, match=r"distinct names from \['m0', 'm1'\]"):
        osborn_score(terms, ["m0", "nope"])
    with pytest.raises(ValueError, match="weights must be 3 finite values >= 0"):
        osborn_score(terms, ["m0"], weights=(1, -1, 1))
    with pytest.raises(ValueError, match="apply only when pool is a sequence of CandidateFeatures"):
        select_osborn(terms, 1, max_samples=10)


def test_selection_is_deterministic_and_breaks_ties_by_name():
    candidates, target_labels = _random_candidates(4, seed=1)
    first = select_osborn(candidates, 3, target_labels=target_labels)
    assert select_osborn(candidates[::-1], 3, target_labels=target_labels) == first
    c = candidates[0]
    twins = [CandidateFeatures(name, c.target_features, c.source_features, c.source_labels) for name in "cab"]
    names, record = select_osborn(twins, 3, target_labels=target_labels)
    assert names == ["a", "b", "c"] and record["cohesion"] == [[0.0] * 3] * 3


def test_top_k_baseline_orders_by_score_then_name():
    names, record = select_top_k({"b": 1.0, "a": 1.0, "c": 2.0, "d": 0.5}, 3)
    assert names == ["c", "a", "b"] and record == {"gain": [2.0, 1.0, 1.0], "score": [2.0, 3.0, 4.0]}
    with pytest.raises(ValueError, match="finite"):
        select_top_k({"a": float("nan")}, 1)


def test_subsampling_is_class_balanced_seeded_and_shared_by_the_target():
    labels = np.array([0] * 90 + [1] * 10)
    keep = balanced_sample(labels.size, labels, 20, seed=4)
    assert np.bincount(labels[keep]).tolist() == [10, 10]
    assert np.array_equal(keep, balanced_sample(labels.size, labels, 20, seed=4))
    assert not np.array_equal(keep, balanced_sample(labels.size, labels, 20, seed=5))
    candidates, target_labels = _random_candidates(3, seed=2, n_t=60, n_s=50)
    small = osborn_terms(candidates, target_labels=target_labels, max_samples=12)
    again = osborn_terms(candidates, target_labels=target_labels, max_samples=12)
    assert np.array_equal(small.domain, again.domain) and np.array_equal(small.cohesion, again.cohesion)
    assert not np.allclose(small.domain, osborn_terms(candidates, target_labels=target_labels).domain)


def test_torch_tensors_and_a_self_supervised_source():
    candidates, target_labels = _random_candidates(3, seed=5)
    as_torch = [CandidateFeatures(c.name, torch.from_numpy(c.target_features), torch.from_numpy(c.source_features),
                                  None if c.source_labels is None else torch.from_numpy(c.source_labels))
                for c in candidates]
    terms = osborn_terms(candidates, target_labels=target_labels)
    assert np.allclose(osborn_terms(as_torch, target_labels=torch.from_numpy(target_labels)).domain, terms.domain)
    # m2 has no source labels: one source class, so W_T = H(Y_t) = ln 3 for three balanced classes
    assert terms.task[2] == pytest.approx(math.log(3)) and max(terms.task[:2]) < math.log(3)


def test_given_target_predictions_replace_the_transported_ones():
    candidates, target_labels = _random_candidates(2, seed=6)
    same = [CandidateFeatures(c.name, c.target_features, c.source_features, c.source_labels, target_labels % 2)
            for c in candidates]
    assert osborn_terms(same, target_labels=target_labels).cohesion[0, 1] == 0.0
