"""Input checks shared by the pruning methods: convert once, fail before any compute."""

from __future__ import annotations

import numpy as np
import torch


def to_numpy(x) -> np.ndarray:
    """Returns `x` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_float_matrix(x, name: str) -> np.ndarray:
    """Checks a non-empty, finite, floating 2-D array [N, D] and returns it as float64.

    Args:
        x: numpy array or torch tensor.
        name: the argument name, quoted in the error.
    """
    x = to_numpy(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x


def as_labels(x, name: str, length: int, num_classes: int | None = None) -> np.ndarray:
    """Checks a 1-D integer label array of the given length (ids in [0, num_classes) if given).

    Args:
        x: numpy array, torch tensor or sequence of ints.
        name: the argument name, quoted in the error.
        length: the required number of labels.
        num_classes: if given, every label must lie in [0, num_classes).

    Returns:
        int64 [length].
    """
    x = to_numpy(x)
    if x.ndim != 1 or x.shape[0] != length:
        raise ValueError(f"{name} must be 1-D of length {length}, got shape {x.shape}")
    if length and not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {x.dtype}")
    x = x.astype(np.int64, copy=False)
    if length and x.min() < 0:
        raise ValueError(f"{name} must be non-negative class ids, got min {x.min()}")
    if num_classes is not None and length and x.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got max {x.max()}")
    return x
