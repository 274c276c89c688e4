"""Few-shot linear-probe transfer scores: `evaluate` scores every backbone with them, a sweep each teacher.

The draws are paired: every backbone is probed on the same few-shot subsets of the target pool and
the same test split, so differences between backbones are not draw noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tlpipe.data import storage
from tlpipe.evaluation import metrics
from tlpipe.training import loops, models
from tlpipe.transferability import transferability_scores


def probe_pool(target) -> tuple[np.ndarray, np.ndarray]:
    """The labeled pool few-shot draws come from: train + unlabeled images that carry a label."""
    parts = [storage.to_arrays(target[split]) for split in ("train", "unlabeled")]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images[labels >= 0], labels[labels >= 0]


def few_shot_draws(labels: np.ndarray, params: dict) -> dict[int, list[np.ndarray]]:
    """Index draws per shot count, from the evaluate params (probe_shots, probe_draws, seed)."""
    return {k: metrics.draw_few_shot_indices(labels, shots=k, draws=params["probe_draws"], seed=params["seed"])
            for k in params["probe_shots"]}


def probe_rows(name: str, backbone, pool, test, draws: dict, *, batch_size: int, device: torch.device) -> list[dict]:
    """One row per (shots, draw): the probe accuracy of `backbone` on the test split."""
    pool_f = loops.extract_features(backbone, pool[0], batch_size=batch_size, device=device)
    test_f = loops.extract_features(backbone, test[0], batch_size=batch_size, device=device)
    rows = []
    for shots, shot_draws in draws.items():
        accs = metrics.few_shot_probe(pool_f, pool[1], test_f, test[1], shot_draws)
        rows += [{"backbone": name, "shots": shots, "draw": i, "accuracy": a} for i, a in enumerate(accs)]
    return rows


def teacher_backbone(pretrain_dir: Path):
    """The pretrained backbone of a pretrain output folder."""
    return models.load_backbone(Path(pretrain_dir) / "backbone")


def transferability_of(backbone, train, *, classifier_dir: Path | None, batch_size: int, device: torch.device) -> dict:
    """LogME, H-score and TMI of `backbone`'s features on the labeled target train split (no fine-tuning);
    LEEP and NCE too when `classifier_dir` holds a source classifier (a supervised teacher's model/)."""
    features = loops.extract_features(backbone, train[0], batch_size=batch_size, device=device)
    probs = None
    if classifier_dir is not None and Path(classifier_dir).is_dir():
        logits = loops.predict_logits(models.load_classifier(classifier_dir), train[0], batch_size=batch_size,
                                      device=device)
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    return transferability_scores(features, train[1], source_probs=probs)


def finetuned_accuracy(backbone, train, test, recipe: dict, num_classes: int, device: torch.device) -> float:
    """Test accuracy of `backbone` fine-tuned on the target train split with the finetune params' recipe."""
    model, _ = loops.finetune(backbone, *train, num_classes=num_classes, mode=recipe["mode"],
                              epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                              weight_decay=recipe["weight_decay"], seed=recipe["seed"], device=device)
    logits = loops.predict_logits(model, test[0], batch_size=256, device=device)
    return float((logits.argmax(1) == test[1]).mean())


def score_teacher(prepared_dir: Path, pretrain_dir: Path, params: dict, device: str, finetune: dict | None = None) -> dict:
    """The teacher's probe accuracy per shot count ({"probe_1shot": mean, "probe_1shot_std": std, ..}),
    its transferability scores (logme, h_score, tmi, leep, nce) and, given the finetune params, its
    fine-tuned test accuracy (`finetune_accuracy`)."""
    target = storage.load_prepared(Path(prepared_dir) / "target")
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
    scores.update(transferability_of(backbone, train, classifier_dir=Path(pretrain_dir) / "model",
                                     batch_size=params["batch_size"], device=device))
    if finetune is not None:
        num_classes = target["train"].features["label"].num_classes
        scores["finetune_accuracy"] = finetuned_accuracy(backbone, train, test, finetune, num_classes, device)
    return scores
