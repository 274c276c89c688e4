import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from tlpipe.distillation.teachers import teacher_weights
from tlpipe.evaluation.metrics import kendall_tau
from tlpipe.transferability import TMI_EPS_SQ, h_score, leep, logme, logme_per_class, nce, tmi, transferability_scores

CASES = ["P1", "P2", "P3"]


@pytest.fixture(scope="module")
def cases(parity_cases):
    return parity_cases("transferability")


@pytest.fixture(scope="module")
def case_checks(fixtures_dir):
    with open(fixtures_dir / "transferability.json") as f:
        return {case["id"]: case["checks"] for case in json.load(f)["cases"]}


def _gaussian_classes(n, d, num_classes, seed):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    means = rng.normal(scale=2.0, size=(num_classes, d))
    return means[labels] + rng.normal(size=(n, d)) + 0.5, labels


def _brute_force_logme(features, labels):
    """Weight-space LogME from the D x D eigen-decomposition of F^T F (no SVD, no rank cut).

    Same fixed-point schedule as the fixture README, but the posterior mean is formed explicitly,
    m2 = ||m||^2, r2 = ||t - F m||^2, and the log-determinant is sum_j ln(alpha + beta eig_j)
    over all D eigenvalues.
    """
    n, d = features.shape
    eig, vecs = np.linalg.eigh(features.T @ features)
    eig = np.clip(eig, 0.0, None)
    per_class = []
    for c in range(labels.max() + 1):
        t = (labels == c).astype(np.float64)
        ft = vecs.T @ (features.T @ t)
        alpha = beta = 1.0
        for _ in range(11):
            lam = alpha / beta
            m = vecs @ (ft / (eig + lam))  # (F^T F + lam I)^-1 F^T t
            gamma = np.sum(eig / (eig + lam))
            m2, r2 = m @ m, np.sum((t - features @ m) ** 2)
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (r2 + 1e-5)
            if abs(alpha / beta - lam) / lam <= 1e-3:
                break
        log_det = np.sum(np.log(alpha + beta * eig))
        evidence = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * log_det
        evidence += -beta / 2 * r2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
        per_class.append(evidence / n)
    return float(np.mean(per_class))


