"""Few-shot linear-probe transfer scores: `evaluate` scores every backbone with them, a sweep each teacher.

The draws are paired: every backbone is probed on the same few-shot subsets of the target pool and
the same test split, so differences between backbones are not draw noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tlpipe import data, metrics, models, training


def probe_pool(target) -> tuple[np.ndarray, np.ndarray]:
    """The labeled pool few-shot draws come from: train + unlabeled images that carry a label."""
    parts = [data.to_arrays(target[split]) for split in ("train", "unlabeled")]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images[labels >= 0], labels[labels >= 0]


def few_shot_draws(labels: np.ndarray, params: dict) -> dict[int, list[np.ndarray]]:
    """Index draws per shot count, from the evaluate params (probe_shots, probe_draws, seed)."""
    return {k: metrics.draw_few_shot_indices(labels, shots=k, draws=params["probe_draws"], seed=params["seed"])
            for k in params["probe_shots"]}


def probe_rows(name: str, backbone, pool, test, draws: dict, *, batch_size: int, device: torch.device) -> list[dict]:
    """One row per (shots, draw): the probe accuracy of `backbone` on the test split."""
    pool_f = training.extract_features(backbone, pool[0], batch_size=batch_size, device=device)
    test_f = training.extract_features(backbone, test[0], batch_size=batch_size, device=device)
    rows = []
    for shots, shot_draws in draws.items():
        accs = metrics.few_shot_probe(pool_f, pool[1], test_f, test[1], shot_draws)
        rows += [{"backbone": name, "shots": shots, "draw": i, "accuracy": a} for i, a in enumerate(accs)]
    return rows


def teacher_backbone(pretrain_dir: Path):
    """The pretrained backbone of a pretrain output folder."""
    return models.load_backbone(Path(pretrain_dir) / "backbone")


def score_teacher(prepared_dir: Path, pretrain_dir: Path, params: dict, device: str) -> dict:
    """Mean and std of the teacher's probe accuracy per shot count: {"probe_1shot": .., "probe_1shot_std": ..}."""
    target = data.load_prepared(Path(prepared_dir) / "target")
    pool, test = probe_pool(target), data.to_arrays(target["test"])
    rows = probe_rows("teacher", teacher_backbone(pretrain_dir), pool, test, few_shot_draws(pool[1], params),
                      batch_size=params["batch_size"], device=torch.device(device))
    frame = pd.DataFrame(rows)
    scores = {}
    for shots, group in frame.groupby("shots"):
        summary = metrics.summarise(group["accuracy"])
        scores[f"probe_{shots}shot"] = summary["mean"]
        scores[f"probe_{shots}shot_std"] = summary["std"]
    return scores
