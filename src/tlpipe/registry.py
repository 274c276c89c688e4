"""The families of methods, each declared once: params validation, the stage code and the library's
dispatch all read these tables. Plain data, so checking params imports no torch: an entry names its
implementation as "module:function", imported only when `load` is called.

A pruning method also names the inputs it reads (keywords of `tlpipe.pruning.select`), so the `prune`
stage computes exactly those: `logits` (the supervised surrogate's source-class logits on the target
train images), `target_labels`, `target_features` / `source_features` (the surrogate's embeddings),
and `el2n_norms_per_model` / `grad_norms_per_model` (short trainings of the surrogate's architecture on
the source, Paul et al. 2021: one number per image and model, so they scale with the source).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

CLASS, SAMPLE = "class", "sample"


@dataclass(frozen=True)
class PruningMethod:
    level: str  # CLASS: keeps whole source classes (or groups); SAMPLE: keeps single images
    needs: tuple[str, ...]
    summary: str
    impl: str  # "module:function" taking (pruning.methods.Inputs, *, ratio, seed)


def _pruning(function: str) -> str:
    return f"tlpipe.pruning.methods:{function}"


PRUNING: dict[str, PruningMethod] = {
    "lm": PruningMethod(CLASS, ("logits",), "label mapping (DP4TL): the classes the target images vote for",
                        _pruning("lm")),
    "lm_bottom": PruningMethod(CLASS, ("logits",), "the least-voted classes (ablation)", _pruning("lm_bottom")),
    "lm_soft": PruningMethod(CLASS, ("logits",), "label mapping with softmax votes", _pruning("lm_soft")),
    "lm_balanced": PruningMethod(CLASS, ("logits", "target_labels"),
                                 "label mapping, round robin over target classes", _pruning("lm_balanced")),
    "random": PruningMethod(CLASS, (), "random classes (baseline)", _pruning("random_classes")),
    "fm": PruningMethod(CLASS, ("target_features", "source_features"),
                        "feature mapping (DP4TL): groups nearest to the target features", _pruning("fm")),
    "random_samples": PruningMethod(SAMPLE, (), "random images (baseline)", _pruning("random_samples")),
    "fm_samples": PruningMethod(SAMPLE, ("target_features", "source_features"),
                                "images nearest to the target features", _pruning("fm_samples")),
    "el2n": PruningMethod(SAMPLE, ("el2n_norms_per_model",), "EL2N: the hardest images early in training",
                          _pruning("el2n")),
    "grand": PruningMethod(SAMPLE, ("grad_norms_per_model",),
                           "GraNd: the largest gradient norms early in training", _pruning("grand")),
    "moderate": PruningMethod(SAMPLE, ("source_features",),
                              "moderate coreset: images at the median distance", _pruning("moderate")),
}
CLASS_METHODS = tuple(name for name, m in PRUNING.items() if m.level == CLASS)
SAMPLE_METHODS = tuple(name for name, m in PRUNING.items() if m.level == SAMPLE)


def load(implementation: str) -> Any:
    """The object a "module:function" entry names, imported now."""
    module, _, name = implementation.partition(":")
    return getattr(importlib.import_module(module), name)


def pruning_method(name: str) -> PruningMethod:
    if name not in PRUNING:
        raise ValueError(f"method must be one of {', '.join(PRUNING)}, got {name!r}")
    return PRUNING[name]


# Self-supervised distillation of the teacher into the student: objectives between the two
# (tlpipe.distillation.representation), or, for DATASET_DISTILLATION, the source distilled into a few
# synthetic images that the student then learns from (tlpipe.distillation.krr_st).
@dataclass(frozen=True)
class DistillationMethod:
    summary: str
    # "module:class" of one teacher's objective (loss and memory, an nn.Module taking (dim, *, queue_size,
    # tau_s, tau_t, seed)); None for dataset distillation, which has its own loop
    objective: str | None = None


DISTILLATION: dict[str, DistillationMethod] = {
    "seed": DistillationMethod("SEED (Fang et al., ICLR 2021): the teacher's similarity distribution over a queue",
                               "tlpipe.distillation.seed:SeedObjective"),
    "compress": DistillationMethod("CompRess (Abbasi Koohpayegani et al., NeurIPS 2020): two memory banks",
                                   "tlpipe.distillation.compress:CompressObjective"),
    "mse": DistillationMethod("regression of the teacher's normalised embedding",
                              "tlpipe.distillation.mse:MseObjective"),
    "krr_st": DistillationMethod("KRR-ST (Lee et al., ICLR 2024): the source distilled into synthetic images with "
                                 "learned targets"),
}
DATASET_DISTILLATION = tuple(name for name, m in DISTILLATION.items() if m.objective is None)
KRR_ST_INITS = ("random", "kmeans")  # how KRR-ST's synthetic images are first drawn from the real ones

# How `distill.teachers: {select: ..., from: [...], size: k}` picks k teachers out of candidates.
TEACHER_SELECTION: dict[str, str] = {
    "osborn": "OSBORN (ICCV 2023): domain and task difference and the team's coherence, greedily",
    "logme": "the k best by LogME on the target train split (baseline)",
}


@dataclass(frozen=True)
class SourceMode:
    labels: bool  # trains a classifier on the source labels (else self-supervised, labels unused)
    surrogate: bool  # available to the surrogate (pruning needs its classifier or its features)
    summary: str


SOURCE_MODES: dict[str, SourceMode] = {
    "supervised": SourceMode(True, True, "a classifier on the source labels"),
    "simclr": SourceMode(False, True, "SimCLR (Chen et al., ICML 2020): contrastive, two views per image"),
    "byol": SourceMode(False, False, "BYOL (Grill et al., NeurIPS 2020): a target network, no negatives"),
}


# Fitting the target classifier on the labeled target split (tlpipe.training.loops.finetune).
@dataclass(frozen=True)
class FinetuneMethod:
    trains_backbone: bool  # else a linear head on the frozen backbone's features
    summary: str
    # "module:class" of the penalty added to the loss, made as cls(classifier, **its params); None: none
    regularizer: str | None = None
    params: tuple[str, ...] = ()  # the keys of its params section (params/finetune.yaml: <method>: {...})
    # "module:class" of an objective on the target's unlabeled images, made as cls(images, **its params)
    unlabeled: str | None = None
    # a module whose add(classifier, **its params) puts trainable adapters on the frozen backbone and
    # merge(classifier) folds them back into its weights after training
    adapter: str | None = None


FINETUNING: dict[str, FinetuneMethod] = {
    "linear": FinetuneMethod(False, "a linear head on the frozen backbone's features"),
    "full": FinetuneMethod(True, "the backbone and a new head trained together"),
    "l2sp": FinetuneMethod(True, "L2-SP (Li et al., ICML 2018): weights pulled towards the pretrained ones",
                           "tlpipe.finetuning.regularizers:L2SP", ("alpha", "beta")),
    "bss": FinetuneMethod(True, "BSS (Chen et al., NeurIPS 2019): the smallest singular values of the features "
                          "shrunk", "tlpipe.finetuning.regularizers:BatchSpectralShrinkage", ("eta", "k")),
    "fixmatch": FinetuneMethod(True, "FixMatch (Sohn et al., NeurIPS 2020): confident predictions on weak views of "
                               "the unlabeled target images as labels for their strong views",
                               params=("threshold", "mu", "lambda_u", "flip"),
                               unlabeled="tlpipe.finetuning.fixmatch:FixMatch"),
    "lora": FinetuneMethod(True, "LoRA (Hu et al., ICLR 2022) through peft: low-rank adapters on the frozen "
                           "backbone, merged into it after training", params=("r", "alpha", "dropout"),
                           adapter="tlpipe.finetuning.lora"),
}


def finetune_method_params(params: dict) -> dict:
    """The own params of the finetune params' `method` (its section, e.g. `l2sp: {alpha, beta}`); {} for
    a method that takes none."""
    method = FINETUNING[params["method"]]
    return {key: params[params["method"]][key] for key in method.params if key in (params.get(params["method"]) or {})}
