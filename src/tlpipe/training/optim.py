"""Optimisers and learning-rate schedules of the training loops: parameter groups, AdamW, warm-up then cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on biases and norm weights (1-d tensors); backbone lr scaled."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("backbone."), p.ndim > 1), []).append(p)
    return [
        {"params": ps, "lr": lr * (backbone_lr_scale if in_backbone else 1.0),
         "weight_decay": weight_decay if decays else 0.0}
        for (in_backbone, decays), ps in sorted(groups.items())
    ]


def make_optimizer(groups: list[dict], steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a 5 % (at least one step) warmup then cosine decay over `steps`."""
    optimizer = torch.optim.AdamW(groups)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, max(1, steps // 20)))
    return optimizer, schedule


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch with the incomplete last batch dropped (a small set is one batch)."""
    return max(n // batch_size, 1)
