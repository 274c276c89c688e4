"""Self-supervised distillation of a teacher backbone into a smaller student with the SEED loss.

Fang et al., "SEED: Self-supervised Distillation for Visual Representation", ICLR 2021. No
labels: the student (plus a projection head to the teacher's width) learns to reproduce the
teacher's similarity distribution over a queue of past teacher embeddings.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.augment import augment_batch
from tlpipe.losses.queue import EmbeddingQueue
from tlpipe.losses.seed import seed_loss
from tlpipe.models import ProjectedBackbone, embed, feature_dim
from tlpipe.runtime import autocast, iter_batches, prepare_module, seed_everything
from tlpipe.training import LossLog, MetricsCallback, make_optimizer, param_groups, steps_per_epoch


def _augment_generator(seed: int, device: torch.device) -> torch.Generator:
    # Augmentation draws happen where the batch lives, so the generator must live there too.
    return torch.Generator(device=device).manual_seed(seed + 1)


def distill(
    student_backbone: nn.Module,
    teacher_backbone: nn.Module,
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
    augment: bool = True,
    on_metrics: MetricsCallback | None = None,
) -> tuple[nn.Module, dict]:
    """Distils `teacher_backbone` into a trained copy of `student_backbone` on unlabeled images.

    Each step: one augmented view of the batch goes to both networks (SEED feeds the same view),
    the loss is computed against the current queue, then the batch's normalised teacher
    embeddings are enqueued. The teacher is frozen (eval mode, no grad); neither input model
    is modified except that the teacher is moved to `device` and put in eval mode.

    Args:
        student_backbone: the small backbone; copied, the copy is trained.
        teacher_backbone: the pretrained backbone.
        images: uint8 [N, C, H, W], unlabeled (e.g. target unlabeled + pruned source).
        epochs: passes over the images.
        batch_size: images per step.
        lr: peak AdamW learning rate (warmup then cosine decay).
        weight_decay: AdamW decay on weight matrices/kernels.
        queue_size: K, teacher embeddings kept as the similarity bank.
        tau_s: student temperature.
        tau_t: teacher temperature.
        seed: weight init of the projection head, data order, augmentation draws, queue init.
        device: where to train.
        augment: apply `augment_batch` to every batch (the same view for both networks).
        on_metrics: called as on_metrics(epoch, {"loss", "lr", "elapsed_s"}) after each epoch.

    Returns:
        (student backbone, metrics). The projection head is discarded (as in SEED, only the
        backbone is transferred). metrics: wall_time_s, images_seen, images_per_s, loss (the
        last epoch's mean) and loss_history (per-epoch means).
    """
    generator = seed_everything(seed)
    teacher = prepare_module(teacher_backbone, device).eval()
    student = prepare_module(ProjectedBackbone(copy.deepcopy(student_backbone), feature_dim(teacher)), device)
    queue = EmbeddingQueue(queue_size, feature_dim(teacher), seed=seed).to(device)
    augment_generator = _augment_generator(seed, device)
    steps = epochs * steps_per_epoch(len(images), batch_size)
    optimizer, schedule = make_optimizer(param_groups(student, lr, weight_decay), steps)
    log = LossLog(device, on_metrics)
    for epoch in range(1, epochs + 1):
        student.train()
        for x, _ in iter_batches(images, batch_size=batch_size, device=device, generator=generator, drop_last=True):
            if augment:
                x = augment_batch(x, generator=augment_generator)
            with torch.no_grad(), autocast(device):
                teacher_emb = embed(teacher, x).float()  # [B, D_t]
            with autocast(device):
                student_emb = student(x).float()  # [B, D_t]
            loss = seed_loss(student_emb, teacher_emb, queue.tensor, tau_s=tau_s, tau_t=tau_t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            queue.enqueue(F.normalize(teacher_emb, dim=1))  # after the loss: the batch is not its own negative
            log.add(loss, len(x))
        log.end_epoch(epoch, schedule.get_last_lr()[0])
    return student.backbone.eval(), log.metrics()
