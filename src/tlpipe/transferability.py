"""Transferability estimates (LogME, LEEP, NCE, H-score, TMI) and multi-teacher weights.

Each metric scores how well a frozen model suits a labelled target set without fine-tuning:
- LogME: You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021 (Alg. 1), in the fixed-point form of thuml/LogME with the log-determinant padded to
  all D eigenvalues (thuml/LogME PR #24), so it is also correct when D > N.
- LEEP: Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020, Eq. 1-2.
- NCE: Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019,
  Def. 1 (negative conditional entropy of target labels given source pseudo-labels).
- H-score: Bao et al., "An Information-Theoretic Approach to Transferability in Task Transfer
  Learning", ICIP 2019, Def. 2: tr(cov(f)^+ cov(E[f|y])).
- TMI: Xu and Kang, "Fast and Accurate Transferability Measurement by Evaluating Intra-class Feature
  Variance", ICCV 2023: the conditional entropy H(f | y) of the features given the label, each
  class's entropy taken as the coding rate of its centred features (Ma et al., TPAMI 2007).
Teacher weights follow DistillNearest / DistillWeighted of Borup et al., "Distilling from Similar
Tasks for Transfer Learning on a Budget", ICCV 2023. Everything is float64 numpy; inputs may be
numpy arrays or (CPU) torch tensors. The scores share their input checks and are tested together
against one reference fixture set (TMI, which has no reference fixture, against a brute-force
estimate), which is why they are one module.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy
from scipy.stats import kendalltau

from tlpipe.checks import check_temperature

LOGME_MAX_PASSES = 11  # part of the reference definition, not a tuning knob
LOGME_REL_TOL = 1e-3  # stop when |alpha/beta - lambda| / lambda <= this
LOGME_EPS = 1e-5  # added to m2 and r2 in the alpha and beta updates (reference)
HSCORE_RCOND = 1e-10  # pinv cutoff relative to the largest singular value (reference)
TMI_EPS_SQ = 0.5  # squared distortion eps^2 of the coding rate (MCR^2's value for unit-norm features)
PROBS_SUM_TOL = 1e-6
WEIGHT_MODES = ("nearest", "weighted")


def _as_array(values, dtype=None) -> np.ndarray:
    """np.asarray that also takes torch tensors (detached, moved to the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    return np.asarray(values, dtype=dtype)


def _as_features(features, name: str = "features") -> np.ndarray:
    """Returns float64 [N, D] features, or raises naming the argument."""
    features = _as_array(features, np.float64)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(features)).sum())} entries)")
    return features


def _as_class_ids(values, n: int | None, name: str) -> np.ndarray:
    """Returns int64 non-negative class ids ([n] unless n is None), or raises naming the argument."""
    values = _as_array(values)
    if values.ndim != 1 or values.size == 0 or (n is not None and values.size != n):
        expected = "non-empty 1-D" if n is None else f"1-D with N = {n} entries"
        raise ValueError(f"{name} must be {expected}, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {values.dtype}")
    if values.min() < 0:
        raise ValueError(f"{name} must be >= 0, got minimum {values.min()}")
    return values.astype(np.int64)


def _as_labels(labels, n: int | None = None) -> tuple[np.ndarray, int]:
    """Returns int64 target labels and C_t = max + 1; every class 0..C_t-1 must occur."""
    labels = _as_class_ids(labels, n, "labels")
    num_classes = int(labels.max()) + 1
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(f"labels must cover 0..{num_classes - 1} (C_t = max + 1); missing classes {missing.tolist()}")
    return labels, num_classes


