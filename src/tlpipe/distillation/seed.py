"""SEED distillation loss.

Fang et al., "SEED: Self-supervised Distillation for Visual Representation", ICLR 2021, Eq. 2-4:
the student is trained to reproduce the teacher's similarity distribution over the teacher's own
embedding plus a queue of past teacher embeddings, with a soft-target cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.checks import check_temperature
from tlpipe.distillation.queue import EmbeddingQueue


def _check_inputs(
    student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, tau_s: float, tau_t: float
) -> None:
    """Raises ValueError on mismatched shapes or non-positive temperatures, before any compute."""
    if student.ndim != 2 or student.shape[0] == 0:
        raise ValueError(f"student must be [B, d] with B >= 1, got shape {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher shape {tuple(teacher.shape)} must equal student shape {tuple(student.shape)}"
        )
    if queue.ndim != 2 or queue.shape[0] == 0 or queue.shape[1] != student.shape[1]:
        raise ValueError(
            f"queue must be [K, d] with K >= 1 and d = {student.shape[1]}, got shape {tuple(queue.shape)}"
        )
    check_temperature("tau_s", tau_s)
    check_temperature("tau_t", tau_t)


def seed_loss(
    student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor, *, tau_s: float, tau_t: float
) -> torch.Tensor:
    """SEED soft-target cross-entropy between student and teacher similarity distributions.

    Column 0 of both logit matrices is the sample's own pair (s_i.t_i for the student, t_i.t_i
    for the teacher); columns 1..K are similarities with the queue (Fang et al. 2021, Eq. 2-3).
    loss = -(1/B) sum_i sum_j p_ij log softmax(z_i / tau_s)_j with p_i = softmax(z^T_i / tau_t)
    (Eq. 4). The teacher and queue are constants: no gradient flows into them, and the queue is
    copied, so the caller may enqueue the current batch before calling backward().

    Args:
        student: [B, d] raw student embeddings (normalised here with x / max(||x||, 1e-12)).
        teacher: [B, d] raw teacher embeddings (normalised likewise).
        queue: [K, d] past teacher embeddings, used as given (normally already unit norm).
        tau_s: student temperature (> 0); the reference default is 0.2.
        tau_t: teacher temperature (> 0); the reference default is 1e-4 (teacher ~ one-hot).

    Returns:
        Scalar loss in the student's dtype.
    """
    _check_inputs(student, teacher, queue, tau_s, tau_t)
    s = F.normalize(student, dim=1, eps=1e-12)
    t = F.normalize(teacher.detach().to(student.dtype), dim=1, eps=1e-12)
    # a copy, so enqueueing into the live buffer before backward() cannot invalidate the graph
    q = queue.detach().to(device=student.device, dtype=student.dtype, copy=True)
    # [B, 1 + K]: own pair first, then the queue
    student_logits = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ q.T], dim=1) / tau_s
    teacher_logits = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ q.T], dim=1) / tau_t
    targets = torch.softmax(teacher_logits, dim=1)
    return -(targets * torch.log_softmax(student_logits, dim=1)).sum(dim=1).mean()


class SeedObjective(nn.Module):
    """SEED for one teacher: the loss and the queue of past teacher embeddings it keeps (a buffer, so
    it is saved and resumed with the loop's modules)."""

    def __init__(self, dim: int, *, queue_size: int, tau_s: float, tau_t: float, seed: int):
        super().__init__()
        self.tau_s, self.tau_t = tau_s, tau_t
        self.teacher_queue = EmbeddingQueue(queue_size, dim, seed=seed)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return seed_loss(student, teacher, self.teacher_queue.tensor, tau_s=self.tau_s, tau_t=self.tau_t)

    @torch.no_grad()
    def remember(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Enqueues the batch after its loss was formed: a batch is never its own negative."""
        self.teacher_queue.enqueue(F.normalize(teacher, dim=1))
