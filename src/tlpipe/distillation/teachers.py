"""Which teachers a student learns from, and how much from each.

- Weights (Borup et al., "Distilling from Similar Tasks for Transfer Learning on a Budget", ICCV
  2023): each teacher's LogME on the labelled target images, turned into DistillNearest (one-hot on
  the best) or DistillWeighted (softmax of the standardised scores) weights.
- Selection: `size` of the candidates, by OSBORN (`tlpipe.transferability.osborn`) or the top by LogME.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tlpipe.checks import check_temperature
from tlpipe.registry import TEACHER_SELECTION
from tlpipe.training.inference import extract_features
from tlpipe.transferability import osborn
from tlpipe.transferability._arrays import as_array
from tlpipe.transferability.evidence import logme

WEIGHT_MODES = ("nearest", "weighted")


def teacher_weights(scores, *, temperature: float, mode: str) -> np.ndarray:
    """Per-teacher distillation weights from transferability scores (Borup et al. 2023).

    "weighted" (DistillWeighted): the scores are standardised to zero mean and unit (population)
    standard deviation, z, and the weights are softmax(z / temperature); equal scores or a single
    teacher give uniform weights. "nearest" (DistillNearest): a one-hot on the best score, the
    lowest index on ties.

    Args:
        scores: [T] finite scores, higher = more relevant teacher (e.g. LogME per teacher).
        temperature: softmax temperature (> 0, finite); smaller concentrates the weights.
        mode: one of "nearest", "weighted".

    Returns:
        float64 [T] non-negative weights summing to 1.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}, got {mode!r}")
    check_temperature("temperature", temperature)
    scores = as_array(scores, np.float64)
    if scores.ndim != 1 or scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError(f"scores must be a non-empty 1-D array of finite values, got {scores!r}")
    if mode == "nearest":
        return np.eye(scores.size)[int(np.argmax(scores))]
    if np.ptp(scores) == 0:  # also covers one teacher: nothing to standardise
        return np.full(scores.size, 1.0 / scores.size)
    z = (scores - scores.mean()) / scores.std() / float(temperature)
    weights = np.exp(z - z.max())
    return weights / weights.sum()


def weigh_teachers(teachers: dict[str, nn.Module], images: np.ndarray | None, labels: np.ndarray | None, *,
                   mode: str = "weighted", temperature: float = 1.0,
                   device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, dict]:
    """(weights, {teacher: {"logme", "weight"}}): each teacher's LogME on the labeled target images,
    turned into weights (`teacher_weights`). A single teacher gets
    weight 1 and no score (`images` and `labels` are then not read)."""
    if len(teachers) == 1:
        return np.ones(1), {name: {"weight": 1.0} for name in teachers}
    scores = [logme(extract_features(t, images, batch_size=256, device=device), labels) for t in teachers.values()]
    weights = teacher_weights(np.array(scores), temperature=temperature, mode=mode)
    return weights, {name: {"logme": float(s), "weight": float(w)} for name, s, w in zip(teachers, scores, weights)}


def select_teachers(teachers: dict[str, nn.Module], target: tuple[np.ndarray, np.ndarray], source, source_labels, *,
                    select: str, size: int, seed: int, device: torch.device,
                    max_samples: int = 2000) -> tuple[dict[str, nn.Module], dict]:
    """`size` of the candidate teachers, chosen by OSBORN or as the top by LogME (the baseline).

    OSBORN (`tlpipe.transferability.osborn`) measures every candidate on the same data: the labelled target train
    images and a seeded class-balanced sample of at most `max_samples` source images with their labels
    (every candidate here is taken as a model of this source; the transported source class stands for
    a source head's prediction). Each candidate's LogME on the target train images is recorded too.

    Args:
        teachers: name -> backbone, the candidates.
        target: (uint8 images [N_t, C, H, W], labels [N_t]) labelled target train images.
        source: uint8 [N_s, C, H, W] source images (an array or a set read by index).
        source_labels: int [N_s] their classes.
        select: one of registry.TEACHER_SELECTION ("osborn", "logme").
        size: teachers to keep, 1..len(teachers).
        seed: the source sample.
        device: where features are computed.

    Returns:
        (the chosen teachers in pick order, record: select, chosen, candidates {name: logme (and the
        OSBORN terms)}, and the selector's per-step gains).
    """
    if select not in TEACHER_SELECTION:
        raise ValueError(f"select={select!r} is unknown; valid options: {', '.join(TEACHER_SELECTION)}")
    images, labels = target
    target_features = {name: extract_features(t, images, batch_size=256, device=device) for name, t in teachers.items()}
    scores = {name: float(logme(f, labels)) for name, f in target_features.items()}
    candidates = {name: {"logme": score} for name, score in scores.items()}
    if select == "logme":
        chosen, steps = osborn.select_top_k(scores, size)
    else:
        source_labels = np.asarray(source_labels)
        rows = osborn.balanced_sample(len(source), source_labels, max_samples, seed)
        sample = source[rows]
        pool = [osborn.CandidateFeatures(name, target_features[name],
                                         extract_features(t, sample, batch_size=256, device=device),
                                         source_labels[rows]) for name, t in teachers.items()]
        chosen, steps = osborn.select_osborn(pool, size, target_labels=labels, seed=seed)
        for k, name in enumerate(steps.pop("names")):
            candidates[name].update({term: steps[term][k] for term in ("domain", "task")})
        steps.pop("domain"), steps.pop("task")
    return {name: teachers[name] for name in chosen}, {"select": select, "size": size, "chosen": chosen,
                                                        "candidates": candidates, **steps}
