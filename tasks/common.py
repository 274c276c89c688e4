"""What several stages share: per-epoch history with progress, and the source models of surrogate
and pretrain."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from tlpipe import io
from tlpipe.evaluation import plots
from tlpipe.pretraining.source_models import fit_source_model
from tlpipe.training import models
from project import files


CURVES = "curves.png"  # beside the history: the training curves as `dvc plots show` and the report show them


@contextlib.contextmanager
def recorded(ctx, total: int, label: str, history: Path) -> Iterator:
    """A per-epoch callback that reports progress; the epochs are written to `history` (CSV) after,
    and drawn, one panel per metric, to `curves.png` beside it."""
    rows: list[dict] = []
    with ctx.progress(total, label) as report:
        def on_metrics(epoch: int, metrics: dict) -> None:
            rows.append({"epoch": epoch, **metrics})
            report(epoch, metrics)

        yield on_metrics
    frame = io.write_history(history, rows)
    curves = {name: frame[name].tolist() for name in frame.columns
              if name != "epoch" and pd.api.types.is_numeric_dtype(frame[name]) and frame[name].notna().all()}
    if curves:
        io.write_figure(history.with_name(CURVES), plots.plot_curves(curves, title=f"{ctx.stage}: {label}"))


def augmentation(ctx, images):
    """The training images' random transform that the stage's `augment` param names (`recipes.training_augmentation`)."""
    from tlpipe.data import recipes

    return recipes.training_augmentation(ctx.params["augment"], images.shape[-1],
                                         encoded=getattr(images, "encoded", False))


def train_source(ctx, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 num_classes: int, label_smoothing: float = 0.0) -> dict:
    """Trains the stage's source model in its `mode`; saves `backbone/` (what every downstream stage
    reads), `model/` (the classifier, when supervised) and the history."""
    p = ctx.params
    label = "epochs" if p["mode"] == "supervised" else f"{p['mode']} epochs"
    ssl = {k: p[k] for k in ("temperature", "projection_dim", "predictor_hidden", "base_momentum") if k in p}
    with recorded(ctx, p["epochs"], label, ctx.out / "history.csv") as on_metrics:
        backbone, classifier, metrics = fit_source_model(
            p["mode"], *train, val_images=val[0], val_labels=val[1], num_classes=num_classes,
            model_config=p["model"], epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            weight_decay=p["weight_decay"], seed=p["seed"], device=torch.device(ctx.device),
            label_smoothing=label_smoothing, on_metrics=on_metrics, checkpoint=ctx.checkpoint("train"),
            augment=augmentation(ctx, train[0]), **ssl)
    if classifier is not None:
        models.save_classifier(classifier, ctx.out / files.CLASSIFIER)
    models.save_backbone(backbone, ctx.out / files.BACKBONE)
    return metrics


def fit_summary(m: dict) -> str:
    """How well a source model fits: validation accuracy when supervised, else the final SSL loss."""
    return f"val acc {m['val_accuracy']:.3f}" if "val_accuracy" in m else f"ssl loss {m.get('loss', float('nan')):.3f}"
