"""OSBORN: greedy choice of a source-model ensemble by a submodular transferability estimate.

K B, Bachu, Garg, Lakshmi Narasimhan, Konuru, Balasubramanian, "Building a Winning Team: Selecting
Source Model Ensembles using a Submodular Transferability Estimation Approach", ICCV 2023
(arXiv 2309.02429). An ensemble S costs W_D + W_T + W_C (Eq. 8); greedy maximises f(S) = -cost (Eq. 9).
- W_D, domain difference (Eq. 3): sum_ij pi*_ij ||x_t^i - x_s^j||^2, the optimal-transport cost between
  the target set and a sample of the model's source data, both in the model's feature space (called
  1-Wasserstein / EMD in the paper; with this squared ground cost it is W_2^2, as OTCE computes it).
- W_T, task difference (Eq. 4-6): conditional entropy of the label joint P(y_t, y_s) = coupling mass
  between target class y_t and source class y_s (Eq. 5), as in OTCE (Tan et al., CVPR 2021). We keep
  OTCE's H(Y_t | Y_s); the prose of Eq. 4 conditions on Y_t instead, which would score a one-class
  source as perfect. A source without labels (self-supervised) counts as one class, so W_T = H(Y_t):
  its source task tells nothing about the target labels, the worst value (and, without a head, it
  predicts that one class, so its W_C with a partner is the partner's prediction entropy).
- W_C, model cohesion (Eq. 7): conditional entropy between members' predicted source classes on the
  same target samples; per pair we add both directions, H(a | b) + H(b | a) (variation of information,
  0 for identical predictors). Predictions are `target_predictions` (the source head's argmax, as in the
  paper) or, without a head, the source class receiving most of each target sample's mass. Nats.
Choices: the coupling is exact EMD (`ot.emd`, uniform weights), as in the paper's main ("standard",
App. F) results; "sinkhorn" (Sec. 4) and "frobenius" (App. F, reg/2 ||pi||_F^2 by conditional gradient)
take a relative `reg` (see `domain_difference`). App. G uses a class-balanced sample of 5000; we default
to 2000 per side (EMD ~1 s per model), class-balanced when labelled, seeded, one target sample for all
models. App. G standardises the terms over the pool; we divide each by its population std over the pool
(W_C over all pairs) without subtracting the mean: the mean shifts f(S) by amounts fixed by |S|, so the
greedy picks and the order of equal-size sets are unchanged, and W_C stays >= 0, which Theorem 4.1 needs.
Weights default to 1 (Eq. 8); App. D's weights must be >= 0 (the cohesion one for Theorem 4.1).
Submodularity (Theorem 4.1, Eq. 10-12): adding v to S gains -(W_D^v + W_T^v) - sum_{u in S} W_C(u, v),
which only shrinks as S grows because W_C >= 0. The gains are also <= 0, so f is not monotone (the paper
says it is) and the 1 - 1/e bound (Eq. 14) does not formally apply; greedy picks exactly `size` models
(Eq. 13), the least costly at each step, ties by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot
from scipy.special import xlogy

from tlpipe.checks import check_temperature
from tlpipe.transferability._arrays import as_array, as_class_ids, as_features

OT_METHODS = ("emd", "sinkhorn", "frobenius")
EMD_MAX_ITER = 10_000_000  # network-simplex pivots; POT's default 100000 stops short at 2000 x 2000
SINKHORN_MAX_ITER = 10_000
CG_MAX_ITER = 100  # conditional-gradient steps of "frobenius" (each one an EMD)


@dataclass(frozen=True)
class CandidateFeatures:
    """One source model's view of the data (numpy arrays or CPU torch tensors).

    Attributes:
        name: unique name; selection ties are broken by it.
        target_features: [N_t, D] the model's features of the shared labelled target set.
        source_features: [N_s, D] its features of a sample of its own source data.
        source_labels: [N_s] source class ids, or None (self-supervised source: W_T = H(Y_t)).
        target_predictions: [N_t] its source head's argmax on the target set, or None (from the coupling).
    """

    name: str
    target_features: object
    source_features: object
    source_labels: object = None
    target_predictions: object = None


@dataclass(frozen=True)
class OsbornTerms:
    """Unscaled terms of a pool: `names` sorted, `domain`, `task` [M], `cohesion` [M, M] (zero diagonal)."""

    names: tuple[str, ...]
    domain: np.ndarray
    task: np.ndarray
    cohesion: np.ndarray


def _entropy(mass: np.ndarray) -> float:
    p = mass.ravel() / mass.sum()
    return float(-xlogy(p, p).sum())


def balanced_sample(n: int, labels: np.ndarray | None, size: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `size` of n samples, class-balanced (round robin) when labelled."""
    if n <= size:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    if labels is None:
        return np.sort(perm[:size])
    lab = labels[perm]
    counts = np.bincount(lab)
    rank = np.empty(n, np.int64)  # position of each permuted sample within its class
    rank[np.argsort(lab, kind="stable")] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.sort(perm[np.argsort(rank, kind="stable")[:size]])


