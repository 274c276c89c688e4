"""Input checks shared by the transferability estimates: convert once (numpy or CPU torch), fail
before any compute, naming the argument."""

from __future__ import annotations

import numpy as np

PROBS_SUM_TOL = 1e-6


def as_array(values, dtype=None) -> np.ndarray:
    """np.asarray that also takes torch tensors (detached, moved to the CPU)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    return np.asarray(values, dtype=dtype)


def as_features(features, name: str = "features") -> np.ndarray:
    """Returns float64 [N, D] features, or raises naming the argument."""
    features = as_array(features, np.float64)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~np.isfinite(features)).sum())} entries)")
    return features


def as_class_ids(values, n: int | None, name: str) -> np.ndarray:
    """Returns int64 non-negative class ids ([n] unless n is None), or raises naming the argument."""
    values = as_array(values)
    if values.ndim != 1 or values.size == 0 or (n is not None and values.size != n):
        expected = "non-empty 1-D" if n is None else f"1-D with N = {n} entries"
        raise ValueError(f"{name} must be {expected}, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {values.dtype}")
    if values.min() < 0:
        raise ValueError(f"{name} must be >= 0, got minimum {values.min()}")
    return values.astype(np.int64)


def as_labels(labels, n: int | None = None) -> tuple[np.ndarray, int]:
    """Returns int64 target labels and C_t = max + 1; every class 0..C_t-1 must occur."""
    labels = as_class_ids(labels, n, "labels")
    num_classes = int(labels.max()) + 1
    missing = np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(f"labels must cover 0..{num_classes - 1} (C_t = max + 1); missing classes {missing.tolist()}")
    return labels, num_classes


def as_probs(source_probs, n: int) -> np.ndarray:
    """Returns float64 [N, C_s] source probabilities whose rows sum to 1, or raises."""
    probs = as_array(source_probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] != n or probs.shape[1] == 0:
        raise ValueError(f"source_probs must be [N, C_s] with N = {n}, got shape {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise ValueError("source_probs must be finite and non-negative")
    worst = np.abs(probs.sum(axis=1) - 1.0).max()
    if worst > PROBS_SUM_TOL:
        raise ValueError(f"source_probs rows must sum to 1 (tol {PROBS_SUM_TOL}), worst |sum - 1| = {worst:.3g}")
    return probs
