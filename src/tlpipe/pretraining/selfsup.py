"""Self-supervised pretraining of a backbone on unlabeled images: SimCLR and BYOL.

SimCLR (Chen et al., ICML 2020) pulls together the projections of two views of an image and
pushes apart those of other images (NT-Xent). BYOL (Grill et al., NeurIPS 2020) needs no
negatives: an online network with a predictor regresses the projection that a slowly moving
(EMA) target network gives of the other view. Both share one loop here: two `make_view` views
per batch, a method-specific loss, AdamW with warmup-cosine; only the backbone is returned.
"""

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tlpipe.data.augment import ViewConfig, make_view
from tlpipe.pretraining.byol import byol_loss, byol_momentum, ema_update
from tlpipe.pretraining.ntxent import nt_xent_loss
from tlpipe.training import distributed
from tlpipe.training.checkpoints import Checkpoint, LoopState
from tlpipe.training.loops import LossLog, MetricsCallback
from tlpipe.training.models import ProjectedBackbone, ProjectionHead
from tlpipe.training.optim import make_optimizer, param_groups, steps_per_epoch
from tlpipe.training.runtime import autocast, iter_batches, prepare_module, seed_everything

TwoViewLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (forward, view 1, view 2)


def _check_args(images: np.ndarray, epochs: int, batch_size: int, weight_decay: float, projection_dim: int,
                **positive: float) -> None:
    """Raises ValueError for the arguments both methods share, and for `positive` ones <= 0."""
    if np.ndim(images) != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got shape {np.shape(images)}")
    if epochs < 1:
        raise ValueError(f"epochs={epochs!r} must be >= 1")
    if not 2 <= batch_size <= len(images):
        raise ValueError(f"batch_size={batch_size!r} is outside the valid range [2, {len(images)}] "
                         f"(2 for a negative and BatchNorm, at most the {len(images)} images for one full batch)")
    if not 0.0 <= weight_decay < float("inf"):
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite float >= 0")
    if projection_dim < 1:
        raise ValueError(f"projection_dim={projection_dim!r} must be >= 1")
    for name, value in positive.items():
        if not 0.0 < value < float("inf"):
            raise ValueError(f"{name}={value!r} must be a finite float > 0")