def _check_method(method: str, reg: float) -> None:
    if method not in OT_METHODS:
        raise ValueError(f"method must be one of {OT_METHODS}, got {method!r}")
    check_temperature("reg", reg)


def domain_difference(target_features, source_features, *, method: str = "emd", reg: float = 0.1):
    """W_D (Eq. 3) and the coupling pi* [N_t, N_s] with uniform marginals that it comes from.

    Args:
        target_features: [N_t, D] target features.
        source_features: [N_s, D] source features of the same model.
        method: one of "emd", "sinkhorn", "frobenius".
        reg: > 0, relative to the mean ground cost C: sinkhorn's epsilon = reg * mean(C); frobenius's
            lambda = reg * mean(C) * N_t * N_s (its gradient at the uniform plan is reg * mean(C)).

    Returns:
        (sum_ij pi*_ij ||t_i - s_j||^2, pi*).
    """
    _check_method(method, reg)
    xt, xs = as_features(target_features, "target_features"), as_features(source_features, "source_features")
    if xt.shape[1] != xs.shape[1]:
        raise ValueError(f"target_features and source_features need one D, got {xt.shape[1]} and {xs.shape[1]}")
    cost = ot.dist(xt, xs)  # squared Euclidean
    a, b = ot.unif(xt.shape[0]), ot.unif(xs.shape[0])
    reg = float(reg) * max(float(cost.mean()), np.finfo(np.float64).tiny)
    if method == "emd":
        plan = ot.emd(a, b, cost, numItermax=EMD_MAX_ITER)
    elif method == "sinkhorn":
        plan = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", numItermax=SINKHORN_MAX_ITER)
    else:
        plan = ot.optim.cg(a, b, cost, reg * cost.size, lambda g: 0.5 * (g**2).sum(), lambda g: g,
                           numItermax=CG_MAX_ITER, numItermaxEmd=EMD_MAX_ITER)
    return float((plan * cost).sum()), plan


def task_difference(plan, target_labels, source_labels=None) -> float:
    """W_T = H(Y_t | Y_s) in nats from the coupling's label joint (Eq. 4-6, OTCE's direction).

    Args:
        plan: [N_t, N_s] coupling from `domain_difference`.
        target_labels: [N_t] target class ids.
        source_labels: [N_s] source class ids, or None: one source class, so W_T = H(Y_t).

    Returns:
        W_T >= 0; 0 when each source class sends all its mass to one target class.
    """
    plan = as_array(plan, np.float64)
    if plan.ndim != 2 or not np.isfinite(plan).all() or plan.min() < 0 or plan.sum() <= 0:
        raise ValueError(f"plan must be a finite non-negative [N_t, N_s] coupling with mass > 0, got {plan.shape}")
    t = as_class_ids(target_labels, plan.shape[0], "target_labels")
    s = np.zeros(plan.shape[1], np.int64)
    if source_labels is not None:
        s = as_class_ids(source_labels, plan.shape[1], "source_labels")
    joint = np.eye(t.max() + 1)[t].T @ plan @ np.eye(s.max() + 1)[s]  # [C_t, C_s], Eq. 5
    return max(_entropy(joint) - _entropy(joint.sum(axis=0)), 0.0)  # H(Y_t, Y_s) - H(Y_s), Eq. 6


