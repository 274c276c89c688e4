"""Sample-level pruning baselines that score every source sample and keep the highest scores.

- EL2N and GraNd: Paul et al., "Deep Learning on a Data Diet: Finding Important Examples Early in
  Training", NeurIPS 2021, Sec. 2 (Eq. 2 for GraNd, Def. 2 for EL2N). The scores are averaged over
  models trained from different seeds (the paper's expectation over initialisations); training
  those models is the caller's job.
- Moderate coreset: Xia et al., "Moderate Coreset: A Universal Method of Data Selection for
  Real-world Data-efficient Deep Learning", ICLR 2023, Sec. 3: keep the samples whose distance to
  their class centre is closest to the median distance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from tlpipe.pruning._arrays import as_feature_matrix, as_labels, to_numpy
from tlpipe.pruning.selection import SampleSelection, check_ratio, num_kept_samples, select_top_samples


def _per_model_arrays(values, name: str, ndim: int) -> list[np.ndarray]:
    """Checks a non-empty sequence of equally shaped, finite float arrays (one per model)."""
    if isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == ndim:
        values = [values]  # a single model
    arrays = [to_numpy(v) for v in values]
    if not arrays:
        raise ValueError(f"{name} must hold at least one array (one per model)")
    for i, a in enumerate(arrays):
        if a.ndim != ndim or a.size == 0 or a.shape != arrays[0].shape:
            raise ValueError(f"{name}[{i}] must be a non-empty {ndim}-D array shaped like {name}[0] "
                             f"{arrays[0].shape}, got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise ValueError(f"{name}[{i}] must be finite floating point, got dtype {a.dtype}")
    return [a.astype(np.float64) for a in arrays]


def _el2n_norms(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0  # softmax - onehot(y)
    return np.sqrt((p * p).sum(axis=1))


def _el2n(logits: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    return np.mean([_el2n_norms(z, labels) for z in logits], axis=0)


def el2n_norms(logits, labels) -> np.ndarray:
    """One model's EL2N error norms ||softmax(logits) - onehot(y)||_2, float64 [N]: what `el2n_scores`
    averages over models. Computed a batch at a time, they stand in for logits that are too many to keep
    (N x C): `select_samples_el2n_norms` averages and ranks them."""
    (z,) = _per_model_arrays([logits], "logits", ndim=2)
    return _el2n_norms(z, as_labels(labels, "labels", z.shape[0], z.shape[1]))


def el2n_scores(logits_per_model: Sequence, labels) -> np.ndarray:
    """EL2N score: E_models ||softmax(logits) - onehot(y)||_2 (Paul et al. 2021, Def. 2).

    Args:
        logits_per_model: one [N, C] logits array per model (numpy or torch), same sample order.
        labels: [N] integer labels in [0, C).

    Returns:
        float64 [N]; high means hard to fit, which the paper keeps.
    """
    logits = _per_model_arrays(logits_per_model, "logits_per_model", ndim=2)
    num_samples, num_classes = logits[0].shape
    labels = as_labels(labels, "labels", num_samples, num_classes)
    return _el2n(logits, labels)


def select_samples_el2n(logits_per_model: Sequence, labels, *, ratio: float) -> SampleSelection:
    """Keeps the samples with the highest EL2N score (method "el2n").

    Args:
        logits_per_model: one [N, C] logits array per model.
        labels: [N] integer labels in [0, C).
        ratio: fraction of samples to drop, in [0, 1).

    Returns:
        A `SampleSelection` with method "el2n".
    """
    logits = _per_model_arrays(logits_per_model, "logits_per_model", ndim=2)
    num_samples, num_classes = logits[0].shape
    labels = as_labels(labels, "labels", num_samples, num_classes)
    num_kept_samples(num_samples, ratio)
    return select_top_samples(_el2n(logits, labels), ratio=ratio, method="el2n")


def select_samples_el2n_norms(el2n_norms_per_model: Sequence, *, ratio: float) -> SampleSelection:
    """`select_samples_el2n` from the models' error norms (`el2n_norms`, one [N] array per model) rather
    than their logits: the same selection.
    """
    check_ratio(ratio)
    scores = np.mean(_per_model_arrays(el2n_norms_per_model, "el2n_norms_per_model", ndim=1), axis=0)
    return select_top_samples(scores, ratio=ratio, method="el2n")


def _as_images_and_labels(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks float inputs [N, ...] and N integer labels; returns both as CPU tensors."""
    images = torch.as_tensor(images)
    if images.ndim < 2 or images.shape[0] == 0 or not images.is_floating_point():
        raise ValueError(f"images must be a non-empty float array [N, ...], got shape "
                         f"{tuple(images.shape)} and dtype {images.dtype}")
    return images, torch.from_numpy(as_labels(labels, "labels", images.shape[0]))


