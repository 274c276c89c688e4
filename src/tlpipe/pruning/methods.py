"""The implementation of each pruning method of `registry.PRUNING` (its `impl`): one function a method,
each taking the inputs (`Inputs`) and giving the selection. `tlpipe.pruning.select` looks a method up
and calls it; nothing else chooses among methods.

A method checks that the inputs it reads are there (`Inputs.need`), so a missing one is named in one
line; inputs it does not read are ignored, so a caller may pass what it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlpipe.pruning.feature_mapping import select_groups_feature_mapping, select_samples_feature_mapping
from tlpipe.pruning.label_mapping import (
    _as_numpy_logits,
    select_classes_balanced,
    select_classes_label_mapping,
    select_classes_least_voted,
    select_classes_soft_votes,
)
from tlpipe.pruning.scores import (
    select_samples_el2n,
    select_samples_el2n_norms,
    select_samples_grand,
    select_samples_moderate,
)
from tlpipe.pruning.selection import ClassSelection, SampleSelection, select_classes_random, select_samples_random


@dataclass(frozen=True)
class Inputs:
    """What a pruning method may read (registry.py's module docstring says where each comes from), for
    the method named `method`."""

    method: str
    logits: Any = None  # [N_target, C] surrogate logits on the target TRAIN images
    num_classes: int | None = None  # C, for the random baseline
    target_labels: Any = None  # [N_target] target classes
    target_features: Any = None  # [N_target, D] target TRAIN features
    source_features: Any = None  # [N_source, D] source features
    source_labels: Any = None  # [N_source] source classes (FM's groups, else k-means groups)
    num_clusters: int | None = None  # k of FM's k-means groups when source_labels is None
    num_samples: int | None = None  # N, for the random baseline
    logits_per_model: Any = None  # one [N_source, C] logits array per model (EL2N)
    el2n_norms_per_model: Any = None  # one [N_source] el2n_norms array per model (EL2N without the logits)
    grad_norms_per_model: Any = None  # one [N_source] per_sample_grad_norms array per model (GraNd)

    def need(self, *names: str) -> None:
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"method {self.method!r} needs {', '.join(missing)}")


def lm(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    x.need("logits")
    return select_classes_label_mapping(x.logits, ratio=ratio)


def lm_bottom(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    x.need("logits")
    return select_classes_least_voted(x.logits, ratio=ratio)


def lm_soft(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    x.need("logits")
    return select_classes_soft_votes(x.logits, ratio=ratio)


def lm_balanced(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    x.need("logits", "target_labels")
    return select_classes_balanced(x.logits, x.target_labels, ratio=ratio)


def random_classes(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    num_classes = x.num_classes
    if num_classes is None:
        if x.logits is None:
            raise ValueError(f"method {x.method!r} needs num_classes (or logits to infer it)")
        num_classes = _as_numpy_logits(x.logits).shape[1]
    return select_classes_random(num_classes, ratio=ratio, seed=seed)


def fm(x: Inputs, *, ratio: float, seed: int) -> ClassSelection:
    x.need("target_features", "source_features")
    return select_groups_feature_mapping(x.target_features, x.source_features, x.source_labels,
                                         num_clusters=x.num_clusters, ratio=ratio, seed=seed)


def random_samples(x: Inputs, *, ratio: float, seed: int) -> SampleSelection:
    x.need("num_samples")
    return select_samples_random(x.num_samples, ratio=ratio, seed=seed)


def fm_samples(x: Inputs, *, ratio: float, seed: int) -> SampleSelection:
    x.need("target_features", "source_features")
    return select_samples_feature_mapping(x.target_features, x.source_features, ratio=ratio)


def el2n(x: Inputs, *, ratio: float, seed: int) -> SampleSelection:
    if x.el2n_norms_per_model is not None:
        return select_samples_el2n_norms(x.el2n_norms_per_model, ratio=ratio)
    if x.logits_per_model is None:
        raise ValueError(f"method {x.method!r} needs el2n_norms_per_model (or logits_per_model and source_labels)")
    x.need("source_labels")
    return select_samples_el2n(x.logits_per_model, x.source_labels, ratio=ratio)


def grand(x: Inputs, *, ratio: float, seed: int) -> SampleSelection:
    x.need("grad_norms_per_model")
    return select_samples_grand(x.grad_norms_per_model, ratio=ratio)


def moderate(x: Inputs, *, ratio: float, seed: int) -> SampleSelection:
    x.need("source_features", "source_labels")
    return select_samples_moderate(x.source_features, x.source_labels, ratio=ratio)
