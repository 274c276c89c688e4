"""The stages' outputs read by their layout: the teacher in a pretrain folder, and the scores of a
teacher as the sweep compares them (the library's probes on the prepared target)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from tlpipe import registry
from tlpipe.data import images, storage
from tlpipe.evaluation import metrics
from tlpipe.evaluation.probe import (
    few_shot_draws,
    finetuned_accuracy,
    probe_pool,
    probe_rows,
    transferability_of,
)
from tlpipe.training import models
from project import files


def teacher_backbone(pretrain_dir: Path):
    """The pretrained backbone of a pretrain output folder."""
    return models.load_backbone(Path(pretrain_dir) / files.BACKBONE)


def score_teacher(prepared_dir: Path, pretrain_dir: Path, params: dict, device: str, finetune: dict | None = None) -> dict:
    """The teacher's probe accuracy per shot count ({"probe_1shot": mean, "probe_1shot_std": std, ..}),
    its transferability scores (logme, h_score, tmi, leep, nce) and, given the finetune params, its
    fine-tuned test accuracy (`finetune_accuracy`)."""
    target = storage.load_prepared(Path(prepared_dir) / files.TARGET)
    pool, test, train = probe_pool(target), storage.to_arrays(target["test"]), storage.to_arrays(target["train"])
    backbone, device = teacher_backbone(pretrain_dir), torch.device(device)
    rows = probe_rows("teacher", backbone, pool, test, few_shot_draws(pool[1], params),
                      batch_size=params["batch_size"], device=device)
    frame = pd.DataFrame(rows)
    scores = {}
    for shots, group in frame.groupby("shots"):
        summary = metrics.summarise(group["accuracy"])
        scores[f"probe_{shots}shot"] = summary["mean"]
        scores[f"probe_{shots}shot_std"] = summary["std"]
    scores.update(transferability_of(backbone, train, classifier_dir=Path(pretrain_dir) / files.CLASSIFIER,
                                     batch_size=params["batch_size"], device=device))
    if finetune is not None:
        num_classes = target["train"].features["label"].num_classes
        unlabeled = images.Images.of(target["unlabeled"]) if registry.FINETUNING[finetune["method"]].unlabeled else None
        scores["finetune_accuracy"] = finetuned_accuracy(backbone, train, test, finetune, num_classes, device,
                                                         unlabeled=unlabeled)
    return scores
