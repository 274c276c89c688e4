"""Shared by the supervised source stages (surrogate, pretrain): train a classifier, keep its history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tlpipe import io, models, runtime, training
from tasks.context import StageContext


def train_source_classifier(ctx: StageContext, train: tuple, val: tuple, num_classes: int,
                            label_smoothing: float = 0.0) -> tuple[models.Classifier, dict]:
    """Builds the configured backbone + head and trains it on (images, labels) with progress and history."""
    import torch

    p = ctx.params
    images, labels = train
    runtime.seed_everything(p["seed"])  # initial weights depend on the seed alone, not on what ran before
    backbone = models.build_backbone(in_channels=images.shape[1], **p["model"])
    model = models.Classifier(backbone, num_classes)
    history: list[dict] = []
    with ctx.progress(p["epochs"], "epochs") as report:
        def on_metrics(epoch: int, metrics: dict) -> None:
            history.append({"epoch": epoch, **metrics})
            report(epoch, metrics)

        result = training.train_classifier(
            model, images, labels, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            weight_decay=p["weight_decay"], seed=p["seed"], device=torch.device(ctx.device),
            val_images=val[0], val_labels=val[1], label_smoothing=label_smoothing, on_metrics=on_metrics,
        )
    write_history(ctx.out / "history.csv", history)
    return model, {**result, "parameters": models.count_parameters(backbone), "classes": num_classes}


def write_history(path: Path, history: list[dict]) -> None:
    """Per-epoch metrics as CSV for `dvc plots`; wall-clock columns are left out so the file is reproducible."""
    frame = pd.DataFrame(history).drop(columns=["elapsed_s"], errors="ignore")
    io.write_table(path, frame)


def remap_labels(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Source class ids -> 0..K-1 in the order of `kept` (sorted ids)."""
    lookup = np.full(int(max(labels.max(), kept.max())) + 1, -1, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))
    return lookup[labels]
