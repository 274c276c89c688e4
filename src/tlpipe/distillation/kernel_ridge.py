"""KRR-ST's inner problem (Lee et al., ICLR 2024): kernel ridge regression from the synthetic images' features to their targets, scored on real images, and the pool of models whose features the kernel uses."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tlpipe.training.models import build_backbone, embed, feature_dim

RIDGE = 1e-6  # lambda = RIDGE * tr(K_ss), the authors' choice: scale-free, detached


POOL_MOMENTUM = 0.9  # of the pool models' SGD (fixed in the authors' code)


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