def _fit_two_views(
    model: nn.Module,
    images: np.ndarray,
    loss_fn: TwoViewLoss,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    generator: torch.Generator,
    device: torch.device,
    view_config: ViewConfig | None,
    after_step: Callable[[int], None] | None = None,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
    also_saved: dict[str, nn.Module] | None = None,
) -> dict:
    """Trains `model`'s parameters on loss_fn(forward, view 1, view 2) of every full batch, `forward`
    being `model` itself or, in a process group, its DDP wrapper; returns metrics.

    `after_step(k)` runs after the k-th optimizer step (k from 0), e.g. BYOL's target update. With a
    `checkpoint`, the loop (and the modules `also_saved`, e.g. BYOL's target network) resumes from it.
    """
    config = view_config or ViewConfig()

    ranks, forward = distributed.join(model, device, batch_size)
    # views are drawn where the batch lives, so their generator lives there too; each rank draws its own
    view_generator = torch.Generator(device=device).manual_seed(distributed.rank_seed(seed + 1, ranks))
    per_epoch = steps_per_epoch(len(images), batch_size)
    optimizer, schedule = make_optimizer(param_groups(model, lr, weight_decay), epochs * per_epoch)
    log = LossLog(device, on_metrics)
    state = LoopState(checkpoint, modules={"model": model, **(also_saved or {})}, optimizer=optimizer,
                      schedule=schedule, data_generator=generator, generators={"views": view_generator},
                      values=log.totals, ranks=ranks)
    first_epoch, skip = state.resume(on_metrics)
    for epoch in range(first_epoch, epochs + 1):
        state.begin_epoch(epoch)
        model.train()
        batches = iter_batches(images, batch_size=batch_size, device=device, generator=generator, drop_last=True,
                               skip=skip, shard=(ranks.rank, ranks.world))
        for batch, (x, _) in enumerate(batches, start=skip + 1):
            view1 = make_view(x, config, generator=view_generator)
            view2 = make_view(x, config, generator=view_generator)
            loss = loss_fn(forward, view1, view2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if after_step is not None:
                after_step((epoch - 1) * per_epoch + batch - 1)
            log.add(loss, len(x))  # each image counts once, not once per view
            state.step_done(batch)
        skip = 0
        for module in (model, *(also_saved or {}).values()):
            distributed.share_buffers(module)
        state.end_epoch(log.end_epoch(epoch, schedule.get_last_lr()[0]))
    return {**log.metrics(), **state.resumed()}


def pretrain_simclr(
    backbone: nn.Module,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    temperature: float,
    projection_dim: int,
    seed: int,
    device: torch.device,
    view_config: ViewConfig | None = None,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[nn.Module, dict]:
    """SimCLR pretraining (Chen et al., ICML 2020) of a copy of `backbone` on unlabeled images.

    Each step: two views of the batch go through backbone + projection head in one forward
    pass (BatchNorm sees both views, like SimCLR's global BN), then NT-Xent (Eq. 1) in float32.
    Deterministic on CPU: the same backbone, images and seed give bit-identical weights.

    Args:
        backbone: the backbone to pretrain; copied, never modified.
        images: uint8 [N, C, H, W], unlabeled.
        epochs: passes over the images (>= 1).
        batch_size: images per step, in [2, N]; the incomplete last batch is dropped.
        lr: peak AdamW learning rate (warmup then cosine decay).
        weight_decay: AdamW decay on weight matrices/kernels.
        temperature: NT-Xent temperature (> 0).
        projection_dim: width of the projection head's output.
        seed: head init, data order and view draws.
        device: where to train.
        view_config: the view distribution; None uses `ViewConfig()`.
        on_metrics: called as on_metrics(epoch, {"loss", "lr", "elapsed_s"}) after each epoch.
        checkpoint: saves the loop's state there (epoch ends, and as its interval says) and resumes
            from what it holds, to the weights of an uninterrupted run.

    Returns:
        (backbone in eval mode, metrics). The head is discarded. metrics: wall_time_s
        (= train_time_s), images_seen (each image once per epoch), images_per_s, loss (the last
        epoch's mean) and loss_history (per-epoch means).
    """
    _check_args(images, epochs, batch_size, weight_decay, projection_dim, lr=lr, temperature=temperature)
    generator = seed_everything(seed)
    model = prepare_module(ProjectedBackbone(copy.deepcopy(backbone), projection_dim), device)

    def loss_fn(forward: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            z = forward(torch.cat([view1, view2])).float()  # [2B, projection_dim]
        z1, z2 = z.chunk(2)
        # several ranks: the negatives are the whole global batch, as in one process
        return nt_xent_loss(distributed.gather(z1), distributed.gather(z2), temperature=temperature)

    metrics = _fit_two_views(model, images, loss_fn, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, seed=seed, generator=generator, device=device,
                             view_config=view_config, on_metrics=on_metrics, checkpoint=checkpoint)
    return model.backbone.eval(), metrics


def pretrain_byol(
    backbone: nn.Module,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    projection_dim: int,
    predictor_hidden: int,
    base_momentum: float,
    seed: int,
    device: torch.device,
    view_config: ViewConfig | None = None,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[nn.Module, dict]:
    """BYOL pretraining (Grill et al., NeurIPS 2020) of a copy of `backbone` on unlabeled images.

    Online network: backbone + projector + predictor; target network: an EMA copy of backbone +
    projector, run in train mode (batch statistics) without gradient. Each step: the
    symmetrised loss byol_loss(p1, z2) + byol_loss(p2, z1) (Eq. 2 plus its view swap) in
    float32, an AdamW step on the online network, then the target update with the cosine
    momentum schedule. Deterministic on CPU like `pretrain_simclr`.

    Args:
        backbone: the backbone to pretrain; copied, never modified.
        images: uint8 [N, C, H, W], unlabeled.
        epochs, batch_size, lr, weight_decay, seed, device, view_config, on_metrics, checkpoint: as in
            `pretrain_simclr` (the checkpoint holds the target network too).
        projection_dim: width of the projector's (and predictor's) output.
        predictor_hidden: hidden width of the predictor MLP (>= 1).
        base_momentum: target EMA momentum at step 0, in [0, 1], rising to 1 at the last step
            (BYOL: 0.996 over ~1e5 steps; a short run wants less, e.g. 0.99).

    Returns:
        (online backbone in eval mode, metrics) as in `pretrain_simclr`; the heads and the
        target network are discarded.
    """
    _check_args(images, epochs, batch_size, weight_decay, projection_dim, lr=lr)
    if not 0.0 <= base_momentum <= 1.0:
        raise ValueError(f"base_momentum={base_momentum!r} is outside the valid range [0, 1]")
    if predictor_hidden < 1:
        raise ValueError(f"predictor_hidden={predictor_hidden!r} must be >= 1")
    generator = seed_everything(seed)
    online = ProjectedBackbone(copy.deepcopy(backbone), projection_dim)
    predictor = ProjectionHead(projection_dim, projection_dim, predictor_hidden)
    model = prepare_module(nn.Sequential(online, predictor), device)  # the online network's forward
    target = copy.deepcopy(online).requires_grad_(False).train()
    total_steps = epochs * steps_per_epoch(len(images), batch_size)

    def loss_fn(forward: nn.Module, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([view1, view2])
        with autocast(device):
            p = forward(x).float()  # [2B, projection_dim]
            with torch.no_grad():
                z = target(x).float()
        (p1, p2), (z1, z2) = p.chunk(2), z.chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    def update_target(step: int) -> None:
        ema_update(target, online, byol_momentum(step, total_steps, base_momentum))

    metrics = _fit_two_views(model, images, loss_fn, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, seed=seed, generator=generator, device=device,
                             view_config=view_config, after_step=update_target, on_metrics=on_metrics,
                             checkpoint=checkpoint, also_saved={"target": target})
    return online.backbone.eval(), metrics
