"""Figures for reports: confusion matrix, LM vote histogram, training curves, image grids.

Built on `matplotlib.figure.Figure` directly (not pyplot), so no global figure registry and no
GUI backend are involved; callers save with `fig.savefig(path)`. Class names may be arbitrary
unicode glyphs, so every text object is created with `parse_math=False`: a name such as '$'
or '$x$' is drawn literally instead of being parsed as mathtext.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

MAX_TICK_LABELS = 50  # beyond this many classes, confusion-matrix tick labels are unreadable
MAX_ANNOTATED = 20  # write counts into cells only for small matrices
KEPT_COLOR, DROPPED_COLOR = "tab:blue", "lightgray"


def _names(class_names: Sequence, num_classes: int, arg: str = "class_names") -> list[str]:
    """Class names as strings, checked against the number of classes."""
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{arg} must have {num_classes} entries, got {len(names)}")
    return names


def plot_confusion_matrix(cm, class_names: Sequence) -> Figure:
    """Heat map of a confusion matrix, rows = true class, columns = predicted class.

    Args:
        cm: [C, C] counts.
        class_names: C names; tick labels are shown for up to 50 classes, counts for up to 20.

    Returns:
        A Figure with two axes: the matrix and its colour bar.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square [C, C] array, got shape {cm.shape}")
    num_classes = cm.shape[0]
    names = _names(class_names, num_classes)
    size = min(4 + 0.3 * num_classes, 16)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if num_classes <= MAX_TICK_LABELS:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, names, rotation=90, parse_math=False)
        ax.set_yticks(ticks, names, parse_math=False)
    if num_classes <= MAX_ANNOTATED:
        threshold = cm.max() / 2 if cm.max() > 0 else 1
        for (i, j), count in np.ndenumerate(cm):
            color = "white" if count > threshold else "black"
            ax.text(j, i, f"{count:g}", ha="center", va="center", color=color, fontsize=8)
    return fig


