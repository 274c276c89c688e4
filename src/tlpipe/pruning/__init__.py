"""Target-aware source pruning, at class (group) level and at sample level.

Class level follows DP4TL (Zhang et al., "Selectivity Drives Productivity: Efficient Dataset Pruning
for Enhanced Transfer Learning", NeurIPS 2023, Sec. 4): label mapping (LM) keeps the source classes
a surrogate classifier maps the target training images to, feature mapping (FM) keeps the source
groups whose centroids the target features fall nearest to. Ablations (least voted, soft votes,
class-balanced votes) and a random baseline sit beside them. Sample level provides the baselines
DP4TL compares against: random, nearest-to-target FM, EL2N and GraNd (Paul et al., NeurIPS 2021)
and moderate coreset (Xia et al., ICLR 2023).
"""

from __future__ import annotations

from tlpipe.registry import CLASS_METHODS, SAMPLE_METHODS, load, pruning_method
from tlpipe.pruning.apply import class_table, kept_indices, ranks_source_classes
from tlpipe.pruning.feature_mapping import (
    FeatureMapping,
    group_centroids,
    map_features_to_groups,
    nearest_target_scores,
    select_groups_feature_mapping,
    select_samples_feature_mapping,
)
from tlpipe.pruning.kmeans import kmeans, nearest, squared_distances
from tlpipe.pruning.label_mapping import (
    count_label_votes,
    select_by_votes,
    select_classes_balanced,
    select_classes_label_mapping,
    select_classes_least_voted,
    select_classes_soft_votes,
)
from tlpipe.pruning.methods import Inputs
from tlpipe.pruning.scores import (
    el2n_norms,
    el2n_scores,
    grand_scores,
    moderate_scores,
    per_sample_grad_norms,
    select_samples_el2n,
    select_samples_el2n_norms,
    select_samples_grand,
    select_samples_moderate,
)
from tlpipe.pruning.selection import (
    ClassSelection,
    SampleSelection,
    kept_sample_indices,
    num_kept,
    num_kept_samples,
    rank_classes,
    rank_classes_by_psum,
    rank_classes_least_voted,
    select_classes_random,
    select_samples_random,
    select_top_samples,
)


def select(method: str, *, ratio: float, seed: int, **inputs) -> ClassSelection | SampleSelection:
    """The selection of `method`, a name of `registry.PRUNING`, by one lookup: its implementation
    (`impl`, in tlpipe.pruning.methods) given the `inputs` that are not None, by the names
    `select_classes` and `select_samples` document (the entry's `needs` lists those it reads)."""
    given = Inputs(method, **{name: value for name, value in inputs.items() if value is not None})
    return load(pruning_method(method).impl)(given, ratio=ratio, seed=seed)


def _of_family(method: str, methods: tuple[str, ...]) -> str:
    if method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, got {method!r}")
    return method


def select_classes(
    method: str,
    *,
    ratio: float,
    seed: int,
    logits=None,
    num_classes: int | None = None,
    target_labels=None,
    target_features=None,
    source_features=None,
    source_labels=None,
    num_clusters: int | None = None,
) -> ClassSelection:
    """Selects source classes (groups) by a class-level method.

    Args:
        method: one of `CLASS_METHODS`: "lm", "lm_bottom", "lm_soft" (need `logits`),
            "lm_balanced" (`logits`, `target_labels`), "random" (`num_classes`, or `logits` to
            infer it), "fm" (`target_features`, `source_features`, and `source_labels` or
            `num_clusters`).
        ratio: fraction of source classes (groups) to drop, in [0, 1).
        seed: seed for the random baseline and FM's k-means; LM is deterministic and ignores it.
        logits: [N_target, C] surrogate logits on the target TRAIN images.
        num_classes: C, for the random baseline.
        target_labels: [N_target] target classes, for "lm_balanced".
        target_features: [N_target, D] target TRAIN features, for "fm".
        source_features: [N_source, D] source features, for "fm".
        source_labels: [N_source] source classes: FM's groups (else k-means groups).
        num_clusters: k for FM's k-means groups, when `source_labels` is None.

    Returns:
        A `ClassSelection`; for "fm" a `FeatureMapping`, which also holds the groups.
    """
    return select(_of_family(method, CLASS_METHODS), ratio=ratio, seed=seed,
        logits=logits, num_classes=num_classes, target_labels=target_labels, target_features=target_features,
        source_features=source_features, source_labels=source_labels, num_clusters=num_clusters)


def select_samples(
    method: str,
    *,
    ratio: float,
    seed: int = 0,
    num_samples: int | None = None,
    target_features=None,
    source_features=None,
    source_labels=None,
    logits_per_model=None,
    el2n_norms_per_model=None,
    grad_norms_per_model=None,
) -> SampleSelection:
    """Selects source samples by a sample-level method.

    Args:
        method: one of `SAMPLE_METHODS`: "random_samples" (`num_samples`), "fm_samples"
            (`target_features`, `source_features`), "el2n" (`el2n_norms_per_model`, or `logits_per_model`
            and `source_labels`),
            "grand" (`grad_norms_per_model`), "moderate" (`source_features`, `source_labels`).
        ratio: fraction of source samples to drop, in [0, 1).
        seed: seed for the random baseline.
        num_samples: N, for the random baseline.
        target_features: [N_target, D] target TRAIN features.
        source_features: [N_source, D] source features.
        source_labels: [N_source] source class ids.
        logits_per_model: one [N_source, C] logits array per model, for EL2N.
        el2n_norms_per_model: one [N_source] `el2n_norms` array per model, for EL2N (what the logits
            give, without holding them).
        grad_norms_per_model: one [N_source] `per_sample_grad_norms` array per model, for GraNd.

    Returns:
        A `SampleSelection`.
    """
    return select(_of_family(method, SAMPLE_METHODS), ratio=ratio, seed=seed,
        num_samples=num_samples, target_features=target_features, source_features=source_features,
        source_labels=source_labels, logits_per_model=logits_per_model, el2n_norms_per_model=el2n_norms_per_model,
        grad_norms_per_model=grad_norms_per_model)


__all__ = [
    "CLASS_METHODS", "SAMPLE_METHODS", "ClassSelection", "FeatureMapping", "SampleSelection", "class_table",
    "kept_indices", "ranks_source_classes", "count_label_votes", "el2n_norms", "el2n_scores", "grand_scores",
    "group_centroids", "kept_sample_indices", "kmeans", "map_features_to_groups", "moderate_scores",
    "nearest", "nearest_target_scores", "num_kept", "num_kept_samples", "per_sample_grad_norms",
    "rank_classes", "rank_classes_by_psum", "rank_classes_least_voted", "select", "select_by_votes",
    "select_classes", "select_classes_balanced", "select_classes_label_mapping", "select_classes_least_voted",
    "select_classes_random", "select_classes_soft_votes", "select_groups_feature_mapping", "select_samples",
    "select_samples_el2n", "select_samples_el2n_norms", "select_samples_feature_mapping",
    "select_samples_grand", "select_samples_moderate", "select_samples_random", "select_top_samples",
    "squared_distances",
]
