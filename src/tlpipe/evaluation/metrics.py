"""Classification metrics and the few-shot linear-probe transfer score.

The transfer score follows the few-shot linear evaluation used for self-supervised and
distilled representations (e.g. SEED, Fang et al., ICLR 2021, Sec. 4; SimCLR, Chen et al.,
ICML 2020, Sec. B.6): a multinomial logistic regression is fitted on frozen features of a few
labelled images per class and scored on a test set. The few-shot draws are made once from the
labels alone and reused for every backbone, so differences between backbones are paired.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController  # installed with scikit-learn, which uses it too

PROBE_C = 1.0  # inverse L2 strength of the probe, fixed so every backbone is scored alike
PROBE_MAX_ITER = 1000


@cache
def _threadpools() -> ThreadpoolController:
    """The BLAS/OpenMP pools loaded by numpy, scipy and sklearn, inspected once (it reads /proc)."""
    return ThreadpoolController()


def _as_labels(values, name: str) -> np.ndarray:
    """Returns a 1-D int64 label array, or raises naming the argument."""
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {values.dtype}")
    return values.astype(np.int64)


def classification_report(y_true, y_pred, *, num_classes: int) -> dict:
    """Accuracy, macro-F1, per-class accuracy and the confusion matrix.

    F1 per class is 2·TP / (2·TP + FP + FN). A class with no support and no predictions has an
    undefined F1; following scikit-learn's `zero_division=0` convention it counts as 0 and is
    still averaged into `macro_f1` over all `num_classes` classes.

    Args:
        y_true: [N] true class ids in [0, num_classes).
        y_pred: [N] predicted class ids in [0, num_classes).
        num_classes: C.

    Returns:
        dict with `accuracy` (float), `macro_f1` (float), `per_class_accuracy` (list of C
        recalls; None for classes absent from y_true) and `confusion_matrix` (int64 [C, C],
        rows = true class, columns = predicted class).
    """
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have equal length, got {y_true.size} and {y_pred.size}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.min() < 0 or values.max() >= num_classes:
            got = f"[{values.min()}, {values.max()}]"
            raise ValueError(f"{name} values must lie in [0, {num_classes}), got range {got}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    f1_denominator = support + predicted  # = 2·TP + FP + FN
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros(num_classes), where=f1_denominator > 0)
    recall = [float(tp[c] / support[c]) if support[c] > 0 else None for c in range(num_classes)]
    return {
        "accuracy": float(tp.sum() / y_true.size),
        "macro_f1": float(f1.mean()),
        "per_class_accuracy": recall,
        "confusion_matrix": cm,
    }


def draw_few_shot_indices(labels, *, shots: int, draws: int, seed: int) -> list[np.ndarray]:
    """Draws `shots` pool indices per class, `draws` times, from the labels alone.

    Because the draws depend only on the labels and the seed, the same draws can be reused for
    every backbone, which pairs the per-draw accuracies across backbones.

    Args:
        labels: [N] class ids of the labelled pool.
        shots: images per class per draw (>= 1), sampled without replacement.
        draws: number of independent draws (>= 1).
        seed: seed of the `numpy.random.Generator`.

    Returns:
        `draws` int64 arrays of `shots · C` pool positions, sorted ascending.
    """
    labels = _as_labels(labels, "labels")
    if int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}")
    if int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < shots:
        c = int(np.argmin(counts))
        raise ValueError(f"class {classes[c]} has {counts[c]} labelled images, fewer than shots={shots}")
    members = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(draws):
        picks = [rng.choice(m, size=shots, replace=False) for m in members]  # class order
        result.append(np.sort(np.concatenate(picks)))
    return result


def _check_features(features, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns float64 features [N, D] and int64 labels [N], or raises naming the argument."""
    features = np.asarray(features, dtype=np.float64)
    labels = _as_labels(labels, f"{name}_labels")
    if features.ndim != 2 or features.shape[0] != labels.size:
        raise ValueError(
            f"{name}_features must be [N, D] with N = {labels.size} ({name}_labels), got {features.shape}"
        )
    return features, labels


def linear_probe_accuracy(
    train_features, train_labels, test_features, test_labels, *, c: float = PROBE_C
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised frozen features.

    The standardisation is fitted on the training features only (no test statistics leak in).
    lbfgs is deterministic, so equal inputs give equal accuracies.

    Args:
        train_features: [N, D] features of the labelled training images.
        train_labels: [N] their class ids; at least two classes.
        test_features: [M, D] features of the test images.
        test_labels: [M] their class ids.
        c: inverse L2 regularisation strength (sklearn's C).

    Returns:
        Fraction of test images classified correctly.
    """
    x_train, y_train = _check_features(train_features, train_labels, "train")
    x_test, y_test = _check_features(test_features, test_labels, "test")
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"test_features has D={x_test.shape[1]}, train_features has D={x_train.shape[1]}")
    if np.unique(y_train).size < 2:
        raise ValueError("train_labels must contain at least 2 classes")
    # Problems this small run ~10x slower with multi-threaded BLAS/OpenMP (sync overhead).
    with _threadpools().limit(limits=1):
        scaler = StandardScaler().fit(x_train)
        probe = LogisticRegression(C=c, solver="lbfgs", max_iter=PROBE_MAX_ITER)
        probe.fit(scaler.transform(x_train), y_train)
        return float(np.mean(probe.predict(scaler.transform(x_test)) == y_test))


def few_shot_probe(
    pool_features, pool_labels, test_features, test_labels, draws: list[np.ndarray]
) -> np.ndarray:
    """Linear-probe accuracy for each few-shot draw from the labelled pool.

    Args:
        pool_features: [N, D] features of the labelled pool.
        pool_labels: [N] class ids of the pool.
        test_features: [M, D] features of the test images.
        test_labels: [M] their class ids.
        draws: pool positions per draw, from `draw_few_shot_indices` (reuse them across backbones).

    Returns:
        float64 [len(draws)] accuracies, in draw order.
    """
    pool_features, pool_labels = _check_features(pool_features, pool_labels, "pool")
    if len(draws) == 0:
        raise ValueError("draws must contain at least one index array")
    for i, idx in enumerate(draws):
        idx = np.asarray(idx)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= pool_labels.size:
            raise ValueError(f"draws[{i}] must be non-empty 1-D positions in [0, {pool_labels.size})")
    accuracies = [
        linear_probe_accuracy(pool_features[idx], pool_labels[idx], test_features, test_labels) for idx in draws
    ]
    return np.array(accuracies, dtype=np.float64)


def summarise(values) -> dict:
    """Mean, sample standard deviation (ddof=1) and count of a set of scores.

    Args:
        values: 1-D scores, e.g. per-draw accuracies or paired per-draw differences.

    Returns:
        dict(mean, std, n); std is 0.0 when n == 1 (no spread can be estimated).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": int(values.size)}


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between two score lists, e.g. a metric and the measured accuracy per model.

    Args:
        x: [M] finite scores.
        y: [M] finite scores.

    Returns:
        tau-b in [-1, 1]; nan (without a warning) when M < 2 or either input is constant.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)  # variant "b" (ties corrected)
