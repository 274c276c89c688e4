"""Feature-regression distillation: the plain baseline that SEED and CompRess are compared with.

The student's projected embedding regresses the teacher's embedding of the same image with a
squared error (the l2-regression baseline in the ablations of Fang et al., ICLR 2021, and Abbasi
Koohpayegani et al., NeurIPS 2020); no memory bank, no similarity distribution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_regression_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """Batch mean of the squared L2 distance between student and teacher embeddings.

    loss = (1/B) sum_i ||u_i - v_i||^2, summed over the d dimensions (not averaged over them).
    With normalize=True, u and v are the L2-normalised rows, so the loss is
    (1/B) sum_i (2 - 2 cos(s_i, t_i)) and lies in [0, 4]; with normalize=False, u and v are the
    raw rows. The teacher is a constant: it gets no gradient.

    Args:
        student: [B, d] student embeddings, already projected to the teacher's dimension, B >= 1.
        teacher: [B, d] teacher embeddings.
        normalize: L2-normalise both with x / max(||x||, 1e-12) first (default True).

    Returns:
        Scalar loss in the student's dtype.
    """
    if student.ndim != 2 or student.shape[0] == 0 or student.shape[1] == 0:
        raise ValueError(f"student must be [B, d] with B, d >= 1, got shape {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} must equal student shape {tuple(student.shape)}"
        )
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    teacher = teacher.detach().to(student.dtype)
    if normalize:
        student = F.normalize(student, dim=1, eps=1e-12)
        teacher = F.normalize(teacher, dim=1, eps=1e-12)
    # the difference form is exactly 0 for equal rows, where 2 - 2cos may round to ~1e-16
    return (student - teacher).pow(2).sum(dim=1).mean()


class MseObjective(nn.Module):
    """Feature regression for one teacher: no memory between steps (the queue and temperature
    arguments every objective takes are not used)."""

    def __init__(self, dim: int, *, queue_size: int, tau_s: float, tau_t: float, seed: int):
        super().__init__()

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return feature_regression_loss(student, teacher)

    def remember(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Nothing to keep."""
