"""Source models (the surrogate and the teacher): a classifier on the source labels, or a backbone
trained self-supervised (SimCLR, BYOL), by the mode names of `registry.SOURCE_MODES`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tlpipe.pretraining import selfsup
from tlpipe.registry import SOURCE_MODES
from tlpipe.training import loops, models, runtime
from tlpipe.training.checkpoints import Checkpoint
from tlpipe.training.loops import MetricsCallback


def fit_source_model(
    mode: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    model_config: dict,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: torch.device,
    label_smoothing: float = 0.0,
    temperature: float = 0.2,
    projection_dim: int = 64,
    predictor_hidden: int = 128,
    base_momentum: float = 0.99,
    on_metrics: MetricsCallback | None = None,
    checkpoint: Checkpoint | None = None,
    augment=None,
) -> tuple[nn.Module, nn.Module | None, dict]:
    """Builds the backbone `model_config` describes and trains it on the source images.

    Args:
        mode: a name of `SOURCE_MODES`: "supervised" (backbone + linear head on `labels`), "simclr"
            (`temperature`, `projection_dim`) or "byol" (`projection_dim`, `predictor_hidden`,
            `base_momentum`); the self-supervised modes read neither labels nor validation images.
        images, labels: uint8 [N, C, H, W] source train images and int64 [N] class ids.
        val_images, val_labels: held-out source images (supervised validation accuracy per epoch).
        num_classes: classes of the classifier head.
        model_config: `models.build_backbone` keywords (arch, sizes, depths, ...).
        on_metrics: called after each epoch with (epoch, metrics).
        checkpoint: the training loop saves its state there and resumes from it.
        augment: supervised only: the training images' random uint8 transform (`loops.train_classifier`);
            the self-supervised modes draw their own views.

    Returns:
        (backbone, classifier or None, metrics). Initial weights depend on `seed` alone.
    """
    if mode not in SOURCE_MODES:
        raise ValueError(f"mode={mode!r} is unknown; valid options: {', '.join(SOURCE_MODES)}")
    runtime.seed_everything(seed)
    backbone = models.build_backbone(in_channels=images.shape[1], **model_config)
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, device=device,
                  on_metrics=on_metrics, checkpoint=checkpoint)
    if SOURCE_MODES[mode].labels:
        classifier = models.Classifier(backbone, num_classes)
        result = loops.train_classifier(classifier, images, labels, val_images=val_images, val_labels=val_labels,
                                        label_smoothing=label_smoothing, augment=augment, **common)
        return backbone, classifier, {**result, "parameters": models.count_parameters(backbone),
                                      "classes": num_classes}
    if mode == "simclr":
        backbone, metrics = selfsup.pretrain_simclr(backbone, images, temperature=temperature,
                                                    projection_dim=projection_dim, **common)
    else:
        backbone, metrics = selfsup.pretrain_byol(backbone, images, projection_dim=projection_dim,
                                                  predictor_hidden=predictor_hidden, base_momentum=base_momentum,
                                                  **common)
    metrics.pop("loss_history", None)
    return backbone, None, {**metrics, "parameters": models.count_parameters(backbone)}
