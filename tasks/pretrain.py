"""pretrain: the teacher, trained with labels on the pruned source."""

from __future__ import annotations

import numpy as np

from tlpipe import data, io, models
from tasks.context import StageContext
from tasks.supervised import remap_labels, train_source_classifier


def kept_subset(split, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images and 0..K-1 labels of the source samples whose class was kept."""
    images, labels = data.to_arrays(split)
    mask = np.isin(labels, kept)
    return images[mask], remap_labels(labels[mask], kept)


def run(ctx: StageContext) -> dict:
    source = data.load_prepared(ctx.upstream("prepare") / "source")
    selection = io.read_json(ctx.upstream("prune") / "selection.json")
    kept = np.asarray(selection["kept"], dtype=np.int64)
    train, val = kept_subset(source["train"], kept), kept_subset(source["val"], kept)
    model, metrics = train_source_classifier(ctx, train, val, len(kept), ctx.params["label_smoothing"])
    models.save_classifier(model, ctx.out / "model")
    models.save_backbone(model.backbone, ctx.out / "backbone")  # what every downstream stage reads
    full_images = len(source["train"])
    return {
        **metrics,
        "source_images": len(train[0]),
        "full_source_images": full_images,
        "source_fraction": len(train[0]) / full_images,
        # Time per image seen is what a full-source run would also pay: an estimate, labelled as one.
        "est_full_source_wall_time_s": metrics["wall_time_s"] * full_images / len(train[0]),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("pretrain")
