"""Few-shot linear-probe transfer scores of backbones, with their transferability and fine-tuned accuracy.

The draws are paired: every backbone is probed on the same few-shot subsets of the target pool and
the same test split, so differences between backbones are not draw noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tlpipe import registry
from tlpipe.data import storage
from tlpipe.evaluation import metrics
from tlpipe.finetuning import fixmatch, lora, regularizers  # noqa: F401 (the methods the registry names: in the keys of what fine-tunes)
from tlpipe.training import inference, loops, models
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
    pool_f = inference.extract_features(backbone, pool[0], batch_size=batch_size, device=device)
    test_f = inference.extract_features(backbone, test[0], batch_size=batch_size, device=device)
    rows = []
    for shots, shot_draws in draws.items():
        accs = metrics.few_shot_probe(pool_f, pool[1], test_f, test[1], shot_draws)
        rows += [{"backbone": name, "shots": shots, "draw": i, "accuracy": a} for i, a in enumerate(accs)]
    return rows


def transferability_of(backbone, train, *, classifier_dir: Path | None, batch_size: int, device: torch.device) -> dict:
    """LogME, H-score and TMI of `backbone`'s features on the labeled target train split (no fine-tuning);
    LEEP and NCE too when `classifier_dir` holds a source classifier (a supervised teacher's model/)."""
    features = inference.extract_features(backbone, train[0], batch_size=batch_size, device=device)
    probs = None
    if classifier_dir is not None and Path(classifier_dir).is_dir():
        logits = inference.predict_logits(models.load_classifier(classifier_dir), train[0], batch_size=batch_size,
                                      device=device)
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    return transferability_scores(features, train[1], source_probs=probs)


def finetuned_accuracy(backbone, train, test, recipe: dict, num_classes: int, device: torch.device,
                       unlabeled=None) -> float:
    """Test accuracy of `backbone` fine-tuned on the target train split with the finetune params' recipe
    (`unlabeled`: the target's unlabeled images, for a method that trains on them)."""
    model, _ = loops.finetune(backbone, *train, num_classes=num_classes, method=recipe["method"],
                              method_params=registry.finetune_method_params(recipe),
                              epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                              weight_decay=recipe["weight_decay"], seed=recipe["seed"], device=device,
                              unlabeled=unlabeled)
    logits = inference.predict_logits(model, test[0], batch_size=256, device=device)
    return float((logits.argmax(1) == test[1]).mean())