def cohesion(predictions_a, predictions_b) -> float:
    """W_C of a pair (Eq. 7): H(a | b) + H(b | a) = 2 H(a, b) - H(a) - H(b), in nats.

    Args:
        predictions_a: [N] class ids predicted by one model on the target samples.
        predictions_b: [N] class ids predicted by another on the same samples (its own label space).
    """
    a = as_class_ids(predictions_a, None, "predictions_a")
    b = as_class_ids(predictions_b, a.size, "predictions_b")
    _, pair_counts = np.unique(a * (b.max() + 1) + b, return_counts=True)
    return max(2 * _entropy(pair_counts) - _entropy(np.bincount(a)) - _entropy(np.bincount(b)), 0.0)


def osborn_terms(candidates, *, target_labels, max_samples: int = 2000, seed: int = 0,
                 method: str = "emd", reg: float = 0.1) -> OsbornTerms:
    """W_D and W_T of each candidate and W_C of each pair, on seeded class-balanced subsamples.

    Args:
        candidates: non-empty sequence of CandidateFeatures with unique names.
        target_labels: [N_t] target class ids, shared by every candidate.
        max_samples: most target and most source samples used (OT time and memory grow as N_t x N_s).
        seed: seed of the subsampling; one target subsample serves every candidate.
        method, reg: as in `domain_difference`.

    Returns:
        OsbornTerms with the candidates sorted by name.
    """
    _check_method(method, reg)
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
        raise ValueError(f"max_samples must be an integer >= 1, got {max_samples!r}")
    candidates = list(candidates)
    if not candidates or not all(isinstance(c, CandidateFeatures) for c in candidates):
        raise ValueError("candidates must be a non-empty sequence of CandidateFeatures")
    candidates.sort(key=lambda c: str(c.name))
    names = tuple(c.name for c in candidates)
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"candidate names must be unique non-empty strings, got {list(names)}")
    labels = as_class_ids(target_labels, None, "target_labels")
    checked = []
    for c in candidates:  # every input is checked before any transport is solved
        xt = as_features(c.target_features, f"{c.name}.target_features")
        xs = as_features(c.source_features, f"{c.name}.source_features")
        if xt.shape[0] != labels.size or xt.shape[1] != xs.shape[1]:
            raise ValueError(f"{c.name}: target_features must be [N_t = {labels.size}, D] with the D of "
                             f"source_features {xs.shape}, got {xt.shape}")
        ys, yp = c.source_labels, c.target_predictions
        ys = None if ys is None else as_class_ids(ys, xs.shape[0], f"{c.name}.source_labels")
        yp = None if yp is None else as_class_ids(yp, labels.size, f"{c.name}.target_predictions")
        checked.append((xt, xs, ys, yp))
    keep_t = balanced_sample(labels.size, labels, max_samples, seed)
    domain, task, predictions = [], [], []
    for xt, xs, ys, yp in checked:
        keep_s = balanced_sample(xs.shape[0], ys, max_samples, seed)
        ys = np.zeros(keep_s.size, np.int64) if ys is None else ys[keep_s]  # unlabelled: one class
        w_d, plan = domain_difference(xt[keep_t], xs[keep_s], method=method, reg=reg)
        domain.append(w_d)
        task.append(task_difference(plan, labels[keep_t], ys))
        # without a head: the source class receiving most of each target sample's mass (lowest id on ties)
        predictions.append(np.argmax(plan @ np.eye(ys.max() + 1)[ys], axis=1) if yp is None else yp[keep_t])
    pairs = np.zeros((len(names), len(names)))
    for i, j in zip(*np.triu_indices(len(names), 1)):
        pairs[i, j] = pairs[j, i] = cohesion(predictions[i], predictions[j])
    return OsbornTerms(names, np.array(domain), np.array(task), pairs)