def _as_probs(source_probs, n: int) -> np.ndarray:
    """Returns float64 [N, C_s] source probabilities whose rows sum to 1, or raises."""
    probs = _as_array(source_probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] == 0:
        raise ValueError(f"source_probs must be [N, C_s] with N = {n}, got shape {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise ValueError("source_probs must be finite and non-negative")
    worst = np.abs(probs.sum(axis=1) - 1.0).max()
    if worst > PROBS_SUM_TOL:
        raise ValueError(f"source_probs rows must sum to 1 (tol {PROBS_SUM_TOL}), worst |sum - 1| = {worst:.3g}")
    return probs


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
    features = _as_features(features)
    labels, num_classes = _as_labels(labels, features.shape[0])
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


def leep(source_probs, labels) -> float:
    """LEEP: log expected empirical prediction (Nguyen et al. 2020, Eq. 1-2).

    joint[y, z] = (1/N) sum_{i: y_i = y} theta(x_i)_z, cond = joint / sum_y joint, and
    LEEP = (1/N) sum_i ln sum_z theta(x_i)_z cond[y_i | z]. With one target class cond = 1, so
    LEEP = 0 up to rounding (|LEEP| ~ 1e-16).

    Args:
        source_probs: [N, C_s] source-classifier softmax outputs; rows sum to 1 (tol 1e-6).
        labels: [N] target class ids; C_t = max + 1 and every class must occur.

    Returns:
        LEEP (<= 0; higher is better).
    """
    labels, num_classes = _as_labels(labels)
    probs = _as_probs(source_probs, labels.size)
    one_hot = np.eye(num_classes)[labels]  # [N, C_t]
    joint = one_hot.T @ probs / probs.shape[0]  # [C_t, C_s]
    marginal = joint.sum(axis=0, keepdims=True)
    # a source class with zero mass everywhere gets cond = 0; it is multiplied by zero anyway
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    expected = (probs * cond[labels]).sum(axis=1)  # sum_z theta_z p(y_i | z)
    return float(np.log(expected).mean())


def nce(source_pseudo_labels, labels) -> float:
    """NCE: negative conditional entropy -H(Y | Z) of target labels given source pseudo-labels.

    Tran et al. 2019, Def. 1, from the empirical joint of (y_i, z_i); source classes that never
    occur are skipped. With one target class NCE = 0 exactly.

    Args:
        source_pseudo_labels: [N] source class ids, e.g. the argmax of the source classifier.
        labels: [N] target class ids; C_t = max + 1 and every class must occur.

    Returns:
        NCE (<= 0; higher is better).
    """
    labels, num_classes = _as_labels(labels)
    pseudo = _as_class_ids(source_pseudo_labels, labels.size, "source_pseudo_labels")
    counts = np.zeros((num_classes, int(pseudo.max()) + 1))
    np.add.at(counts, (labels, pseudo), 1.0)
    per_source = counts.sum(axis=0)
    seen = per_source > 0
    cond = counts[:, seen] / per_source[seen]  # p(y | z) for source classes that occur
    entropy = -xlogy(cond, cond).sum(axis=0)  # H(Y | z), with 0 ln 0 = 0
    return float(-(per_source[seen] / pseudo.size * entropy).sum() + 0.0)  # + 0.0 turns -0.0 into 0.0


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
    features = _as_features(features)
    if features.shape[0] < 2:
        raise ValueError(f"h_score needs N >= 2 samples for the unbiased covariance, got N = {features.shape[0]}")
    labels, num_classes = _as_labels(labels, features.shape[0])
    one_hot = np.eye(num_classes)[labels]  # [N, C_t]
    class_means = (one_hot.T @ features) / one_hot.sum(axis=0)[:, None]
    g = class_means[labels]
    return float(np.trace(np.linalg.pinv(_covariance(features), rcond=HSCORE_RCOND) @ _covariance(g)))


def _centred_coding_rate(z: np.ndarray, eps_sq: float) -> float:
    """1/2 ln det(I_D + D / (n eps^2) Zc^T Zc) of [n, D] rows z, Zc = z minus its mean row.

    Sylvester's identity det(I_D + a Zc^T Zc) = det(I_n + a Zc Zc^T) lets the eigenvalues come from
    the smaller Gram matrix; eigvalsh of a PSD Gram may return tiny negatives, clipped to 0, and
    log1p stays accurate for eigenvalues near 0.
    """
    n, d = z.shape
    centred = z - z.mean(axis=0, keepdims=True)
    gram = centred @ centred.T if n <= d else centred.T @ centred
    eig = np.clip(np.linalg.eigvalsh(gram), 0.0, None)
    return 0.5 * float(np.log1p(d / (n * eps_sq) * eig).sum())


def tmi(features, labels, *, eps_sq: float = TMI_EPS_SQ, normalize: bool = True) -> float:
    """TMI: the intra-class feature entropy H(f | y) (Xu and Kang, ICCV 2023).

    TMI reads transferability as how much the features still vary inside each target class (the
    model has not collapsed the class, so it can adapt to it), unlike LogME, LEEP, NCE and H-score,
    which score how separable the classes already are. The paper's score is the conditional
    entropy of the features given the label, the classes weighted by their share of the samples:

        TMI = H(f | y) = sum_c (n_c / N) H(f | y = c),

    with each class's entropy estimated by the lossy coding rate of its features (Ma et al.,
    "Segmentation of Multivariate Mixed Data via Lossy Data Coding and Compression", TPAMI 2007,
    the estimator TransRate and MCR^2 use):

        H(f | y = c) ~ R_c = 1/2 ln det(I_D + D / (n_c eps^2) Zc^T Zc),

    Zc the [n_c, D] features of class c minus their class mean (so R_c measures spread about the
    class centre only: intra-class variance), in nats. With `normalize` every feature vector is
    first scaled to unit L2 norm (a zero vector stays zero).

    The class entropy's estimator is this module's choice, stated here so that it can be checked:
    the coding rate (as TransRate and MCR^2 use it), each class centred on its own mean, unit-norm
    feature vectors and eps below.

    Constants: eps^2 = 0.5 (TMI_EPS_SQ), the value MCR^2 (Yu et al., NeurIPS 2020) uses for
    unit-norm features: their class covariance then has trace <= 1, so D / eps^2 cov has eigenvalues
    of order 1 and R_c follows the shape of the spectrum, where a tiny eps would make it mostly
    count the rank (n_c - 1 when n_c <= D, the usual few-shot case) times ln(1 / eps^2).
    Normalising puts backbones whose features differ in scale on one footing; without it a coding
    rate at a fixed eps mostly ranks feature magnitudes.

    Behaviour: >= 0; higher is better (more intra-class variance). A class of one sample adds 0, one of
    identical samples 0 up to rounding. The score is unchanged by reordering samples, renaming classes and
    any orthogonal map of the feature space (rotations, dimension permutations). With `normalize`
    it is unchanged by multiplying each feature vector by its own non-zero factor (so by any global
    scale) but not by translation; without it, it is unchanged by translating each class by its own
    vector, and scaling every feature by s is the same as dividing eps^2 by s^2:
    tmi(s F, eps_sq=e, normalize=False) == tmi(F, eps_sq=e / s**2, normalize=False).

    Args:
        features: [N, D] features of the model under test on the labelled target set.
        labels: [N] class ids; C_t = max + 1 and every class must occur.
        eps_sq: squared distortion eps^2 of the coding rate (finite, > 0); smaller raises TMI.
        normalize: scale each feature vector to unit L2 norm first.

    Returns:
        TMI in nats (>= 0; higher is better).
    """
    features = _as_features(features)
    labels, num_classes = _as_labels(labels, features.shape[0])
    check_temperature("eps_sq", eps_sq)  # the same rule: a finite number > 0
    if normalize:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.where(norms > 0, norms, 1.0)
    n = features.shape[0]
    return float(sum((labels == c).sum() / n * _centred_coding_rate(features[labels == c], float(eps_sq))
                     for c in range(num_classes)))


def kendall_tau(x, y) -> float:
    """Kendall's tau-b between two score lists, e.g. a metric and the measured accuracy per model.

    Args:
        x: [M] finite scores.
        y: [M] finite scores.

    Returns:
        tau-b in [-1, 1]; nan (without a warning) when M < 2 or either input is constant.
    """
    x, y = _as_array(x, np.float64), _as_array(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)  # variant "b" (ties corrected)


def teacher_weights(scores, *, temperature: float, mode: str) -> np.ndarray:
    """Per-teacher distillation weights from transferability scores (Borup et al. 2023).

    "weighted" (DistillWeighted): the scores are standardised to zero mean and unit (population)
    standard deviation, z, and the weights are softmax(z / temperature); equal scores or a single
    teacher give uniform weights. "nearest" (DistillNearest): a one-hot on the best score, the
    lowest index on ties.

    Args:
        scores: [T] finite scores, higher = more relevant teacher (e.g. LogME per teacher).
        temperature: softmax temperature (> 0, finite); smaller concentrates the weights.
        mode: one of "nearest", "weighted".

    Returns:
        float64 [T] non-negative weights summing to 1.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
    check_temperature("temperature", temperature)
    scores = _as_array(scores, np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"scores must be a non-empty 1-D array of finite values, got {scores!r}")
    if mode == "nearest":
        return np.eye(scores.size)[int(np.argmax(scores))]
    if np.ptp(scores) == 0:  # also covers one teacher: nothing to standardise
        return np.full(scores.size, 1.0 / scores.size)
    z = (scores - scores.mean()) / scores.std() / float(temperature)
    weights = np.exp(z - z.max())
    return weights / weights.sum()


def transferability_scores(features, labels, source_probs=None) -> dict[str, float]:
    """LogME, H-score and TMI of `features`, plus LEEP and NCE when source probabilities are given.

    Args:
        features: [N, D] features of the model under test.
        labels: [N] target class ids; C_t = max + 1 and every class must occur.
        source_probs: optional [N, C_s] source-classifier probabilities; NCE uses their argmax.

    Returns:
        dict with `logme`, `h_score`, `tmi` and, with source_probs, `leep` and `nce`.
    """
    scores = {"logme": logme(features, labels), "h_score": h_score(features, labels), "tmi": tmi(features, labels)}
    if source_probs is not None:
        probs = _as_probs(source_probs, _as_array(features).shape[0])
        scores["leep"] = leep(probs, labels)
        scores["nce"] = nce(np.argmax(probs, axis=1), labels)
    return scores