def plot_class_votes(votes, class_names: Sequence, kept, *, max_bars: int = 40,
                     ylabel: str = "target images voting (top-1)", what: str = "label-mapping votes") -> Figure:
    """Bar chart of the most-voted source classes (DP4TL LM), kept classes highlighted.

    Args:
        votes: [C] top-1 votes per source class (or any per-class score, e.g. kept images).
        class_names: C names.
        kept: ids of the classes kept after pruning.
        max_bars: how many top classes to draw; a note says when classes are left out.
        ylabel: the y-axis label.
        what: what the bars are, at the start of the title.

    Returns:
        A Figure with one axes holding min(C, max_bars) bars, most votes first.
    """
    votes = np.asarray(votes)
    if votes.ndim != 1 or votes.size == 0:
        raise ValueError(f"votes must be a non-empty 1-D array, got shape {votes.shape}")
    if max_bars < 1:
        raise ValueError(f"max_bars must be >= 1, got {max_bars}")
    names = _names(class_names, votes.size)
    kept_mask = np.isin(np.arange(votes.size), np.asarray(kept))
    order = np.lexsort((np.arange(votes.size), -votes))[:max_bars]  # votes desc, then id asc
    fig = Figure(figsize=(max(6, 0.25 * order.size + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    colors = [KEPT_COLOR if kept_mask[c] else DROPPED_COLOR for c in order]
    ax.bar(np.arange(order.size), votes[order], color=colors)
    ax.set_xticks(np.arange(order.size), [names[c] for c in order], rotation=90, parse_math=False)
    ax.set_ylabel(ylabel, parse_math=False)
    title = f"{what}: {int(kept_mask.sum())} of {votes.size} classes kept"
    if order.size < votes.size:
        title += f" (top {order.size} shown)"
    ax.set_title(title, parse_math=False)
    handles = [Patch(color=KEPT_COLOR, label="kept"), Patch(color=DROPPED_COLOR, label="pruned")]
    ax.legend(handles=handles, loc="upper right")
    return fig


def plot_curves(history: dict[str, list[float]], *, title: str) -> Figure:
    """Per-epoch metric curves, one stacked axes per metric (they have different scales).

    Args:
        history: metric name -> one value per epoch (epochs counted from 1).
        title: figure title, drawn literally.

    Returns:
        A Figure with len(history) axes sharing the epoch axis.
    """
    if not history:
        raise ValueError("history must contain at least one metric")
    for name, values in history.items():
        if len(values) == 0:
            raise ValueError(f"history[{name!r}] is empty; every metric needs at least one epoch")
    fig = Figure(figsize=(6, 2.2 * len(history) + 0.6), layout="constrained")
    axes = fig.subplots(len(history), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values) in zip(axes, history.items()):
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, np.asarray(values, dtype=np.float64), marker="o" if len(values) < 30 else None)
        ax.set_ylabel(name, parse_math=False)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title, parse_math=False)
    return fig


def plot_image_grid(images, *, title: str, max_images: int = 100) -> Figure:
    """The first `max_images` images in a square-ish grid, as the networks see them.

    Args:
        images: float [N, C, H, W] in the input space ([-1, 1] for real pixels; a learned image may
            leave it and is clipped); C is 1 (gray) or 3 (RGB).
        title: drawn literally.
        max_images: at most this many are drawn.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must be [N, 1 or 3, H, W] with N >= 1, got shape {images.shape}")
    shown = images[:max_images]
    cols = int(np.ceil(np.sqrt(len(shown))))
    rows = int(np.ceil(len(shown) / cols))
    h, w = shown.shape[2:]
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, shown.shape[1]))
    for k, image in enumerate(np.clip((shown + 1) / 2, 0, 1)):  # [-1, 1] -> [0, 1]
        r, c = divmod(k, cols)
        grid[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = image.transpose(1, 2, 0)
    fig = Figure(figsize=(min(10, 0.6 + 0.5 * cols), min(10, 0.8 + 0.5 * rows)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray" if grid.shape[2] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    more = f" (first {len(shown)} of {len(images)})" if len(images) > len(shown) else ""
    fig.suptitle(title + more, parse_math=False, fontsize=9)
    return fig


def plot_probe_vs_shots(transfer: dict[str, dict[str, dict]]) -> Figure:
    """Few-shot linear-probe accuracy against labelled images per class, one line per backbone with
    ± one standard deviation over the draws as a band.

    Args:
        transfer: backbone -> {"<k>shot": {"mean": ..., "std": ...}}, as evaluate's metrics hold it.
    """
    if not transfer:
        raise ValueError("transfer must hold at least one backbone")
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    for name, by_shots in transfer.items():
        shots = sorted(by_shots, key=lambda k: int(k.removesuffix("shot")))
        x = np.array([int(k.removesuffix("shot")) for k in shots])
        mean = np.array([by_shots[k]["mean"] for k in shots], dtype=np.float64)
        std = np.nan_to_num(np.array([by_shots[k]["std"] for k in shots], dtype=np.float64))
        (line,) = ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(x, [str(v) for v in x])
    ax.minorticks_off()
    ax.set_xlabel("labelled target images per class (shots)")
    ax.set_ylabel("test accuracy of a linear probe")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def _method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """A distinct colour, marker and line style per method (ten colours, then dashed lines)."""
    markers = "osD^v<>Ph*X"
    return {method: {"color": f"C{i % 10}", "marker": markers[i % len(markers)],
                     "linestyle": "-" if i < 10 else "--"} for i, method in enumerate(methods)}


def _legend_outside(ax) -> None:
    """Legend to the right of the axes, so it never hides a line."""
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", frameon=False)


def plot_metric_vs_ratio(summary, *, ylabel: str, full=None) -> Figure:
    """One line per method: mean ± std of a metric against the pruning ratio.

    Args:
        summary: a DataFrame with columns method, ratio, mean, std (`project.sweeps.summarise`),
            without the full-source rows.
        ylabel: the metric's name on the y axis.
        full: (mean, std) of the full-source reference, drawn as a horizontal band; or None.
    """
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.add_subplot()
    groups = list(summary.groupby("method", sort=True))
    styles = _method_styles([str(method) for method, _ in groups])
    spacing = float(np.diff(np.unique(summary["ratio"])).min(initial=1.0)) if len(summary) else 1.0
    for i, (method, rows) in enumerate(groups):
        rows = rows.sort_values("ratio")
        std = np.nan_to_num(rows["std"].to_numpy(dtype=float))
        # spread the methods a little along x so their error bars do not sit on top of each other
        dodge = (i - (len(groups) - 1) / 2) * 0.15 * spacing / max(len(groups), 1)
        ax.errorbar(rows["ratio"] + dodge, rows["mean"], yerr=std, capsize=3, markersize=4,
                    label=str(method), **styles[str(method)])
    if full is not None:
        mean, std = float(full[0]), float(np.nan_to_num(full[1]))
        ax.axhline(mean, color="black", linestyle="--", label="full source")
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)
    ax.set_xlabel("pruning ratio (share of the source removed)")
    ax.set_ylabel(ylabel, parse_math=False)
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    return fig


def plot_cost_vs_ratio(costs) -> Figure:
    """Measured pretraining cost relative to the full source, per method, against the ideal 1 - ratio.

    Args:
        costs: a DataFrame with columns method, ratio, relative (`project.sweeps.cost_ratios`).
    """
    fig = Figure(figsize=(7.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ratios = np.linspace(0.0, 1.0, 11)
    ax.plot(ratios, 1.0 - ratios, color="black", linestyle=":", label="ideal (1 - ratio)")
    groups = list(costs.groupby("method", sort=True))
    styles = _method_styles([str(method) for method, _ in groups])
    for method, rows in groups:
        rows = rows.sort_values("ratio")
        ax.plot(rows["ratio"], rows["relative"], markersize=4, label=str(method), **styles[str(method)])
    ax.set_xlabel("pruning ratio")
    ax.set_ylabel("pretraining time / full-source time")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1.1, float(costs["relative"].max()) * 1.05) if len(costs) else 1.1)
    _legend_outside(ax)
    ax.grid(alpha=0.3)
    return fig