def _scaled_terms(terms: OsbornTerms, weights, standardize: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """[M] weighted W_D + W_T, [M, M] weighted W_C, each over its pool std (App. G), and the stds."""
    w = as_array(weights, np.float64)
    if w.shape != (3,) or not np.isfinite(w).all() or w.min() < 0:
        raise ValueError(f"weights must be 3 finite values >= 0 (domain, task, cohesion), got {weights!r}")

    def scale(x):
        s = float(np.std(x)) if standardize and x.size else 0.0
        return s if s > 0 else 1.0  # a term constant over the pool changes no choice

    pair_values = terms.cohesion[np.triu_indices(len(terms.names), 1)]
    scales = {"domain": scale(terms.domain), "task": scale(terms.task), "cohesion": scale(pair_values)}
    unary = w[0] * terms.domain / scales["domain"] + w[1] * terms.task / scales["task"]
    return unary, w[2] * terms.cohesion / scales["cohesion"], scales


def _as_terms(pool, term_options: dict) -> OsbornTerms:
    if not isinstance(pool, OsbornTerms):
        return osborn_terms(pool, **term_options)
    if term_options:
        raise ValueError(f"{sorted(term_options)} apply only when pool is a sequence of CandidateFeatures")
    return pool


def osborn_score(pool, subset, *, weights=(1.0, 1.0, 1.0), standardize: bool = True, **term_options) -> float:
    """f(subset) = -(scaled W_D + W_T summed over members + scaled W_C summed over member pairs) (Eq. 9).

    Args:
        pool: OsbornTerms, or a sequence of CandidateFeatures plus `target_labels=` and any other
            `osborn_terms` option; the scales come from the whole pool.
        subset: distinct candidate names (the empty set scores 0).
        weights: (domain, task, cohesion) weights >= 0 (App. D).
        standardize: divide each term by its population std over the pool (App. G).

    Returns:
        f; higher means a better expected ensemble.
    """
    terms = _as_terms(pool, term_options)
    index = {name: i for i, name in enumerate(terms.names)}
    subset = list(subset)
    if len(set(subset)) != len(subset) or not set(subset) <= set(index):
        raise ValueError(f"subset must hold distinct names from {list(terms.names)}, got {subset}")
    unary, pair, _ = _scaled_terms(terms, weights, standardize)
    idx = [index[name] for name in subset]
    return float(-(unary[idx].sum() + pair[np.ix_(idx, idx)].sum() / 2)) + 0.0  # + 0.0: no -0.0


def _check_size(size, n: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= n:
        raise ValueError(f"size must be an integer in 1..{n} (the number of candidates), got {size!r}")


def select_osborn(pool, size: int, *, weights=(1.0, 1.0, 1.0), standardize: bool = True,
                  **term_options) -> tuple[list[str], dict]:
    """Greedy maximisation of f under |S| = size (Sec. 4, Eq. 13): add the candidate of largest gain.

    Args:
        pool, weights, standardize, term_options: as in `osborn_score`.
        size: ensemble size, 1..number of candidates.

    Returns:
        (names in pick order, record): `gain` and `score` (f after the pick) per step, the unscaled
        `domain`, `task` and `cohesion` terms in the order of `names` (sorted), and the `scale` used.
    """
    terms = _as_terms(pool, term_options)
    _check_size(size, len(terms.names))
    unary, pair, scales = _scaled_terms(terms, weights, standardize)
    chosen, gains = [], []
    for _ in range(size):
        left = [i for i in range(len(terms.names)) if i not in chosen]
        gain = {i: -unary[i] - pair[i, chosen].sum() for i in left}  # Eq. 10
        best = min(left, key=lambda i: (-gain[i], terms.names[i]))
        chosen.append(best)
        gains.append(float(gain[best]))
    return [terms.names[i] for i in chosen], {
        "gain": gains, "score": np.cumsum(gains).tolist(), "names": list(terms.names), "scale": scales,
        "domain": terms.domain.tolist(), "task": terms.task.tolist(), "cohesion": terms.cohesion.tolist(),
    }


def select_top_k(scores: dict[str, float], size: int) -> tuple[list[str], dict]:
    """Baseline: the `size` best single-model scores (e.g. LogME), ties by name; same shape as select_osborn.

    Returns:
        (names in pick order, record) with `gain` (each pick's score) and `score` (the running sum).
    """
    values = {name: float(v) for name, v in dict(scores).items()}
    if not values or not all(np.isfinite(v) for v in values.values()):
        raise ValueError(f"scores must be a non-empty dict of finite values, got {scores!r}")
    _check_size(size, len(values))
    names = sorted(values, key=lambda name: (-values[name], name))[:size]
    gains = [values[name] for name in names]
    return names, {"gain": gains, "score": np.cumsum(gains).tolist()}
