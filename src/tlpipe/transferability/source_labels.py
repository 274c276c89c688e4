"""Estimates from the source classifier's predictions on the target images.

- LEEP: Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
  Representations", ICML 2020, Eq. 1-2.
- NCE: Tran et al., "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019,
  Def. 1 (negative conditional entropy of target labels given source pseudo-labels).
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from tlpipe.transferability._arrays import as_class_ids, as_labels, as_probs


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
    labels, num_classes = as_labels(labels)
    probs = as_probs(source_probs, labels.size)
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
    labels, num_classes = as_labels(labels)
    pseudo = as_class_ids(source_pseudo_labels, labels.size, "source_pseudo_labels")
    counts = np.zeros((num_classes, int(pseudo.max()) + 1))
    np.add.at(counts, (labels, pseudo), 1.0)
    per_source = counts.sum(axis=0)
    seen = per_source > 0
    cond = counts[:, seen] / per_source[seen]  # p(y | z) for source classes that occur
    entropy = -xlogy(cond, cond).sum(axis=0)  # H(Y | z), with 0 ln 0 = 0
    return float(-(per_source[seen] / pseudo.size * entropy).sum() + 0.0)  # + 0.0 turns -0.0 into 0.0
