"""prune: which source classes to keep for this target (label mapping, or random as the baseline)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from tlpipe import data, io, models, plots, pruning, training
from tasks.context import StageContext


def surrogate_logits(ctx: StageContext, images: np.ndarray) -> np.ndarray:
    """The surrogate's source-class logits for the target train images (target labels are not read)."""
    model = models.load_classifier(ctx.upstream("surrogate") / "model")
    return training.predict_logits(model, images, batch_size=256, device=torch.device(ctx.device))


def vote_table(selection: pruning.ClassSelection, class_names: list[str]) -> pd.DataFrame:
    rank = np.empty(len(class_names), dtype=np.int64)
    rank[selection.ranking] = np.arange(len(class_names))
    table = pd.DataFrame({"class_id": np.arange(len(class_names)), "name": class_names, "rank": rank,
                          "kept": np.isin(np.arange(len(class_names)), selection.kept)})
    if selection.votes is not None:
        table["votes"] = selection.votes
        table["psum"] = selection.psum
    return table.sort_values("rank", kind="stable")


def run(ctx: StageContext) -> dict:
    p = ctx.params
    prepared = ctx.upstream("prepare")
    source = data.load_prepared(prepared / "source")
    class_names = list(source["train"].features["label"].names)
    logits = None
    if p["method"] == "lm":
        target_images, _ = data.to_arrays(data.load_prepared(prepared / "target")["train"])
        logits = surrogate_logits(ctx, target_images)
    selection = pruning.select_classes(p["method"], ratio=p["ratio"], seed=p["seed"], logits=logits,
                                       num_classes=len(class_names))
    source_labels = np.asarray(source["train"]["label"], dtype=np.int64)
    kept_samples = len(pruning.kept_sample_indices(source_labels, selection.kept))
    table = vote_table(selection, class_names)
    io.write_table(ctx.out / "classes.csv", table)
    io.write_json(ctx.out / "selection.json", {
        "method": p["method"], "ratio": p["ratio"], "kept": selection.kept,
        "kept_names": [class_names[i] for i in selection.kept], "num_classes": len(class_names),
    })
    if selection.votes is not None:
        io.write_figure(ctx.out / "votes.png", plots.plot_class_votes(selection.votes, class_names, selection.kept))
    return {
        "kept_classes": int(len(selection.kept)),
        "source_classes": len(class_names),
        "kept_train_images": kept_samples,
        "source_train_images": int(len(source_labels)),
        "kept_fraction": kept_samples / len(source_labels),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("prune")
