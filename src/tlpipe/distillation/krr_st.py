"""KRR-ST: self-supervised dataset distillation for transfer learning.

Lee et al., "Self-Supervised Dataset Distillation for Transfer Learning", ICLR 2024. An unlabeled
source is distilled into `n_s` synthetic images X_s with learnable target representations Y_s, so
that regressing Y_s from X_s (MSE) pretrains a backbone the way the source and a pretrained teacher T
would. Each outer step (Sec. 3.2-3.3, Alg. 1) takes one model m of a pool, maps images to
phi(x) = [m.embed(x), 1] and fits kernel ridge regression on the synthetic set:

    K_rs = phi(X_r) phi(X_s)^T,  K_ss = phi(X_s) phi(X_s)^T,  lambda = 1e-6 tr(K_ss)  (detached)
    L    = mean over entries of (K_rs (K_ss + lambda I)^-1 Y_s - T(X_r))^2

for a real batch X_r; X_s and Y_s take a gradient step (AdamW, lr decayed linearly to 1e-3 of its
start) and the chosen model takes one SGD step (momentum 0.9) regressing Y_s from X_s, so the pool
holds models at every stage of training on the synthetic set. A model trained for `online_steps`
steps is re-initialised. The loss, its gradients and the inner step agree with the authors' code
(db-Lee/selfsup_dd) to float64 precision (tests/unit/test_krr_st.py, fixtures K1-K3).

What differs from that code, on purpose:
- A re-initialised pool model trains again from step 0. The authors' pool never resets its step
  counter, so once a model reaches `online_steps` it is replaced by a fresh one at every later visit
  and never trained again; the paper describes a pool of models at every stage of training.
- X_s lives in the networks' input space (pixels scaled to [-1, 1], as every batch here), and Y_s
  starts as T(X_s); the authors start X_s from pre-normalisation pixels, which then enter m unnormalised.
- The real batch is drawn with replacement (a seeded generator) rather than from a shuffled loader,
  so the stream never ends and its position is one generator state (checkpoints).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlpipe import registry
from tlpipe.data.augment import augment_batch
from tlpipe.distillation.kernel_ridge import ModelPool, Regressor, krr_loss
from tlpipe.distillation.synthetic_set import SyntheticSet
from tlpipe.pruning.kmeans import kmeans, nearest
from tlpipe.training.checkpoints import Checkpoint, LoopState
from tlpipe.training.loops import LossLog, MetricsCallback
from tlpipe.training.models import embed, feature_dim
from tlpipe.training.optim import make_optimizer, param_groups
from tlpipe.training.runtime import autocast, prepare_module, seed_everything, to_float

LR_END_FACTOR = 1e-3  # the outer learning rate decays linearly to this fraction of its start


INITS = registry.KRR_ST_INITS


def initial_rows(n: int, size: int, *, init: str, seed: int, features=None) -> np.ndarray:
    """Sorted positions of the `size` real images the synthetic set starts from: drawn at random, or
    (kmeans) the image nearest to each centroid of k-means on `features` [n, d] (the teacher's
    representations), topped up at random where two centroids share an image. Both are the paper's
    baselines when no outer step follows."""
    if init not in INITS:
        raise ValueError(f"init={init!r} is unknown; valid options: {', '.join(INITS)}")
    if not 1 <= size <= n:
        raise ValueError(f"synthetic_size={size} must be between 1 and the {n} real images")
    rng = np.random.default_rng(seed)
    if init == "random":
        return np.sort(rng.choice(n, size, replace=False))
    if features is None or len(features) != n:
        raise ValueError(f"init=kmeans needs the teacher's features of all {n} real images")
    _, centroids = kmeans(features, size, seed=seed)
    rows = np.unique(nearest(centroids, np.asarray(features, dtype=np.float64))[0])
    rest = np.setdiff1d(np.arange(n), rows)
    return np.sort(np.concatenate([rows, rng.choice(rest, size - len(rows), replace=False)]))


def initial_set(teacher: nn.Module, images, rows: np.ndarray, *, device: torch.device) -> SyntheticSet:
    """The real images at `rows`, with the teacher's representations of them as targets."""
    x = to_float(torch.as_tensor(images[rows])).to(device)
    teacher = prepare_module(teacher, device).eval()
    with torch.no_grad():
        y = torch.cat([embed(teacher, chunk).float() for chunk in x.split(256)])
    return SyntheticSet(x, y)


