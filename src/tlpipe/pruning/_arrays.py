"""Input checks shared by the pruning methods: convert once, fail before any compute."""

from __future__ import annotations

from collections.abc import Iterator

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


def feature_chunks(x, name: str) -> Iterator[np.ndarray]:
    """The rows of a feature matrix as float64 chunks [n, D], in order, each checked as `as_float_matrix`
    checks a whole one.

    Args:
        x: an array [N, D] (one chunk), or an iterator of arrays [n, D] that are its rows in order
            (features computed a chunk at a time, never held whole; read once).
        name: the argument name, quoted in errors.
    """
    if not isinstance(x, Iterator):
        yield as_float_matrix(x, name)
        return
    dim = None
    for chunk in x:
        chunk = as_float_matrix(chunk, name)
        if dim is not None and chunk.shape[1] != dim:
            raise ValueError(f"{name} chunks must have the same feature size D, got {dim} and {chunk.shape[1]}")
        dim = chunk.shape[1]
        yield chunk
    if dim is None:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got no rows")


def as_feature_matrix(x, name: str) -> np.ndarray:
    """`as_float_matrix` of an array, or of chunks (`feature_chunks`) joined: for methods that read every
    feature more than once."""
    chunks = list(feature_chunks(x, name))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
