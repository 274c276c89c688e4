"""Transferability estimates: how well a frozen model suits a labelled target set, without fine-tuning.

LogME (`evidence`), LEEP and NCE (`source_labels`), H-score (`hscore`) and TMI (`coding_rate`), one
module each, sharing their input checks (`_arrays`); OSBORN's choice of an ensemble (`osborn`).
Everything is float64 numpy; inputs may be numpy arrays or (CPU) torch tensors. They are tested
together against one reference fixture set (TMI, which has no reference fixture, against a
brute-force estimate).
"""

from __future__ import annotations

import numpy as np

from tlpipe.transferability._arrays import as_array, as_probs
from tlpipe.transferability.coding_rate import TMI_EPS_SQ, tmi
from tlpipe.transferability.evidence import logme, logme_per_class
from tlpipe.transferability.hscore import h_score
from tlpipe.transferability.source_labels import leep, nce

__all__ = ["TMI_EPS_SQ", "h_score", "leep", "logme", "logme_per_class", "nce", "tmi", "transferability_scores"]


def transferability_scores(features, labels, source_probs=None) -> dict[str, float]:
    """LogME, H-score and TMI of `features`, plus LEEP and NCE when source probabilities are given.

    Args:
        features: [N, D] features of the model under test.
        labels: [N] target class ids; C_t = max + 1 and every class must occur.
        source_probs: optional [N, C_s] source-classifier probabilities; NCE uses their argmax.

    Returns:
        dict with `logme`, `h_score`, `tmi` and, with source_probs, `leep` and `nce`.
    """
    scores = {"logme": logme(features, labels), "h_score": h_score(features, labels), "tmi": tmi(features, labels)}
    if source_probs is not None:
        probs = as_probs(source_probs, as_array(features).shape[0])
        scores["leep"] = leep(probs, labels)
        scores["nce"] = nce(np.argmax(probs, axis=1), labels)
    return scores
