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
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import nn

from tlpipe import io, registry
from tlpipe.data.augment import augment_batch
from tlpipe.distillation import SYNTHETIC_FILE, SYNTHETIC_META
from tlpipe.pruning.kmeans import kmeans, nearest
from tlpipe.training.checkpoints import Checkpoint, LoopState
from tlpipe.training.loops import LossLog, MetricsCallback, make_optimizer, param_groups
from tlpipe.training.models import build_backbone, embed, feature_dim
from tlpipe.training.runtime import autocast, prepare_module, seed_everything, to_float

RIDGE = 1e-6  # lambda = RIDGE * tr(K_ss), the authors' choice: scale-free, detached
POOL_MOMENTUM = 0.9  # of the pool models' SGD (fixed in the authors' code)
LR_END_FACTOR = 1e-3  # the outer learning rate decays linearly to this fraction of its start


def kernel_features(embed_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """phi(x) = [embed(x), 1]: [n, h] features with a column of ones appended last -> [n, h + 1]."""
    features = embed_fn(x)
    return torch.cat([features, features.new_ones(features.shape[0], 1)], dim=1)


def krr_loss(embed_fn: Callable[[torch.Tensor], torch.Tensor], x_real: torch.Tensor, y_real: torch.Tensor,
             x_syn: torch.Tensor, y_syn: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The outer loss of KRR-ST for one pool model (see the module docstring).

    Args:
        embed_fn: the pool model's feature map, images [n, ...] -> [n, h]; it is called on the real
            batch without gradient.
        x_real: [n_r, ...] real images (augmented or not, as the teacher saw them).
        y_real: [n_r, d] the teacher's representations of them.
        x_syn: [n_s, ...] synthetic images (requires grad to be learned).
        y_syn: [n_s, d] their learnable targets.

    Returns:
        (loss, {"lambda": the ridge, "prediction": [n_r, d] K_rs (K_ss + lambda I)^-1 Y_s, detached}).
    """
    if y_real.shape[0] != x_real.shape[0] or y_syn.shape[0] != x_syn.shape[0] or y_real.shape[1:] != y_syn.shape[1:]:
        raise ValueError(f"shapes disagree: x_real {tuple(x_real.shape)}, y_real {tuple(y_real.shape)}, "
                         f"x_syn {tuple(x_syn.shape)}, y_syn {tuple(y_syn.shape)}")
    phi_syn = kernel_features(embed_fn, x_syn)
    with torch.no_grad():
        phi_real = kernel_features(embed_fn, x_real)
    k_rs, k_ss = phi_real @ phi_syn.T, phi_syn @ phi_syn.T
    ridge = RIDGE * torch.trace(k_ss.detach())
    eye = torch.eye(k_ss.shape[0], dtype=k_ss.dtype, device=k_ss.device)
    prediction = k_rs @ torch.linalg.solve(k_ss + ridge * eye, y_syn)  # LU with pivoting, as the authors
    return F.mse_loss(prediction, y_real), {"lambda": ridge, "prediction": prediction.detach()}


class Regressor(nn.Module):
    """A backbone and a linear head to the teacher's representation: pixels -> [B, d]. The pool models
    and the student while it is pretrained on the synthetic set; `embed` is the kernel's feature map."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone), dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def regressor_factory(model_config: dict, in_channels: int, dim: int) -> Callable[[int], Regressor]:
    """seed -> a fresh `Regressor` of `models.build_backbone(**model_config)`, its weights drawn from
    `seed` alone (torch's global generator is left as it was)."""
    def make(seed: int) -> Regressor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Regressor(build_backbone(in_channels=in_channels, **model_config), dim)

    return make


class PoolMember(nn.Module):
    """One model of the pool with its SGD state (momentum buffers, steps since its initialisation) kept
    as buffers, so the pool's whole state is a state_dict (checkpoints)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("resets", torch.zeros((), dtype=torch.long))
        for name, p in model.named_parameters():
            self.register_buffer(_momentum_name(name), torch.zeros_like(p))

    def sgd_step(self, x_syn: torch.Tensor, y_syn: torch.Tensor, *, lr: float, weight_decay: float) -> float:
        """One step regressing y_syn from x_syn (mean squared error over all entries) with torch's SGD
        rule: d = g + wd p; buf = d at the first step, else 0.9 buf + d; p -= lr buf. Returns the loss."""
        self.model.train()
        params = [(name, p) for name, p in self.model.named_parameters()]
        loss = F.mse_loss(self.model(x_syn), y_syn)
        grads = torch.autograd.grad(loss, [p for _, p in params])
        first = int(self.steps) == 0
        with torch.no_grad():
            for (name, p), g in zip(params, grads):
                buf = getattr(self, _momentum_name(name))
                d = g + weight_decay * p
                buf.copy_(d) if first else buf.mul_(POOL_MOMENTUM).add_(d)
                p.add_(buf, alpha=-lr)
        self.steps += 1
        return float(loss.detach())

    def restart(self, model: nn.Module) -> None:
        """A fresh model in place of this one, its SGD state cleared."""
        self.model.load_state_dict(model.state_dict())
        for name, _ in self.model.named_parameters():
            getattr(self, _momentum_name(name)).zero_()
        self.steps.zero_()
        self.resets += 1


def _momentum_name(parameter: str) -> str:
    return "momentum__" + parameter.replace(".", "__")


class ModelPool(nn.Module):
    """`size` models trained online on the synthetic set (Sec. 3.3). `make_model(seed)` builds one with
    fresh weights; the k-th model's r-th re-initialisation is seeded from (seed, k, r), so the pool is
    reproducible and resumable."""

    def __init__(self, make_model: Callable[[int], nn.Module], size: int, *, online_steps: int, lr: float,
                 weight_decay: float, seed: int):
        super().__init__()
        if size < 1 or online_steps < 2:
            raise ValueError(f"pool size={size} must be >= 1 and online_steps={online_steps} >= 2")
        self.make_model, self.seed = make_model, seed
        self.online_steps, self.lr, self.weight_decay = online_steps, lr, weight_decay
        self.members = nn.ModuleList(PoolMember(make_model(self._seed(k, 0))) for k in range(size))

    def _seed(self, member: int, resets: int) -> int:
        return (self.seed * 1_000_003 + member * 7919 + resets * 104_729) % 2**31

    def warm_up(self, x_syn: torch.Tensor, y_syn: torch.Tensor, generator: torch.Generator) -> None:
        """Trains each model for a random 1..online_steps-1 steps, so the pool starts spread over the
        stages of training (the authors' `init`)."""
        for member in self.members:
            for _ in range(int(torch.randint(1, self.online_steps, (1,), generator=generator))):
                member.sgd_step(x_syn, y_syn, lr=self.lr, weight_decay=self.weight_decay)

    def update(self, k: int, x_syn: torch.Tensor, y_syn: torch.Tensor) -> None:
        """After an outer step with model k: re-initialise it if it has trained `online_steps` steps,
        else one SGD step on the (already updated) synthetic set."""
        member = self.members[k]
        if int(member.steps) >= self.online_steps:
            fresh = self.make_model(self._seed(k, int(member.resets) + 1))
            member.restart(fresh.to(member.steps.device))
        else:
            member.sgd_step(x_syn, y_syn, lr=self.lr, weight_decay=self.weight_decay)


class SyntheticSet(nn.Module):
    """The learnable synthetic images [n_s, C, H, W] (input space, [-1, 1] at the start) and targets [n_s, d]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        super().__init__()
        self.images = nn.Parameter(images.detach().clone().float())
        self.targets = nn.Parameter(targets.detach().clone().float())


def save_synthetic(synthetic: SyntheticSet, folder: Path, meta: dict) -> None:
    """The set as a small data set of its own: `synthetic.safetensors` (images [n_s, C, H, W] float32
    in [-1, 1] input space, targets [n_s, d]) and `synthetic.json` (meta: how it was made)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"images": synthetic.images.detach().cpu().contiguous(),
               "targets": synthetic.targets.detach().cpu().contiguous()}, str(folder / SYNTHETIC_FILE))
    io.write_json(folder / SYNTHETIC_META, {**meta, "size": len(synthetic.images),
                                             "image_shape": list(synthetic.images.shape[1:]),
                                             "target_dim": int(synthetic.targets.shape[1])})


def load_synthetic(folder: Path) -> tuple[SyntheticSet, dict]:
    """(set, meta) saved by `save_synthetic`; ValueError naming the folder when it holds none."""
    folder = Path(folder)
    if not (folder / SYNTHETIC_FILE).is_file():
        raise ValueError(f"{folder} holds no synthetic set ({SYNTHETIC_FILE}); a distill output with "
                         f"method krr_st has one in synthetic/")
    tensors = load_file(str(folder / SYNTHETIC_FILE))
    meta = io.read_json(folder / SYNTHETIC_META) if (folder / SYNTHETIC_META).is_file() else {}
    return SyntheticSet(tensors["images"], tensors["targets"]), meta


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
