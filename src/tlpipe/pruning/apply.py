"""A selection applied to the source: the kept images, and the per-class table that shows what was
kept and why."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlpipe.pruning.feature_mapping import FeatureMapping
from tlpipe.pruning.selection import ClassSelection, kept_sample_indices


def kept_indices(selection, source_labels: np.ndarray) -> np.ndarray:
    """Positions of the kept source train images, ascending."""
    if isinstance(selection, FeatureMapping):
        return np.flatnonzero(np.isin(selection.groups, selection.kept)).astype(np.int64)
    if isinstance(selection, ClassSelection):
        return kept_sample_indices(source_labels, selection.kept)
    return np.asarray(selection.kept, dtype=np.int64)


def ranks_source_classes(selection, source_labels: np.ndarray) -> bool:
    """True when the selection ranked source classes (not k-means groups or single images)."""
    if isinstance(selection, FeatureMapping):
        return np.array_equal(selection.groups, source_labels)
    return isinstance(selection, ClassSelection)


def class_table(selection, source_labels: np.ndarray, kept: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One row per source class: kept images out of all, and the rank and votes when the method
    ranked classes; most preferred (or most kept) first."""
    ids = np.arange(len(class_names))
    table = pd.DataFrame({"class_id": ids, "name": class_names,
                          "images": np.bincount(source_labels, minlength=len(ids)),
                          "kept_images": np.bincount(source_labels[kept], minlength=len(ids))})
    if ranks_source_classes(selection, source_labels):
        rank = np.empty(len(ids), dtype=np.int64)
        rank[selection.ranking] = ids
        table["rank"] = rank
        if selection.votes is not None:
            table["votes"], table["psum"] = selection.votes, selection.psum
        return table.sort_values("rank", kind="stable")
    return table.sort_values(["kept_images", "class_id"], ascending=[False, True], kind="stable")
