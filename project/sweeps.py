"""The pruning sweep as data: its grid, and the summaries of its tidy results table.

A results table has one row per point: `method`, `ratio`, `seed` and measured columns (probe
accuracies, pretraining time, images seen, ...). The full-source reference has method `full` and
ratio 0. Comparisons between methods are paired by seed: the same seed means the same pretraining
initialisation and data order, so the difference of two methods at one seed is one observation.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

FULL = "full"


def grid(methods: list[str], ratios: list[float], seeds: list[int], *, full_source: bool) -> list[dict]:
    """Every (method, ratio, seed) point, then the full source once per seed.

    Raises:
        ValueError: an empty list, or a ratio outside (0, 1).
    """
    if not methods or not ratios or not seeds:
        raise ValueError(f"the grid is empty: methods={methods}, ratios={ratios}, seeds={seeds}")
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad:
        raise ValueError(f"ratios must lie in (0, 1); got {bad}")
    points = [{"method": m, "ratio": float(r), "seed": int(s)} for m in methods for r in ratios for s in seeds]
    if full_source:
        points += [{"method": FULL, "ratio": 0.0, "seed": int(s)} for s in seeds]
    return points


def submission_order(points: list[dict]) -> list[int]:
    """Indices of `points`, the largest pretraining first (lowest ratio; the full source is 0).

    Started last, a long point keeps one worker busy while the others idle.
    """
    return sorted(range(len(points)), key=lambda i: points[i]["ratio"])


def probe_columns(columns) -> list[str]:
    """The probe-accuracy columns (`probe_<k>shot`) in order of k."""
    found = [c for c in columns if re.fullmatch(r"probe_\d+shot", str(c))]
    return sorted(found, key=lambda c: int(c[len("probe_"):-len("shot")]))


def summarise(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and count of `column` per method and ratio (std with ddof=1; NaN for one seed)."""
    grouped = table.groupby(["method", "ratio"], sort=True)[column]
    return grouped.agg(mean="mean", std="std", n="count").reset_index()


def paired_differences(table: pd.DataFrame, column: str, *, method: str, baseline: str) -> pd.DataFrame:
    """`method` minus `baseline` in `column`, paired by seed, per ratio.

    The baseline is taken at the same ratio, or, for `baseline="full"`, the full-source point of the
    same seed. Returns one row per ratio: mean, std (ddof=1), min, max of the per-seed differences and
    the number of pairs.
    """
    ours = table[table["method"] == method].set_index(["ratio", "seed"])[column]
    if baseline == FULL:
        full = table[table["method"] == FULL].set_index("seed")[column]
        theirs = pd.Series(full.reindex(ours.index.get_level_values("seed")).to_numpy(), index=ours.index)
    else:
        theirs = table[table["method"] == baseline].set_index(["ratio", "seed"])[column].reindex(ours.index)
    diff = (ours - theirs).dropna()
    rows = []
    for ratio, values in diff.groupby(level="ratio"):
        v = values.to_numpy(dtype=np.float64)
        rows.append({"ratio": float(ratio), "mean": v.mean(), "std": v.std(ddof=1) if len(v) > 1 else np.nan,
                     "min": v.min(), "max": v.max(), "pairs": len(v)})
    return pd.DataFrame(rows, columns=["ratio", "mean", "std", "min", "max", "pairs"])


def cost_ratios(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """`column` (e.g. pretraining seconds) at each point over the full-source value of its seed, with
    the ideal 1 - ratio beside it; mean per method and ratio."""
    full = table[table["method"] == FULL].set_index("seed")[column]
    pruned = table[table["method"] != FULL].copy()
    pruned["relative"] = pruned[column].to_numpy() / full.reindex(pruned["seed"]).to_numpy()
    out = pruned.groupby(["method", "ratio"], sort=True)["relative"].mean().reset_index()
    out["ideal"] = 1.0 - out["ratio"]
    out["off_ideal"] = out["relative"] / out["ideal"] - 1.0
    return out


def upgrade_timing(table: pd.DataFrame) -> pd.DataFrame:
    """A results table in the current timing columns. Tables written before the training loop was timed
    apart (they have no `pretrain_wall_s`) hold the pretrain stage's wall time, per-epoch validation
    included, in `pretrain_time_s`: it moves to `pretrain_wall_s` and the training-loop time is unknown."""
    if "pretrain_wall_s" in table or "pretrain_time_s" not in table:
        return table
    return table.assign(pretrain_wall_s=table["pretrain_time_s"], pretrain_time_s=np.nan)


def seconds_column(table: pd.DataFrame) -> str:
    """The pretraining seconds to compare with the full source: the training loop (`pretrain_time_s`)
    when every full-source row has it, else the stage wall time (`pretrain_wall_s`), so that a ratio
    never divides one kind of seconds by the other."""
    full = table.loc[table["method"] == FULL, "pretrain_time_s"] if "pretrain_time_s" in table else None
    return "pretrain_time_s" if full is not None and len(full) and full.notna().all() else "pretrain_wall_s"


SCORES = ("logme", "h_score", "tmi", "leep", "nce")  # transferability scores, measured before any fine-tuning


def rank_correlations(table: pd.DataFrame, *, scores=SCORES, targets: list[str] | None = None) -> pd.DataFrame:
    """Kendall tau-b between each transferability score and each measured accuracy over the points.

    Args:
        table: results, one row per point.
        scores: score columns to rank by (those absent from `table` are skipped).
        targets: accuracy columns; default `finetune_accuracy` (when present) and the probe means.

    Returns:
        One row per (score, target): tau (nan when a column is constant or fewer than 2 points have
        both values) and the number of points used.
    """
    from tlpipe.evaluation.metrics import kendall_tau

    targets = targets or [c for c in ["finetune_accuracy", *probe_columns(table.columns)] if c in table]
    rows = []
    for score in (s for s in scores if s in table):
        for target in targets:
            both = table[[score, target]].dropna()
            tau = kendall_tau(both[score], both[target]) if len(both) >= 2 else float("nan")
            rows.append({"score": score, "target": target, "tau": tau, "points": len(both)})
    return pd.DataFrame(rows, columns=["score", "target", "tau", "points"])