# --- parity with the fixtures -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_logme_parity(cases, case):
    c = cases[case]
    assert logme(c["features"], c["labels"]) == pytest.approx(float(c["expected_logme"]), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_logme_alpha_beta_and_iterations_parity(cases, case_checks, case):
    c = cases[case]
    fit = logme_per_class(c["features"], c["labels"])
    np.testing.assert_allclose(fit["alpha"], c["logme_alphas"], rtol=1e-6)
    np.testing.assert_allclose(fit["beta"], c["logme_betas"], rtol=1e-6)
    assert fit["iterations"].tolist() == case_checks[case]["logme_iterations_per_class_fixed_point"]
    assert fit["evidence"].mean() == logme(c["features"], c["labels"])


@pytest.mark.parametrize("case", CASES)
def test_logme_close_to_icml_variant(cases, case):
    c = cases[case]
    got = logme(c["features"], c["labels"])
    np.testing.assert_allclose(got, c["expected_logme_icml"], rtol=1e-2, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_logme_equals_upstream_default_when_n_at_least_d(cases, case):
    c = cases[case]
    assert c["features"].shape[0] >= c["features"].shape[1]
    got = logme(c["features"], c["labels"])
    np.testing.assert_allclose(got, c["expected_logme_upstream_default"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_leep_parity(cases, case):
    c = cases[case]
    np.testing.assert_allclose(leep(c["source_probs"], c["labels"]), c["expected_leep"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_nce_parity(cases, case):
    c = cases[case]
    got = nce(c["source_pseudo_labels"], c["labels"])
    np.testing.assert_allclose(got, c["expected_nce"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_h_score_parity(cases, case):
    c = cases[case]
    np.testing.assert_allclose(h_score(c["features"], c["labels"]), c["expected_hscore"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("case", CASES)
def test_scores_bundle_matches_the_single_metrics(cases, case):
    c = cases[case]
    got = transferability_scores(c["features"], c["labels"], c["source_probs"])
    assert set(got) == {"logme", "h_score", "tmi", "leep", "nce"}
    np.testing.assert_allclose(got["logme"], c["expected_logme"], rtol=1e-8)
    np.testing.assert_allclose(got["h_score"], c["expected_hscore"], rtol=1e-8)
    assert got["tmi"] == tmi(c["features"], c["labels"])  # no reference fixture: see the TMI tests below
    np.testing.assert_allclose(got["leep"], c["expected_leep"], rtol=1e-10)
    np.testing.assert_allclose(got["nce"], c["expected_nce"], rtol=1e-10)  # from the argmax
    assert set(transferability_scores(c["features"], c["labels"])) == {"logme", "h_score", "tmi"}


def test_torch_inputs_give_the_numpy_values(cases):
    c = cases["P1"]
    features = torch.tensor(c["features"], dtype=torch.float64, requires_grad=True)
    labels, probs = torch.tensor(c["labels"]), torch.tensor(c["source_probs"])
    assert logme(features, labels) == logme(c["features"], c["labels"])
    assert h_score(features, labels) == h_score(c["features"], c["labels"])
    assert tmi(features, labels) == tmi(c["features"], c["labels"])
    assert leep(probs, labels) == leep(c["source_probs"], c["labels"])
    assert nce(torch.tensor(c["source_pseudo_labels"]), labels) == nce(c["source_pseudo_labels"], c["labels"])


def test_every_estimate_is_importable_from_the_package():
    import tlpipe.transferability as package
    from tlpipe.transferability import coding_rate, evidence, hscore, source_labels

    assert (package.logme, package.leep, package.nce, package.h_score, package.tmi) == (
        evidence.logme, source_labels.leep, source_labels.nce, hscore.h_score, coding_rate.tmi)


# --- LogME when D > N ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "num_classes"), [(30, 80, 3), (12, 40, 2), (50, 50, 5), (40, 12, 4)])
def test_logme_matches_weight_space_brute_force(n, d, num_classes):
    features, labels = _gaussian_classes(n, d, num_classes, seed=n + d)
    np.testing.assert_allclose(logme(features, labels), _brute_force_logme(features, labels), rtol=1e-7)


def test_logme_d_greater_than_n_differs_from_the_unpadded_upstream_value():
    features, labels = _gaussian_classes(30, 80, 3, seed=7)
    n, d = features.shape
    fit = logme_per_class(features, labels)
    # thuml/LogME issue #23: the upstream default sums ln(alpha + beta sigma) over k = N terms only,
    # which adds (D - k)/2 ln(alpha) / N to each class's evidence.
    upstream = np.mean(fit["evidence"] + (d - n) / 2 * np.log(fit["alpha"]) / n)
    assert abs(upstream - logme(features, labels)) > 1e-3 * abs(upstream)
    assert logme(features, labels) == pytest.approx(_brute_force_logme(features, labels), rel=1e-7)


def test_logme_rank_deficient_features_match_brute_force():
    features, labels = _gaussian_classes(60, 10, 3, seed=3)
    features = np.concatenate([features, features[:, :4] @ np.ones((4, 6))], axis=1)  # rank 10 < D = 16
    np.testing.assert_allclose(logme(features, labels), _brute_force_logme(features, labels), rtol=1e-7)


# --- edge cases ---------------------------------------------------------------------------------


def test_single_class():
    features, _ = _gaussian_classes(20, 5, 1, seed=1)
    labels = np.zeros(20, dtype=np.int64)
    probs = np.random.default_rng(1).dirichlet(np.ones(4), size=20)
    assert np.isfinite(logme(features, labels))
    assert logme_per_class(features, labels)["evidence"].shape == (1,)
    assert h_score(features, labels) == 0.0  # cov(g) = 0
    assert tmi(features, labels) > 0.0  # one class still has its spread
    assert nce(probs.argmax(axis=1), labels) == 0.0
    assert abs(leep(probs, labels)) < 1e-12  # cond = 1, so ln(1) up to rounding


@pytest.mark.parametrize("row", [np.array([0.3, -1.7, 2.2, 0.1]), np.zeros(4)])
def test_constant_features(row):
    features, labels = np.tile(row, (12, 1)), np.arange(12) % 3
    assert h_score(features, labels) == 0.0  # cov(f) = 0, so pinv = 0
    assert tmi(features, labels) == pytest.approx(0.0, abs=1e-12)  # no spread inside any class
    assert tmi(features, labels, normalize=False) == pytest.approx(0.0, abs=1e-12)
    fit = logme_per_class(features, labels)
    assert all(np.isfinite(v).all() for v in fit.values())
    assert np.isfinite(logme(features, labels))


def test_perfect_source_gives_zero_nce_and_leep():
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert nce(labels + 5, labels) == 0.0
    assert leep(np.eye(8)[labels + 5], labels) == pytest.approx(0.0, abs=1e-15)


def test_nce_by_hand():
    labels, pseudo = np.array([0, 0, 1, 1]), np.array([3, 3, 3, 0])
    h_given_z3 = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert nce(pseudo, labels) == pytest.approx(-3 / 4 * h_given_z3, rel=1e-14)


def test_leep_by_hand():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 1])
    joint = np.array([[1.4, 0.6], [0.1, 0.9]]) / 3
    cond = joint / joint.sum(axis=0)
    expected = np.mean([np.log(probs[i] @ cond[labels[i]]) for i in range(3)])
    assert leep(probs, labels) == pytest.approx(expected, rel=1e-14)


def test_source_class_with_no_mass_is_ignored_by_leep():
    probs = np.array([[0.7, 0.0, 0.3], [0.2, 0.0, 0.8]])
    assert leep(probs, [0, 1]) == pytest.approx(leep(probs[:, [0, 2]], [0, 1]), rel=1e-14)


def test_probs_within_tolerance_are_accepted():
    probs = np.array([[0.5, 0.5 + 5e-7], [0.25, 0.75]])
    assert np.isfinite(leep(probs, [0, 1]))


F4 = np.arange(12.0).reshape(4, 3) ** 1.5
Y4 = np.array([0, 1, 0, 1])
P4 = np.full((4, 2), 0.5)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: logme(F4, [0, 2, 0, 2]), r"missing classes \[1\]"),
        (lambda: h_score(F4, [0, 3, 3, 0]), r"missing classes \[1, 2\]"),
        (lambda: leep(P4, [1, 1, 1, 1]), r"missing classes \[0\]"),
        (lambda: logme(F4, Y4[:3]), "labels"),
        (lambda: h_score(F4[:3], Y4), "labels"),
        (lambda: leep(P4[:3], Y4), "source_probs"),
        (lambda: nce([0, 1, 0], Y4), "source_pseudo_labels"),
        (lambda: logme(np.where(F4 > 5, np.nan, F4), Y4), "features"),
        (lambda: h_score(np.where(F4 > 5, np.inf, F4), Y4), "features"),
        (lambda: logme(F4[:, 0], Y4), "features"),
        (lambda: logme(F4, Y4.astype(float)), "integer"),
        (lambda: logme(F4, [0, -1, 0, 1]), ">= 0"),
        (lambda: nce([0, -1, 0, 1], Y4), "source_pseudo_labels"),
        (lambda: leep(P4 * 1.01, Y4), "sum to 1"),
        (lambda: leep(np.array([[1.5, -0.5]] * 4), Y4), "non-negative"),
        (lambda: leep(np.where(P4 > 0, np.nan, P4), Y4), "finite"),
        (lambda: h_score(F4[:1], Y4[:1]), "N >= 2"),
        (lambda: tmi(F4, [0, 2, 0, 2]), r"missing classes \[1\]"),
        (lambda: tmi(F4[:3], Y4), "labels"),
        (lambda: tmi(F4, Y4.astype(float)), "integer"),
        (lambda: tmi(np.where(F4 > 5, np.nan, F4), Y4), "features"),
        (lambda: tmi(F4.ravel(), Y4), "features"),
        (lambda: tmi(F4, Y4, eps_sq=0.0), "eps_sq"),
        (lambda: tmi(F4, Y4, eps_sq=-0.5), "eps_sq"),
        (lambda: tmi(F4, Y4, eps_sq=float("nan")), "eps_sq"),
        (lambda: tmi(F4, Y4, eps_sq=float("inf")), "eps_sq"),
        (lambda: tmi(F4, Y4, eps_sq="small"), "eps_sq"),
        (lambda: transferability_scores(F4, Y4, P4[:2]), "source_probs"),
    ],
)
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- TMI -----------------------------------------------------------------------------------------


def _brute_force_tmi(features, labels, eps_sq, normalize):
    """TMI written out naively: unit-norm rows by hand, each class's mean and D x D covariance from
    loops over its samples, and det(I + D / eps^2 cov) as the product of its eigenvalues, always in
    D x D (no Gram-matrix switch, no log1p)."""
    n, d = features.shape
    rows = [[float(x) for x in row] for row in features]
    if normalize:
        rows = [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in rows]
    total = 0.0
    for c in sorted(set(labels.tolist())):
        members = [rows[i] for i in range(n) if labels[i] == c]
        mean = [sum(row[j] for row in members) / len(members) for j in range(d)]
        cov = np.zeros((d, d))
        for row in members:
            diff = np.array([row[j] - mean[j] for j in range(d)])
            cov += np.outer(diff, diff)
        cov /= len(members)
        det = np.prod(np.linalg.eigvals(np.eye(d) + d / eps_sq * cov)).real
        total += len(members) / n * 0.5 * math.log(det)
    return total


def _uneven_classes(sizes, d, seed, spread=1.0):
    """Gaussian classes of the given sizes, shuffled, with well separated means."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    means = rng.normal(scale=3.0, size=(len(sizes), d))
    return means[labels] + spread * rng.normal(size=(labels.size, d)), labels


@pytest.mark.parametrize(
    ("sizes", "d", "eps_sq", "normalize"),
    [
        ((5, 5, 5), 4, 0.5, True),
        ((5, 5, 5), 4, 0.5, False),
        ((2, 5, 9), 3, 0.5, True),  # uneven classes: weights n_c / N, not 1 / C
        ((2, 5, 9), 3, 2.0, False),
        ((3, 3, 4), 7, 0.1, True),  # n_c < D: the n_c x n_c Gram path
        ((1, 4, 6), 9, 0.5, False),  # a single-sample class adds 0
    ],
)
def test_tmi_matches_brute_force(sizes, d, eps_sq, normalize):
    features, labels = _uneven_classes(sizes, d, seed=sum(sizes) + d)
    got = tmi(features, labels, eps_sq=eps_sq, normalize=normalize)
    assert got == pytest.approx(_brute_force_tmi(features, labels, eps_sq, normalize), rel=1e-10, abs=1e-12)


def test_tmi_by_hand():
    # 1-D, not normalised, eps^2 = 0.5: class 0 {1, 3} has variance 1, class 1 {0, 0, 6} variance 8,
    # so R_0 = 1/2 ln(1 + 1 / 0.5), R_1 = 1/2 ln(1 + 8 / 0.5), weighted 2/5 and 3/5.
    features, labels = np.array([[1.0], [3.0], [0.0], [0.0], [6.0]]), np.array([0, 0, 1, 1, 1])
    expected = 2 / 5 * 0.5 * np.log(3.0) + 3 / 5 * 0.5 * np.log(17.0)
    assert tmi(features, labels, eps_sq=0.5, normalize=False) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("normalize", [True, False])
def test_tmi_is_invariant_to_order_class_names_and_orthogonal_maps(normalize):
    features, labels = _uneven_classes((4, 7, 9), 6, seed=11)
    base = tmi(features, labels, normalize=normalize)
    rng = np.random.default_rng(5)
    order = rng.permutation(labels.size)
    names = np.array([2, 0, 1])  # class c is renamed names[c]
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    variants = {
        "shuffled samples": (features[order], labels[order]),
        "renamed classes": (features, names[labels]),
        "permuted dimensions": (features[:, rng.permutation(6)], labels),
        "rotated features": (features @ rotation, labels),
    }
    for name, (f, y) in variants.items():
        assert tmi(f, y, normalize=normalize) == pytest.approx(base, rel=1e-10), name


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, -2.0])
def test_tmi_normalised_ignores_the_scale_of_each_feature_vector(scale):
    features, labels = _uneven_classes((6, 6, 6), 5, seed=2)
    base = tmi(features, labels)
    assert tmi(scale * features, labels) == pytest.approx(base, rel=1e-10)
    per_row = scale * np.random.default_rng(3).uniform(0.1, 10.0, size=(labels.size, 1))
    assert tmi(per_row * features, labels) == pytest.approx(base, rel=1e-10)
    assert tmi(features + 1.0, labels) != pytest.approx(base, rel=1e-3)  # but the origin matters


@pytest.mark.parametrize("scale", [1e-2, 0.5, 3.0, -4.0])
def test_tmi_unnormalised_scale_trades_against_eps(scale):
    features, labels = _uneven_classes((6, 6, 6), 5, seed=4)
    scaled = tmi(scale * features, labels, eps_sq=0.5, normalize=False)
    assert scaled == pytest.approx(tmi(features, labels, eps_sq=0.5 / scale**2, normalize=False), rel=1e-10)
    base = tmi(features, labels, eps_sq=0.5, normalize=False)
    assert (scaled > base) == (abs(scale) > 1)  # the score itself is not scale-free


def test_tmi_unnormalised_ignores_where_each_class_sits():
    features, labels = _uneven_classes((3, 5, 8), 4, seed=6)
    shifts = np.random.default_rng(6).normal(scale=50.0, size=(3, 4))
    moved = features + shifts[labels]  # every class translated by its own vector
    assert tmi(moved, labels, normalize=False) == pytest.approx(tmi(features, labels, normalize=False), rel=1e-9)


@pytest.mark.parametrize("normalize", [True, False])
def test_tmi_scores_tighter_classes_lower(normalize):
    # the paper's direction: more intra-class variance = more transferable, so collapsed classes lose
    rng = np.random.default_rng(8)
    labels = np.arange(60) % 3
    means, noise = rng.normal(scale=4.0, size=(3, 8)), rng.normal(size=(60, 8))
    scores = [tmi(means[labels] + s * noise, labels, normalize=normalize) for s in (0.05, 0.3, 1.0)]
    assert 0.0 < scores[0] < scores[1] < scores[2]


def test_tmi_grows_as_the_distortion_shrinks():
    features, labels = _uneven_classes((5, 5), 4, seed=9)
    scores = [tmi(features, labels, eps_sq=e) for e in (4.0, 0.5, 1e-2, 1e-4)]
    assert all(a < b for a, b in zip(scores, scores[1:]))
    assert tmi(features, labels) == tmi(features, labels, eps_sq=TMI_EPS_SQ)


def test_tmi_single_sample_classes_and_zero_vectors_score_zero():
    features = np.random.default_rng(10).normal(size=(4, 3))
    assert tmi(features, np.arange(4)) == 0.0  # every class has one sample: nothing varies
    assert tmi(np.zeros((6, 3)), np.arange(6) % 2) == 0.0  # zero vectors stay zero when normalised


# --- kendall_tau --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kendall_tau_matches_scipy_tau_b_with_ties(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 4, size=15).astype(float), rng.normal(size=15)
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y, variant="b").statistic, rel=1e-14)


def test_kendall_tau_perfect_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau(torch.tensor([1.0, 2.0, 3.0]), np.array([3, 2, 1])) == pytest.approx(-1.0)


@pytest.mark.parametrize(("x", "y"), [([], []), ([1.0], [2.0]), ([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [5, 5, 5])])
def test_kendall_tau_undefined_is_nan_without_warnings(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(kendall_tau(x, y))


@pytest.mark.parametrize(("x", "y"), [([1, 2], [1, 2, 3]), ([[1, 2]], [[1, 2]]), ([1, np.nan], [1, 2])])
def test_kendall_tau_invalid(x, y):
    with pytest.raises(ValueError, match="x and y"):
        kendall_tau(x, y)


# --- teacher_weights ----------------------------------------------------------------------------


def test_weighted_is_softmax_of_standardised_scores():
    scores = np.array([-0.3, 0.1, 0.05, 0.4])
    z = (scores - scores.mean()) / scores.std()
    expected = np.exp(z / 0.5) / np.exp(z / 0.5).sum()
    np.testing.assert_allclose(teacher_weights(scores, temperature=0.5, mode="weighted"), expected, rtol=1e-14)


def test_weighted_is_invariant_to_shift_and_positive_scale():
    scores = np.array([1.0, 3.0, 2.0])
    a = teacher_weights(scores, temperature=1.0, mode="weighted")
    np.testing.assert_allclose(teacher_weights(100 * scores - 7, temperature=1.0, mode="weighted"), a, rtol=1e-12)
    assert a.sum() == pytest.approx(1.0) and np.argmax(a) == 1 and a[1] > a[2] > a[0]


def test_weighted_sharpens_as_temperature_drops():
    scores = [0.2, 0.9, 0.5]
    np.testing.assert_allclose(teacher_weights(scores, temperature=1e-3, mode="weighted"), [0, 1, 0], atol=1e-12)
    assert teacher_weights(scores, temperature=1e3, mode="weighted") == pytest.approx(np.full(3, 1 / 3), rel=1e-2)


@pytest.mark.parametrize("scores", [[0.7], [0.1, 0.1, 0.1], [-2.0, -2.0]])
def test_equal_scores_or_one_teacher_give_uniform_weights(scores):
    got = teacher_weights(scores, temperature=0.1, mode="weighted")
    np.testing.assert_array_equal(got, np.full(len(scores), 1 / len(scores)))


@pytest.mark.parametrize(("scores", "best"), [([0.1, 0.5, 0.3], 1), ([0.4, 0.2, 0.4], 0), ([2.0], 0)])
def test_nearest_is_one_hot_on_best_lowest_index_on_ties(scores, best):
    got = teacher_weights(scores, temperature=1.0, mode="nearest")
    np.testing.assert_array_equal(got, np.eye(len(scores))[best])
    assert got.dtype == np.float64


@pytest.mark.parametrize(
    ("scores", "temperature", "mode", "match"),
    [
        ([1.0, 2.0], 1.0, "average", r"mode must be one of \('nearest', 'weighted'\)"),
        ([1.0, 2.0], 0.0, "weighted", "temperature"),
        ([1.0, 2.0], -1.0, "nearest", "temperature"),
        ([1.0, 2.0], float("inf"), "weighted", "temperature"),
        ([1.0, 2.0], float("nan"), "weighted", "temperature"),
        ([1.0, 2.0], "warm", "weighted", "temperature"),
        ([], 1.0, "weighted", "scores"),
        ([1.0, float("nan")], 1.0, "nearest", "scores"),
        ([[1.0, 2.0]], 1.0, "weighted", "scores"),
    ],
)
def test_teacher_weights_invalid(scores, temperature, mode, match):
    with pytest.raises(ValueError, match=match):
        teacher_weights(scores, temperature=temperature, mode=mode)
