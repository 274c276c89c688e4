"""BYOL's regression loss, its exponential-moving-average target update and momentum schedule.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS
2020, Sec. 3.1: the online network's prediction of one view regresses the target network's
projection of the other view (Eq. 2); the target's weights are an EMA of the online weights
with a momentum that rises from `base` to 1 on a cosine schedule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Normalised mean squared error 2 - 2 cos(p, z) (Grill et al. 2020, Eq. 2), batch mean.

    ||p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z). One direction only: the caller symmetrises,
    loss = byol_loss(p1, z2) + byol_loss(p2, z1). z is the target's output and gets no gradient
    (the stop-gradient of Eq. 2).

    Args:
        p: [B, d] online predictions (B >= 1), normalised here with x / max(||x||, 1e-12).
        z: [B, d] target projections, detached and normalised likewise.

    Returns:
        Scalar loss in p's dtype, in [0, 4].
    """
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"p must be [B, d] with B >= 1, got shape {tuple(p.shape)}")
    if z.shape != p.shape:
        raise ValueError(f"z shape {tuple(z.shape)} must equal p shape {tuple(p.shape)}")
    p = F.normalize(p, dim=1, eps=1e-12)
    z = F.normalize(z.detach().to(p.dtype), dim=1, eps=1e-12)
    return (2.0 - 2.0 * (p * z).sum(dim=1)).mean()


def byol_momentum(step: int, total_steps: int, base: float) -> float:
    """Target EMA momentum tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2 (Grill et al. 2020, Sec. 3.2).

    Args:
        step: k, the training step, 0 <= k <= total_steps.
        total_steps: K >= 1.
        base: tau at k = 0, in [0, 1] (BYOL uses 0.996); tau reaches 1 at k = K.

    Returns:
        tau in [base, 1].
    """
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} must be >= 1")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step={step!r} is outside the valid range [0, total_steps={total_steps}]")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base={base!r} is outside the valid range [0, 1]")
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: target params <- momentum * target + (1 - momentum) * online; buffers copied.

    The BYOL target update xi <- tau xi + (1 - tau) theta (Grill et al. 2020, Sec. 3.1).
    Buffers (BatchNorm running statistics) are not averaged but copied from the online network.

    Args:
        target: the EMA network, same structure as `online`.
        online: the trained network; not modified.
        momentum: tau in [0, 1]; 1 leaves the target unchanged, 0 copies the online weights.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum!r} is outside the valid range [0, 1]")
    pairs = {"parameters": (dict(target.named_parameters()), dict(online.named_parameters())),
             "buffers": (dict(target.named_buffers()), dict(online.named_buffers()))}
    for kind, (mine, theirs) in pairs.items():
        if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ValueError(f"target and online {kind} differ in names or shapes")
    target_params, online_params = pairs["parameters"]
    for name, param in target_params.items():
        param.lerp_(online_params[name], 1.0 - momentum)  # exact at both ends: weight 0 and 1
    target_buffers, online_buffers = pairs["buffers"]
    for name, buffer in target_buffers.items():
        buffer.copy_(online_buffers[name])
