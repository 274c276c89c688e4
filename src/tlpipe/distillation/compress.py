"""CompRess distillation loss and its memory-bank initialisation.

Abbasi Koohpayegani et al., "CompRess: Self-Supervised Learning by Compressing Representations",
NeurIPS 2020, Sec. 3: the student is trained to reproduce the teacher's similarity distribution
over a memory bank of anchor points, by minimising KL(P_teacher || P_student). Two variants:
two banks (CompRess-2q: the student's similarities use its own bank, so the two embedding
dimensions may differ) and one bank (CompRess-1q: both use the teacher's bank, d_s = d_t).
Reference: UMBCvision/CompRess, nn/compress_loss.py (classes CompReSS and CompReSSA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.checks import check_temperature
from tlpipe.distillation.queue import EmbeddingQueue


def _check_inputs(
    student: torch.Tensor,
    teacher: torch.Tensor,
    teacher_queue: torch.Tensor,
    student_queue: torch.Tensor | None,
    temperatures: dict[str, float],
) -> None:
    """Raises ValueError on mismatched shapes or a bad temperature, before any compute."""
    if student.ndim != 2 or student.shape[0] == 0 or student.shape[1] == 0:
        raise ValueError(f"student must be [B, d_s] with B, d_s >= 1, got shape {tuple(student.shape)}")
    batch, d_s = student.shape
    if teacher.ndim != 2 or teacher.shape[0] != batch or teacher.shape[1] == 0:
        raise ValueError(f"teacher must be [B={batch}, d_t] with d_t >= 1, got shape {tuple(teacher.shape)}")
    d_t = teacher.shape[1]
    if teacher_queue.ndim != 2 or teacher_queue.shape[0] == 0 or teacher_queue.shape[1] != d_t:
        raise ValueError(
            f"teacher_queue must be [K, d_t={d_t}] with K >= 1, got shape {tuple(teacher_queue.shape)}"
        )
    if student_queue is None:
        if d_s != d_t:
            raise ValueError(
                f"student_queue=None (one-queue CompRess) scores the student against teacher_queue, "
                f"so it needs d_s = d_t; got student dim {d_s} and teacher dim {d_t} (pass student_queue)"
            )
    elif student_queue.ndim != 2 or student_queue.shape != (teacher_queue.shape[0], d_s):
        raise ValueError(
            f"student_queue must be [K={teacher_queue.shape[0]}, d_s={d_s}] (same K as teacher_queue), "
            f"got shape {tuple(student_queue.shape)}"
        )
    for name, value in temperatures.items():
        check_temperature(name, value)


def compress_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    teacher_queue: torch.Tensor,
    *,
    temperature: float | None = None,
    student_queue: torch.Tensor | None = None,
    tau_s: float | None = None,
    tau_t: float | None = None,
) -> torch.Tensor:
    """CompRess KL divergence between teacher and student similarity distributions over a bank.

    a_T = t Q_T^T / T_t and a_S = s Q_S^T / T_s (T_t = T_s = T in the paper) (two-queue; one-queue uses Q_T for the student too),
    both [B, K]; loss = (1/B) sum_i KL(softmax(a_T,i) || softmax(a_S,i))
    = (1/B) sum_i sum_k p_T,ik (log p_T,ik - log p_S,ik) (Abbasi Koohpayegani et al. 2020, Eq. 1-3).
    Unlike SEED there is no own-pair column: only the bank is compared. The teacher and the
    banks are constants: no gradient flows into them, and the banks are copied, so the caller may
    enqueue the current batch before calling backward(). Works for B = 1 (the reference squeezes
    the [B, K] logits and cannot).

    Args:
        student: [B, d_s] raw student embeddings (normalised here with x / max(||x||, 1e-12);
            the reference uses x / ||x||, identical for nonzero rows).
        teacher: [B, d_t] raw teacher embeddings (normalised likewise).
        teacher_queue: [K, d_t] teacher memory bank, used as given (see `build_compress_memory_bank`).
        temperature: T > 0, shared by both sides; the reference default is 0.04.
        student_queue: [K, d_s] student memory bank for CompRess-2q, used as given; None selects
            CompRess-1q, which scores the student against `teacher_queue` and needs d_s = d_t.
        tau_s: the student side's temperature, when it should differ from `temperature`.
        tau_t: the teacher side's temperature, likewise (the paper uses one T for both).

    Returns:
        Scalar loss (>= 0) in the student's dtype.
    """
    sides = {side: (side, value) if value is not None else (f"temperature (or {side})", temperature)
             for side, value in (("tau_s", tau_s), ("tau_t", tau_t))}
    _check_inputs(student, teacher, teacher_queue, student_queue, dict(sides.values()))
    tau_s, tau_t = sides["tau_s"][1], sides["tau_t"][1]
    s = F.normalize(student, dim=1, eps=1e-12)
    t = F.normalize(teacher.detach().to(s.dtype), dim=1, eps=1e-12)

    def constant(bank: torch.Tensor) -> torch.Tensor:
        # a copy, so enqueueing into the live buffer before backward() cannot invalidate the graph
        return bank.detach().to(device=s.device, dtype=s.dtype, copy=True)

    q_t = constant(teacher_queue)
    q_s = q_t if student_queue is None else constant(student_queue)
    log_p_t = torch.log_softmax(t @ q_t.T / tau_t, dim=1)  # [B, K]
    log_p_s = torch.log_softmax(s @ q_s.T / tau_s, dim=1)  # [B, K]
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def build_compress_memory_bank(
    size: int, dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> EmbeddingQueue:
    """An EmbeddingQueue whose initial rows follow CompRess: i.i.d. uniform in [-a, a), a = 1/sqrt(d/3).

    As in the reference's `SampleSimilarities` (torch.rand * 2a - a); a is chosen so that
    E||row||^2 = 1, but the initial rows are not unit norm. Everything else is the ordinary
    EmbeddingQueue: enqueued rows are L2-normalised, so the bank becomes unit-norm as it fills.

    Args:
        size: K, the number of slots (>= 1).
        dim: d, the embedding dimension (>= 1).
        seed: seed of the torch.Generator that draws the initial rows.
        dtype: floating dtype of the stored embeddings.

    Returns:
        The queue, pointer at slot 0.
    """
    bank = EmbeddingQueue(size, dim, seed=seed, dtype=dtype)  # validates size, dim and dtype
    k, d = bank.tensor.shape
    bound = 1.0 / math.sqrt(d / 3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bank.tensor.copy_(torch.rand(k, d, generator=generator, dtype=dtype).mul_(2 * bound).add_(-bound))
    return bank


class CompressObjective(nn.Module):
    """CompRess-2q for one teacher: the loss and its two memory banks, which hold the same images slot
    for slot (uniform start as in the reference; buffers, saved and resumed with the loop)."""

    def __init__(self, dim: int, *, queue_size: int, tau_s: float, tau_t: float, seed: int):
        super().__init__()
        self.tau_s, self.tau_t = tau_s, tau_t
        self.teacher_queue = build_compress_memory_bank(queue_size, dim, seed=seed)
        self.student_queue = build_compress_memory_bank(queue_size, dim, seed=seed + 7919)

    def loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return compress_loss(student, teacher, self.teacher_queue.tensor, student_queue=self.student_queue.tensor,
                             tau_s=self.tau_s, tau_t=self.tau_t)

    @torch.no_grad()
    def remember(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        """Enqueues the batch after its loss was formed: a batch is never its own negative."""
        self.teacher_queue.enqueue(F.normalize(teacher, dim=1))
        self.student_queue.enqueue(F.normalize(student.detach(), dim=1))
