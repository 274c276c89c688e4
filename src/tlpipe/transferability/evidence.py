"""LogME: You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
ICML 2021 (Alg. 1), in the fixed-point form of thuml/LogME with the log-determinant padded to all D
eigenvalues (thuml/LogME PR #24), so it is also correct when D > N."""

from __future__ import annotations

import numpy as np

from tlpipe.transferability._arrays import as_features, as_labels

LOGME_MAX_PASSES = 11  # part of the reference definition, not a tuning knob
LOGME_REL_TOL = 1e-3  # stop when |alpha/beta - lambda| / lambda <= this
LOGME_EPS = 1e-5  # added to m2 and r2 in the alpha and beta updates (reference)


def _fit_evidence(sigma: np.ndarray, x2: np.ndarray, r0: float, n: int) -> tuple[float, float, float, int]:
    """Fixed-point LogME fit of one target column (You et al. 2021, Alg. 1; fixture README sec. 1).

    Args:
        sigma: [k] nonzero eigenvalues s_i^2 of F^T F.
        x2: [k] squared projections of the target on the left singular vectors.
        r0: squared norm of the target outside the column space of F.
        n: N.

    Returns:
        (evidence / N, alpha, beta, passes run).
    """
    alpha, beta = 1.0, 1.0
    for passes in range(1, LOGME_MAX_PASSES + 1):
        lam = alpha / beta
        gamma = (sigma / (sigma + lam)).sum()
        m2 = (sigma * x2 / (sigma + lam) ** 2).sum()
        r2 = (x2 * lam**2 / (sigma + lam) ** 2).sum() + r0
        alpha = gamma / (m2 + LOGME_EPS)
        beta = (n - gamma) / (r2 + LOGME_EPS)
        if abs(alpha / beta - lam) <= LOGME_REL_TOL * lam:  # = relative test, safe at lam = 0
            break
    # (D/2) ln a - 1/2 sum_{j<=D} ln(a + b sigma_j), with sigma_j = 0 for j > k (PR #24 padding),
    # equals -1/2 sum_{i<=k} ln(1 + b sigma_i / a); this form stays finite when k = 0 (alpha = 0).
    log_det_terms = -0.5 * np.log1p(beta * sigma / alpha).sum()  # empty sum when k = 0
    evidence = log_det_terms + n / 2 * np.log(beta) - beta / 2 * r2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)
    return float(evidence / n), float(alpha), float(beta), passes


def logme_per_class(features, labels) -> dict[str, np.ndarray]:
    """Per-class LogME evidence and the fitted prior/noise precisions.

    Each class c is a 0/1 regression target t = F w + noise with w ~ N(0, alpha^-1 I) and noise
    precision beta (You et al. 2021, Eq. 2-4). The thin SVD of F is taken once; singular values
    <= max(s) * max(N, D) * eps are treated as zero (numpy's matrix_rank rule), and the
    log-determinant runs over all D eigenvalues of F^T F, so D > N and rank-deficient F are handled.

    Args:
        features: [N, D] features (not centred).
        labels: [N] class ids; C_t = max + 1 and every class must occur.

    Returns:
        dict of float64 [C_t] arrays `evidence` (per-sample log evidence), `alpha`, `beta`, and
        int64 `iterations` (fixed-point passes run, at most 11).
    """
    features = as_features(features)
    labels, num_classes = as_labels(labels, features.shape[0])
    n = features.shape[0]
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    k = int((s > s.max() * max(features.shape) * np.finfo(np.float64).eps).sum())
    u, sigma = u[:, :k], s[:k] ** 2
    fits = []
    for c in range(num_classes):
        t = (labels == c).astype(np.float64)
        x = u.T @ t
        r0 = max(float(t @ t - x @ x), 0.0)  # rounding may push it a hair below 0 when t is in span(F)
        fits.append(_fit_evidence(sigma, x**2, r0, n))
    evidence, alpha, beta, passes = (np.array(column) for column in zip(*fits))
    return {"evidence": evidence, "alpha": alpha, "beta": beta, "iterations": passes.astype(np.int64)}


def logme(features, labels) -> float:
    """LogME: the mean over classes of the per-sample log evidence (You et al. 2021, Alg. 1).

    Correct for D > N (log-determinant padded to D terms, thuml/LogME PR #24). A single class
    scores the fit of the all-ones target; constant (rank-1) and all-zero (rank-0, alpha = 0)
    features also give a finite score.

    Args:
        features: [N, D] features of the model under test on the labelled target set.
        labels: [N] class ids; C_t = max + 1 and every class must occur.

    Returns:
        LogME (higher means a better expected transfer).
    """
    return float(logme_per_class(features, labels)["evidence"].mean())
