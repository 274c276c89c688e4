"""Self-supervised distillation of one or several teacher backbones into a smaller student.

Three objectives (`METHODS`), each between the student's projected embedding and a teacher's:
- `seed`: Fang et al., "SEED: Self-supervised Distillation for Visual Representation", ICLR 2021.
  The student reproduces the teacher's similarity distribution over a queue of past teacher
  embeddings (soft-target cross-entropy).
- `compress`: Abbasi Koohpayegani et al., "CompRess: Self-Supervised Learning by Compressing
  Representations", NeurIPS 2020. KL between the teacher's similarities over a teacher memory bank
  and the student's over a student memory bank that holds the same images.
- `mse`: plain feature regression, the baseline.

Several teachers (Borup et al., "Distilling from Similar Tasks for Transfer Learning on a Budget",
ICCV 2023): the student gets one projection head per teacher and the loss is the weighted sum of the
per-teacher losses; weights come from the caller (`tlpipe.distillation.teachers`). No labels.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from tlpipe.data.augment import augment_batch
# the objectives registry.DISTILLATION names, imported here so their code enters the distill stage's key
import tlpipe.distillation.compress  # noqa: F401
import tlpipe.distillation.mse  # noqa: F401
import tlpipe.distillation.seed  # noqa: F401
from tlpipe.registry import DATASET_DISTILLATION, DISTILLATION, load
from tlpipe.training import distributed
from tlpipe.training.checkpoints import Checkpoint, LoopState
from tlpipe.training.loops import LossLog, MetricsCallback
from tlpipe.training.models import ProjectionHead, embed, feature_dim
from tlpipe.training.optim import make_optimizer, param_groups, steps_per_epoch
from tlpipe.training.runtime import autocast, iter_batches, prepare_module, seed_everything

METHODS = tuple(m for m in DISTILLATION if m not in DATASET_DISTILLATION)  # krr_st: tlpipe.distillation.krr_st


class MultiHeadStudent(nn.Module):
    """A backbone with one projection head per teacher: pixels [B, C, H, W] -> [[B, D_k] per teacher].

    Only `backbone` is kept after distillation (as in SEED and CompRess).
    """

    def __init__(self, backbone: nn.Module, teacher_dims: Sequence[int]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(ProjectionHead(feature_dim(backbone), dim) for dim in teacher_dims)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = embed(self.backbone, x)
        return [head(features) for head in self.heads]


def _check_inputs(method: str, teachers: Sequence[nn.Module], weights, teacher_embeddings, images: np.ndarray,
                  augment: bool) -> np.ndarray:
    """The per-teacher weights as float64 [T]; ValueError on any bad argument, before compute."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid options: {', '.join(METHODS)}")
    if not teachers:
        raise ValueError("teachers: give at least one teacher backbone")
    weights = np.full(len(teachers), 1.0 / len(teachers)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(teachers),) or not np.all(np.isfinite(weights)) or np.any(weights < 0) \
            or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"weights={weights.tolist()} must be {len(teachers)} non-negative numbers summing to 1")
    if teacher_embeddings is not None:
        if augment:
            raise ValueError("teacher_embeddings are of the un-augmented images; pass augment=False with them")
        for k, (table, teacher) in enumerate(zip(teacher_embeddings, teachers, strict=True)):
            if tuple(table.shape) != (len(images), feature_dim(teacher)):
                raise ValueError(f"teacher_embeddings[{k}] has shape {tuple(table.shape)}; "
                                 f"expected ({len(images)}, {feature_dim(teacher)})")
    return weights


def teacher_embeddings_of(teacher: nn.Module, images: np.ndarray, *, batch_size: int,
                          device: torch.device) -> np.ndarray:
    """The teacher's pooled embeddings of `images` (float32 [N, D]), once, for un-augmented distillation."""
    teacher = prepare_module(teacher, device).eval()
    rows = []
    with torch.no_grad():
        for x, _ in iter_batches(images, batch_size=batch_size, device=device):
            with autocast(device):
                rows.append(embed(teacher, x).float().cpu())
    return torch.cat(rows).numpy()


