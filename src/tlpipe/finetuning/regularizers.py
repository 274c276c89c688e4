"""Penalties added to the cross-entropy while a pretrained backbone is fine-tuned with its new head.

- `L2SP` (Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with
  Convolutional Networks", ICML 2018): instead of weight decay towards 0, the backbone's weights are
  pulled towards their pretrained values w0 and only the new head's towards 0:
  Omega(w) = alpha / 2 * ||w_S - w0_S||^2 + beta / 2 * ||w_head||^2, over every parameter of the backbone
  (S) and of the head; the paper's alpha = 0.1, beta = 0.01. It replaces the optimizer's weight decay.
- `BatchSpectralShrinkage` (Chen, Wang, Fu, Long and Wang, "Catastrophic Forgetting Meets Negative
  Transfer: Batch Spectral Shrinkage for Safe Transfer Learning", NeurIPS 2019): the k smallest
  singular values of the batch's feature matrix F [B, D] (the backbone's pooled features) are shrunk,
  L_bss = eta * sum_{i=1..k} sigma_{-i}(F)^2; the paper's eta = 0.001, k = 1.

Each is called as `penalty(model, features)` once per step, with the `Classifier` being trained and
the batch's features, and returns a scalar tensor.
"""

from __future__ import annotations

import torch
from torch import nn


class L2SP(nn.Module):
    """alpha / 2 * ||backbone - its weights now||^2 + beta / 2 * ||head||^2 (see the module docstring).
    The starting point is the classifier's backbone as it is when the penalty is made."""

    needs_features = False

    def __init__(self, classifier: nn.Module, *, alpha: float = 0.1, beta: float = 0.01):
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha={alpha} and beta={beta} must be >= 0")
        self.alpha, self.beta = float(alpha), float(beta)
        self.start = {name: p.detach().clone() for name, p in classifier.backbone.named_parameters()}

    def forward(self, classifier: nn.Module, features: torch.Tensor | None = None) -> torch.Tensor:
        backbone = 0.0
        for name, p in classifier.backbone.named_parameters():
            if self.start[name].device != p.device:  # moved once, with the model
                self.start[name] = self.start[name].to(p.device)
            backbone = backbone + ((p - self.start[name]) ** 2).sum()
        head = sum((p**2).sum() for p in classifier.head.parameters())
        return 0.5 * self.alpha * backbone + 0.5 * self.beta * head


class BatchSpectralShrinkage(nn.Module):
    """eta * the sum of the k smallest squared singular values of the batch's features [B, D]."""

    needs_features = True

    def __init__(self, classifier: nn.Module | None = None, *, eta: float = 0.001, k: int = 1):
        super().__init__()
        if eta < 0 or k < 1:
            raise ValueError(f"eta={eta} must be >= 0 and k={k} >= 1")
        self.eta, self.k = float(eta), int(k)

    def forward(self, classifier: nn.Module, features: torch.Tensor) -> torch.Tensor:
        singular = torch.linalg.svdvals(features.float())  # descending, min(B, D) of them
        return self.eta * (singular[-self.k :] ** 2).sum()