def per_sample_grad_norms(model: nn.Module, images, labels, *, batch_size: int = 64) -> np.ndarray:
    """||grad_theta CE(model(x_i), y_i)||_2 over ALL parameters, one per sample (GraNd, Eq. 2).

    Uses `torch.func` (`vmap` over `grad` of a `functional_call`). The model is evaluated in eval
    mode so BatchNorm uses its running statistics and every sample's gradient is its own; the
    training flag is restored afterwards. Memory is O(batch_size * num_parameters).

    Args:
        model: a classifier returning logits [B, C]; it runs on its parameters' device and dtype.
        images: [N, ...] float inputs (numpy or torch).
        labels: [N] integer labels.
        batch_size: samples per vmap call (>= 1).

    Returns:
        float64 [N] gradient norms.
    """
    images, labels = _as_images_and_labels(images, labels)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    params = {name: p.detach() for name, p in model.named_parameters()}
    if not params:
        raise ValueError("model has no parameters to take gradients of")
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    reference = next(iter(params.values()))

    def loss(p, b, x, y):
        logits = functional_call(model, (p, b), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample_grads = vmap(grad(loss), in_dims=(None, None, 0, 0))
    norms = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, images.shape[0], int(batch_size)):
            x = images[start : start + batch_size].to(reference.device, reference.dtype)
            y = labels[start : start + batch_size].to(reference.device)
            grads = per_sample_grads(params, buffers, x, y)
            sq = sum(g.flatten(start_dim=1).pow(2).sum(dim=1) for g in grads.values())
            norms.append(sq.sqrt().detach().cpu().double())
    finally:
        model.train(was_training)
    return torch.cat(norms).numpy()


def grand_scores(grad_norms_per_model: Sequence) -> np.ndarray:
    """GraNd score: the per-sample gradient norm averaged over models (Paul et al. 2021, Eq. 2).

    Args:
        grad_norms_per_model: one [N] array of `per_sample_grad_norms` per model.

    Returns:
        float64 [N].
    """
    return np.mean(_per_model_arrays(grad_norms_per_model, "grad_norms_per_model", ndim=1), axis=0)


def select_samples_grand(grad_norms_per_model: Sequence, *, ratio: float) -> SampleSelection:
    """Keeps the samples with the highest GraNd score (method "grand").

    Args:
        grad_norms_per_model: one [N] gradient-norm array per model.
        ratio: fraction of samples to drop, in [0, 1).

    Returns:
        A `SampleSelection` with method "grand".
    """
    check_ratio(ratio)
    return select_top_samples(grand_scores(grad_norms_per_model), ratio=ratio, method="grand")


def _class_distances(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """L2 distance of every sample to its class centre, the per-dimension median of the class."""
    distances = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = labels == c
        centre = np.median(features[members], axis=0)
        distances[members] = np.linalg.norm(features[members] - centre, axis=1)
    return distances


def moderate_scores(features, labels) -> np.ndarray:
    """Moderate-coreset score: -|d_i - median_c(d)|, d_i = ||f_i - median_c(f)||_2 (Xia et al. 2023).

    Args:
        features: [N, D] float features of the source samples (or an iterator of [n, D] chunks of them).
        labels: [N] integer class ids.

    Returns:
        float64 [N]; 0 for a sample at exactly its class's median distance, lower the farther.
    """
    features = as_feature_matrix(features, "features")
    labels = as_labels(labels, "labels", len(features))
    distances = _class_distances(features, labels)
    scores = np.empty_like(distances)
    for c in np.unique(labels):
        members = labels == c
        scores[members] = -np.abs(distances[members] - np.median(distances[members]))
    return scores


def select_samples_moderate(features, labels, *, ratio: float) -> SampleSelection:
    """Keeps, per class, the round(n_c * (1 - ratio)) (>= 1) samples of highest moderate score.

    Args:
        features: [N, D] float features of the source samples (or an iterator of [n, D] chunks of them).
        labels: [N] integer class ids.
        ratio: fraction of every class to drop, in [0, 1).

    Returns:
        A `SampleSelection` with method "moderate"; ties go by index (asc).
    """
    features = as_feature_matrix(features, "features")
    labels = as_labels(labels, "labels", len(features))
    check_ratio(ratio)
    scores = moderate_scores(features, labels)
    kept = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.lexsort((members, -scores[members]))
        kept.append(members[order[: num_kept_samples(members.size, ratio)]])
    kept = np.sort(np.concatenate(kept)).astype(np.int64)
    return SampleSelection(kept=kept, scores=scores, ratio=float(ratio), method="moderate")
