import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tlpipe.evaluation.metrics import (
    classification_report,
    draw_few_shot_indices,
    few_shot_probe,
    linear_probe_accuracy,
    summarise,
)

# --- classification_report ------------------------------------------------------------------------


def test_report_by_hand():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 3])
    r = classification_report(y_true, y_pred, num_classes=4)
    expected_cm = np.array([[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(r["confusion_matrix"], expected_cm)
    assert r["confusion_matrix"].dtype == np.int64
    assert r["accuracy"] == pytest.approx(3 / 6)
    # F1 = 2TP / (2TP + FP + FN): class 0: 2/4, class 1: 4/6, class 2: 0/1, class 3: 0/1
    assert r["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0 + 0) / 4)
    assert r["per_class_accuracy"] == pytest.approx([0.5, 2 / 3, 0.0, None])
    assert r["per_class_accuracy"][3] is None


def test_class_without_support_or_predictions_counts_as_zero_f1():
    y = np.array([0, 1, 0, 1])
    r = classification_report(y, y, num_classes=3)
    assert r["accuracy"] == 1.0
    assert r["macro_f1"] == pytest.approx(2 / 3)
    expected = f1_score(y, y, labels=[0, 1, 2], average="macro", zero_division=0)
    assert r["macro_f1"] == pytest.approx(expected)
    assert r["per_class_accuracy"] == [1.0, 1.0, None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 6, size=40), rng.integers(0, 6, size=40)
    r = classification_report(y_true, y_pred, num_classes=7)
    expected = f1_score(y_true, y_pred, labels=list(range(7)), average="macro", zero_division=0)
    assert r["macro_f1"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "num_classes", "match"),
    [
        ([0, 1], [0], 2, "equal length"),
        ([0, 2], [0, 1], 2, "y_true"),
        ([0, 1], [0, -1], 2, "y_pred"),
        ([], [], 2, "y_true"),
        ([0.0, 1.0], [0, 1], 2, "y_true"),
        ([0, 1], [0, 1], 0, "num_classes"),
    ],
)
def test_report_errors(y_true, y_pred, num_classes, match):
    with pytest.raises(ValueError, match=match):
        classification_report(np.array(y_true), np.array(y_pred), num_classes=num_classes)


# --- few-shot probe -------------------------------------------------------------------------------


def _clusters(num_classes, per_class, dim, spread, seed):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * 10
    labels = np.repeat(np.arange(num_classes), per_class)
    return means[labels] + spread * rng.normal(size=(labels.size, dim)), labels


def test_draws_have_shots_per_class_and_are_paired():
    labels = np.repeat(np.arange(4), [6, 7, 5, 9])
    draws = draw_few_shot_indices(labels, shots=3, draws=5, seed=11)
    assert len(draws) == 5
    for idx in draws:
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, no repeats
        np.testing.assert_array_equal(np.bincount(labels[idx]), [3, 3, 3, 3])
    again = draw_few_shot_indices(labels, shots=3, draws=5, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    other = draw_few_shot_indices(labels, shots=3, draws=5, seed=12)
    assert not all(np.array_equal(a, b) for a, b in zip(draws, other))
    assert len({tuple(d) for d in draws}) > 1  # draws differ from each other


def test_draws_all_when_shots_equal_smallest_class():
    labels = np.array([0, 0, 1, 1, 1])
    idx = draw_few_shot_indices(labels, shots=2, draws=1, seed=0)[0]
    assert {0, 1} <= set(idx.tolist()) and idx.size == 4


@pytest.mark.parametrize(("kwargs", "match"), [({"shots": 4}, r"class 2 has 3 labelled images"), ({"shots": 0}, "shots"), ({"draws": 0}, "draws")])
def test_draw_errors(kwargs, match):
    labels = np.array([0] * 5 + [1] * 4 + [2] * 3)
    args = {"shots": 2, "draws": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        draw_few_shot_indices(labels, **args)


def test_separated_clusters_give_perfect_accuracy():
    x, y = _clusters(5, 30, 16, spread=0.5, seed=0)
    xt, yt = _clusters(5, 20, 16, spread=0.5, seed=0)
    draws = draw_few_shot_indices(y, shots=2, draws=4, seed=0)
    acc = few_shot_probe(x, y, xt, yt, draws)
    assert acc.shape == (4,) and acc.dtype == np.float64
    np.testing.assert_array_equal(acc, 1.0)


def test_random_features_are_near_chance():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 32)), np.repeat(np.arange(4), 50)
    xt, yt = rng.normal(size=(400, 32)), np.repeat(np.arange(4), 100)
    acc = few_shot_probe(x, y, xt, yt, draw_few_shot_indices(y, shots=10, draws=10, seed=0))
    assert abs(acc.mean() - 0.25) < 0.06


def test_probe_is_deterministic_and_converges():
    x, y = _clusters(3, 20, 8, spread=8.0, seed=5)
    xt, yt = _clusters(3, 30, 8, spread=8.0, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning
        a = linear_probe_accuracy(x, y, xt, yt)
    assert a == linear_probe_accuracy(x, y, xt, yt)
    assert 0.0 <= a <= 1.0


@pytest.mark.parametrize(
    ("train_shape", "test_shape", "train_labels", "match"),
    [
        ((6, 3), (4, 2), [0, 1] * 3, "D="),
        ((5, 3), (4, 3), [0, 1] * 3, "train_features"),
        ((6, 3), (4, 3), [0] * 6, "at least 2 classes"),
    ],
)
def test_probe_errors(train_shape, test_shape, train_labels, match):
    with pytest.raises(ValueError, match=match):
        linear_probe_accuracy(np.ones(train_shape), np.array(train_labels), np.ones(test_shape), np.array([0, 1, 0, 1]))


def test_few_shot_probe_rejects_bad_draws():
    x, y = np.ones((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="draws"):
        few_shot_probe(x, y, x, y, [])
    with pytest.raises(ValueError, match=r"draws\[0\]"):
        few_shot_probe(x, y, x, y, [np.array([0, 4])])


def test_summarise():
    s = summarise([0.5, 0.7, 0.9])
    assert s == {"mean": pytest.approx(0.7), "std": pytest.approx(0.2), "n": 3}
    assert summarise(np.array([0.3])) == {"mean": 0.3, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match="values"):
        summarise([])


def test_probe_ranks_backbones_by_class_separation():
    # 20 draws x 3 shot levels x 3 backbones, 10 classes, 128-dim features, 500 test images
    rng = np.random.default_rng(0)
    y, yt = np.repeat(np.arange(10), 30), np.repeat(np.arange(10), 50)
    backbones = []
    for scale in (0.2, 0.5, 1.0):
        means = rng.normal(size=(10, 128)) * scale
        backbones.append((means[y] + rng.normal(size=(y.size, 128)), means[yt] + rng.normal(size=(yt.size, 128))))
    for shots in (1, 5, 10):
        draws = draw_few_shot_indices(y, shots=shots, draws=20, seed=0)
        means_by_backbone = [few_shot_probe(x, y, xt, yt, draws).mean() for x, xt in backbones]
        assert means_by_backbone[0] < means_by_backbone[1] < means_by_backbone[2]
