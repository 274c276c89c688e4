"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
Eq. 1: for 2N projected views, each anchor's positive is the other view of its image and the
2(N - 1) views of the other images are its negatives; the loss is the mean over all 2N anchors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tlpipe.checks import check_temperature


def _check_inputs(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> None:
    """Raises ValueError on bad shapes or a non-positive temperature, before any compute."""
    if z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"z1 must be [N, d] with N >= 2 (one negative at least), got shape {tuple(z1.shape)}")
    if z2.shape != z1.shape:
        raise ValueError(f"z2 shape {tuple(z2.shape)} must equal z1 shape {tuple(z1.shape)}")
    check_temperature("temperature", temperature)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss over two views of a batch.

    With u = z / max(||z||, 1e-12) for the 2N rows of [z1; z2] and s_ij = u_i . u_j (Chen et al.
    2020, Eq. 1): l(i, j) = -log( exp(s_ij / t) / sum_{k != i} exp(s_ik / t) ), and
    loss = (1 / 2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)], i.e. a cross-entropy over each anchor's
    2N - 1 other views whose target is its positive.

    Args:
        z1: [N, d] projections of the first views (N >= 2).
        z2: [N, d] projections of the second views; row i is the positive of z1's row i.
        temperature: t (> 0); SimCLR uses 0.1-0.5 (0.5 for CIFAR-10).

    Returns:
        Scalar loss in the inputs' dtype; log(2N - 1) at chance, 0 at best.
    """
    _check_inputs(z1, z2, temperature)
    n = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2]), dim=1, eps=1e-12)  # [2N, d]
    logits = (u @ u.T) / temperature  # [2N, 2N]
    # an anchor is not its own negative: -inf drops it from the softmax denominator
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_pairs, -math.inf)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)  # i <-> i + N
    return F.cross_entropy(logits, positives)
