"""Shared by the source stages (surrogate, pretrain): train the configured backbone on source images,
with the labels (a classifier) or self-supervised (SimCLR, BYOL); save it and its history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tlpipe import data, io, models, runtime, selfsup, training
from tasks.context import StageContext


def train_source_model(ctx: StageContext, train: tuple, val: tuple, num_classes: int,
                       label_smoothing: float = 0.0) -> dict:
    """Trains in the configured `mode` and saves `backbone/` (and `model/`, the classifier, when supervised)."""
    if ctx.params["mode"] == "supervised":
        model, metrics = train_source_classifier(ctx, train, val, num_classes, label_smoothing)
        models.save_classifier(model, ctx.out / "model")
        models.save_backbone(model.backbone, ctx.out / "backbone")  # what every downstream stage reads
        return metrics
    backbone, metrics = train_self_supervised(ctx, train[0])
    models.save_backbone(backbone, ctx.out / "backbone")
    return metrics


def train_self_supervised(ctx: StageContext, images: np.ndarray) -> tuple:
    """SimCLR or BYOL on the images alone (labels unused), with progress and history."""
    import torch

    p = ctx.params
    runtime.seed_everything(p["seed"])
    backbone = models.build_backbone(in_channels=images.shape[1], **p["model"])
    common = dict(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
                  projection_dim=p["projection_dim"], seed=p["seed"], device=torch.device(ctx.device))
    history: list[dict] = []
    with ctx.progress(p["epochs"], f"{p['mode']} epochs") as report:
        def on_metrics(epoch: int, metrics: dict) -> None:
            history.append({"epoch": epoch, **metrics})
            report(epoch, metrics)

        if p["mode"] == "simclr":
            backbone, metrics = selfsup.pretrain_simclr(backbone, images, temperature=p["temperature"],
                                                    on_metrics=on_metrics, **common)
        else:
            backbone, metrics = selfsup.pretrain_byol(backbone, images, predictor_hidden=p["predictor_hidden"],
                                                  base_momentum=p["base_momentum"], on_metrics=on_metrics, **common)
    write_history(ctx.out / "history.csv", history)
    metrics.pop("loss_history", None)
    return backbone, {**metrics, "parameters": models.count_parameters(backbone)}


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


def kept_source(ctx: StageContext, source) -> tuple[tuple, tuple, np.ndarray]:
    """(train, val, classes) of the pruned source: the kept train images with their labels remapped to
    0..K-1 over the classes they cover, and the val images of those classes."""
    kept = io.read_array(ctx.upstream("prune") / "kept_indices.npy")
    images, labels = data.to_arrays(source["train"])
    classes = np.unique(labels[kept])
    val_images, val_labels = data.to_arrays(source["val"])
    in_val = np.isin(val_labels, classes)
    train = (images[kept], remap_labels(labels[kept], classes))
    return train, (val_images[in_val], remap_labels(val_labels[in_val], classes)), classes


def remap_labels(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Source class ids -> 0..K-1 in the order of `kept` (sorted ids)."""
    lookup = np.full(int(max(labels.max(), kept.max())) + 1, -1, dtype=np.int64)
    lookup[kept] = np.arange(len(kept))
    return lookup[labels]
