"""pretrain: the teacher, trained on the pruned source (with its labels, or self-supervised)."""

from __future__ import annotations

from tlpipe import data
from tasks.context import StageContext
from tasks.source import kept_source, train_source_model


def run(ctx: StageContext) -> dict:
    source = data.load_prepared(ctx.upstream("prepare") / "source")
    train, val, classes = kept_source(ctx, source)
    metrics = train_source_model(ctx, train, val, len(classes), ctx.params["label_smoothing"])
    full_images = len(source["train"])
    return {
        **metrics,
        "source_images": len(train[0]),
        "source_classes": len(classes),
        "full_source_images": full_images,
        "source_fraction": len(train[0]) / full_images,
        # Training time per image seen is what a full-source run would also pay: an estimate, labelled as one.
        "est_full_source_train_time_s": metrics["train_time_s"] * full_images / len(train[0]),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("pretrain")