def distill_dataset(
    teacher: nn.Module,
    images,
    make_model: Callable[[int], nn.Module],
    *,
    synthetic_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    pool_size: int,
    online_steps: int,
    online_lr: float,
    online_weight_decay: float,
    seed: int,
    device: torch.device,
    init: str = "random",
    init_features=None,
    teacher_table: torch.Tensor | None = None,
    augment: bool = True,
    grad_clip: float = 0.0,
    rounds: int = 20,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[SyntheticSet, dict]:
    """Learns a synthetic set of `synthetic_size` images and targets from unlabeled `images` (Alg. 1).

    Args:
        teacher: the frozen pretrained backbone T (its pooled embedding is the representation).
        images: uint8 [N, C, H, W] real images, an array or a set read by index.
        make_model: seed -> a fresh `Regressor` (backbone + head to the teacher's dimension); the pool's models.
        synthetic_size: n_s.
        steps: outer steps; 0 returns the initial set (the random or k-means baseline).
        batch_size: real images per outer step.
        lr: the outer AdamW learning rate of X_s and Y_s (no weight decay), decayed linearly to 1e-3 of it.
        pool_size, online_steps, online_lr, online_weight_decay: the pool (see `ModelPool`).
        seed: initial images, pool weights, batch draws and augmentation draws.
        device: where to compute.
        init: how the initial images are drawn (`initial_rows`).
        init_features: [N, d] the teacher's representations of the un-augmented images, which init
            kmeans clusters (default `teacher_table`).
        teacher_table: float [N, d], the teacher's representations of the un-augmented images (computed
            once by the caller); requires augment=False, and the teacher then never runs in the loop.
        augment: each real batch goes through `augment_batch` before the teacher and the pool model.
        grad_clip: clip each of the two gradients to this norm (0: off, the authors' default).
        rounds: how many times the loop reports (and saves a checkpoint): every steps/rounds steps.
        on_metrics: called as on_metrics(round, {"krr_loss", "outer_lr", "krr_elapsed_s"}).
        checkpoint: the loop's state (synthetic set, pool, optimizer, generators) is saved there each
            round, and resumed from.

    Returns:
        (the synthetic set on the CPU, metrics: wall_time_s, images_seen, krr_loss (last round's mean),
        krr_loss_first (first round's), teacher_forward).
    """
    if teacher_table is not None and augment:
        raise ValueError("teacher_table holds the un-augmented images' representations; pass augment=False with it")
    if teacher_table is not None and tuple(teacher_table.shape) != (len(images), feature_dim(teacher)):
        raise ValueError(f"teacher_table has shape {tuple(teacher_table.shape)}; expected "
                         f"({len(images)}, {feature_dim(teacher)})")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps={steps} must be >= 0 and batch_size={batch_size} >= 1")
    started = time.perf_counter()
    seed_everything(seed)
    rows = initial_rows(len(images), synthetic_size, init=init, seed=seed,
                        features=teacher_table if init_features is None else init_features)
    synthetic = initial_set(teacher, images, rows, device=device).to(device)
    if steps == 0:
        return synthetic.cpu(), {"wall_time_s": time.perf_counter() - started, "images_seen": 0,
                                 "teacher_forward": teacher_table is None}
    pool = ModelPool(lambda s: make_model(s).to(device), pool_size, online_steps=online_steps, lr=online_lr,
                     weight_decay=online_weight_decay, seed=seed).to(device)
    pool_generator = torch.Generator().manual_seed(seed + 1)
    sample_generator = torch.Generator().manual_seed(seed + 2)  # real batches; restored mid-round on resume
    augment_generator = torch.Generator(device=device).manual_seed(seed + 3)
    live = teacher_table is None
    teacher = prepare_module(teacher, device).eval() if live else None

    optimizer = torch.optim.AdamW(synthetic.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, LR_END_FACTOR, total_iters=steps)
    rounds = max(1, min(rounds, steps))
    per_round = math.ceil(steps / rounds)

    def report(round_: int, metrics: dict) -> None:  # names of its own: the student's loop reports next
        if on_metrics is not None:
            on_metrics(round_, {"krr_loss": metrics["loss"], "outer_lr": metrics["lr"],
                                **({"krr_elapsed_s": metrics["elapsed_s"]} if "elapsed_s" in metrics else {})})

    log = LossLog(device, report)
    state = LoopState(checkpoint, modules={"synthetic": synthetic, "pool": pool}, optimizer=optimizer,
                      schedule=schedule, data_generator=torch.Generator(), values=log.totals,
                      generators={"pool": pool_generator, "sample": sample_generator, "augment": augment_generator})
    first_round, done = state.resume(report)
    if first_round == 1 and done == 0:
        pool.warm_up(synthetic.images.detach(), synthetic.targets.detach(), pool_generator)
    step = (first_round - 1) * per_round + done
    for round_ in range(first_round, rounds + 1):
        state.begin_epoch(round_)
        for batch in range(done + 1, per_round + 1):
            if step >= steps:
                break
            k = int(torch.randint(pool_size, (1,), generator=pool_generator))
            rows = torch.randint(len(images), (batch_size,), generator=sample_generator).numpy()
            x_real = to_float(torch.as_tensor(images[rows])).to(device)
            with torch.no_grad():
                if augment:
                    x_real = augment_batch(x_real, generator=augment_generator)
                if live:
                    with autocast(device):
                        y_real = embed(teacher, x_real).float()
                else:
                    y_real = teacher_table[torch.as_tensor(rows)].to(device)
            model = pool.members[k].model.eval()
            loss, _ = krr_loss(model.embed, x_real, y_real, synthetic.images, synthetic.targets)
            optimizer.zero_grad(set_to_none=True)
            synthetic.images.grad, synthetic.targets.grad = torch.autograd.grad(
                loss, [synthetic.images, synthetic.targets])
            if grad_clip > 0:
                for p in synthetic.parameters():
                    nn.utils.clip_grad_norm_(p, grad_clip)
            optimizer.step()
            schedule.step()
            pool.update(k, synthetic.images.detach(), synthetic.targets.detach())
            log.add(loss, batch_size)
            step += 1
            state.step_done(batch)
        done = 0
        state.end_epoch(log.end_epoch(round_, schedule.get_last_lr()[0]))
    result = log.metrics()
    return synthetic.cpu(), {"wall_time_s": time.perf_counter() - started, "images_seen": result["images_seen"],
                             "krr_loss": result["loss"], "krr_loss_first": result["loss_history"][0],
                             "teacher_forward": live, **state.resumed()}


def pretrain_on_synthetic(
    backbone: nn.Module,
    synthetic: SyntheticSet,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[nn.Module, dict]:
    """Pretrains a copy of `backbone` by regressing the synthetic targets from the synthetic images
    (MSE through a linear head, which is dropped; Sec. 3.4). AdamW with warmup and cosine decay.

    Returns:
        (the trained backbone, metrics: wall_time_s, images_seen, images_per_s, loss, loss_history).
    """
    images, targets = synthetic.images.detach(), synthetic.targets.detach()
    generator = seed_everything(seed)
    model = prepare_module(Regressor(copy.deepcopy(backbone), targets.shape[1]), device)
    images, targets = images.to(device), targets.to(device)
    per_epoch = max(1, len(images) // batch_size)  # a set smaller than a batch is one batch
    optimizer, schedule = make_optimizer(param_groups(model, lr, weight_decay), epochs * per_epoch)
    log = LossLog(device, on_metrics)
    state = LoopState(checkpoint, modules={"model": model}, optimizer=optimizer, schedule=schedule,
                      data_generator=generator, values=log.totals)
    first_epoch, skip = state.resume(on_metrics)
    for epoch in range(first_epoch, epochs + 1):
        state.begin_epoch(epoch)
        model.train()
        order = torch.randperm(len(images), generator=generator).to(device)
        size = min(batch_size, len(images))
        for batch in range(skip + 1, per_epoch + 1):
            rows = order[(batch - 1) * size: batch * size]
            with autocast(device):
                loss = F.mse_loss(model(images[rows]).float(), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            log.add(loss, len(rows))
            state.step_done(batch)
        skip = 0
        state.end_epoch(log.end_epoch(epoch, schedule.get_last_lr()[0]))
    return model.backbone.eval(), {**log.metrics(), **state.resumed()}
