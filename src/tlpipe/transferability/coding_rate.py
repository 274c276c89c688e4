"""TMI: Xu and Kang, "Fast and Accurate Transferability Measurement by Evaluating Intra-class Feature
Variance", ICCV 2023: the conditional entropy H(f | y) of the features given the label, each class's
entropy taken as the coding rate of its centred features (Ma et al., TPAMI 2007)."""

from __future__ import annotations

import numpy as np

from tlpipe.checks import check_temperature
from tlpipe.transferability._arrays import as_features, as_labels

TMI_EPS_SQ = 0.5  # squared distortion eps^2 of the coding rate (MCR^2's value for unit-norm features)


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
    features = as_features(features)
    labels, num_classes = as_labels(labels, features.shape[0])
    check_temperature("eps_sq", eps_sq)  # the same rule: a finite number > 0
    if normalize:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.where(norms > 0, norms, 1.0)
    n = features.shape[0]
    return float(sum((labels == c).sum() / n * _centred_coding_rate(features[labels == c], float(eps_sq))
                     for c in range(num_classes)))