def distill(
    student_backbone: nn.Module,
    teachers: nn.Module | Sequence[nn.Module],
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    queue_size: int,
    tau_s: float,
    tau_t: float,
    seed: int,
    device: torch.device,
    method: str = "seed",
    weights: Sequence[float] | None = None,
    teacher_embeddings: Sequence[np.ndarray] | None = None,
    augment: bool = True,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[nn.Module, dict]:
    """Distils the teacher(s) into a trained copy of `student_backbone` on unlabeled images.

    Each step: one augmented view of the batch goes to the student and every teacher (SEED and
    CompRess feed both the same view); each teacher's loss is computed against its current queues,
    the weighted sum is minimised, then the batch is enqueued. Teachers are frozen (eval mode, no
    grad); with `teacher_embeddings` (un-augmented training) they do not run at all.

    Args:
        student_backbone: the small backbone; copied, the copy is trained.
        teachers: one pretrained backbone or a list of them.
        images: uint8 [N, C, H, W], unlabeled (e.g. target unlabeled + pruned source).
        epochs: passes over the images.
        batch_size: images per step.
        lr: peak AdamW learning rate (warmup then cosine decay).
        weight_decay: AdamW decay on weight matrices/kernels.
        queue_size: K, embeddings kept per memory bank (seed, compress).
        tau_s: student temperature (seed, compress).
        tau_t: teacher temperature (seed, compress).
        seed: weight init of the heads, data order, augmentation draws, queue init.
        device: where to train.
        method: one of `METHODS`.
        weights: one weight per teacher, non-negative, summing to 1; default uniform.
        teacher_embeddings: per teacher, float [N, D_k] embeddings of `images` (from
            `teacher_embeddings_of`); requires augment=False.
        augment: apply `augment_batch` to every batch (the same view for all networks).
        on_metrics: called as on_metrics(epoch, {"loss", "lr", "elapsed_s"}) after each epoch.
        checkpoint: saves the loop's state (the student, its heads, the queues) there and resumes from
            what it holds, to the weights of an uninterrupted run.

    Returns:
        (student backbone, metrics). metrics: wall_time_s, images_seen, images_per_s, loss (the
        last epoch's mean weighted loss), loss_history (per-epoch means), teacher_forward (whether
        the teachers ran in the loop).
    """
    teachers = [teachers] if isinstance(teachers, nn.Module) else list(teachers)
    weights = _check_inputs(method, teachers, weights, teacher_embeddings, images, augment)
    generator = seed_everything(seed)
    dims = [feature_dim(t) for t in teachers]
    live = teacher_embeddings is None
    teachers = [prepare_module(t, device).eval() for t in teachers] if live else []
    tables = None if live else [torch.as_tensor(np.asarray(t, dtype=np.float32)) for t in teacher_embeddings]
    student = prepare_module(MultiHeadStudent(copy.deepcopy(student_backbone), dims), device)
    objective = load(DISTILLATION[method].objective)  # one teacher's loss and memory (queues are buffers)
    objectives = [objective(dim, queue_size=queue_size, tau_s=tau_s, tau_t=tau_t, seed=seed + k).to(device)
                  for k, dim in enumerate(dims)]

    ranks, forward = distributed.join(student, device, batch_size)
    # draws happen where the batch is; each rank draws its own
    augment_generator = torch.Generator(device=device).manual_seed(distributed.rank_seed(seed + 1, ranks))
    steps = epochs * steps_per_epoch(len(images), batch_size)
    optimizer, schedule = make_optimizer(param_groups(student, lr, weight_decay), steps)
    log = LossLog(device, on_metrics)
    state = LoopState(checkpoint, modules={"student": student, **{f"objective{k}": o for k, o in enumerate(objectives)}},
                      optimizer=optimizer, schedule=schedule, data_generator=generator,
                      generators={"augment": augment_generator}, values=log.totals, ranks=ranks)  # queues: buffers
    first_epoch, skip = state.resume(on_metrics)
    positions = np.arange(len(images))
    for epoch in range(first_epoch, epochs + 1):
        state.begin_epoch(epoch)
        student.train()
        batches = iter_batches(images, positions, batch_size=batch_size, device=device, generator=generator,
                               drop_last=True, skip=skip, shard=(ranks.rank, ranks.world))
        for batch, (x, index) in enumerate(batches, start=skip + 1):
            if augment:
                x = augment_batch(x, generator=augment_generator)
            if live:
                with torch.no_grad(), autocast(device):
                    targets = [embed(teacher, x).float() for teacher in teachers]  # [B, D_k] each
            else:
                targets = [table[index.cpu()].to(device, non_blocking=True) for table in tables]
            with autocast(device):
                outputs = [out.float() for out in forward(x)]  # [B, D_k] each
            parts = [objective.loss(out, target) for objective, out, target in zip(objectives, outputs, targets)]
            loss = parts[0] if len(parts) == 1 else sum(float(w) * part for w, part in zip(weights, parts))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for objective, out, target in zip(objectives, outputs, targets):
                # several ranks: every rank's queues take the whole global batch, in order, as in one process
                objective.remember(distributed.gather(out.detach()), distributed.gather(target))
            log.add(loss, len(x))
            state.step_done(batch)
        skip = 0
        distributed.share_buffers(student)  # the queues are the same on every rank already
        state.end_epoch(log.end_epoch(epoch, schedule.get_last_lr()[0]))
    return student.backbone.eval(), {**log.metrics(), "teacher_forward": live, **state.resumed()}
