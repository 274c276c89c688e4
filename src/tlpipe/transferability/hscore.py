"""H-score: Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
Learning", ICIP 2019, Def. 2: tr(cov(f)^+ cov(E[f|y]))."""

from __future__ import annotations

import numpy as np

from tlpipe.transferability._arrays import as_features, as_labels

HSCORE_RCOND = 1e-10  # pinv cutoff relative to the largest singular value (reference)


def _covariance(x: np.ndarray) -> np.ndarray:
    """Unbiased [D, D] covariance, as the reference getCov; exactly 0 on constant columns."""
    centred = x - x.mean(axis=0, keepdims=True)
    # the rounded mean leaves ~eps noise in a constant column, which a relative pinv cutoff
    # would then invert; zeroing it gives H = 0 for constant features or a single class
    centred[:, np.ptp(x, axis=0) == 0] = 0.0
    return centred.T @ centred / (x.shape[0] - 1)


def h_score(features, labels) -> float:
    """H-score = tr(pinv(cov(f)) cov(g)), g_i the mean feature of sample i's class (Bao et al. 2019).

    The product is a matrix product; pinv drops singular values <= 1e-10 x the largest. Constant
    features give cov(f) = 0, so pinv is 0 and H = 0; a single class gives cov(g) = 0, so H = 0
    (both exactly: constant columns are centred to exact zeros).

    Args:
        features: [N, D] features, N >= 2.
        labels: [N] class ids; C_t = max + 1 and every class must occur.

    Returns:
        H-score (>= 0; higher is better).
    """
    features = as_features(features)
    if features.shape[0] < 2:
        raise ValueError(f"h_score needs N >= 2 samples for the unbiased covariance, got N = {features.shape[0]}")
    labels, num_classes = as_labels(labels, features.shape[0])
    one_hot = np.eye(num_classes)[labels]  # [N, C_t]
    class_means = (one_hot.T @ features) / one_hot.sum(axis=0)[:, None]
    g = class_means[labels]
    return float(np.trace(np.linalg.pinv(_covariance(features), rcond=HSCORE_RCOND) @ _covariance(g)))
