"""surrogate: a cheap classifier trained once on the full source; prune reads the target through it."""

from __future__ import annotations

from tlpipe import data, models
from tasks.context import StageContext
from tasks.supervised import train_source_classifier


def run(ctx: StageContext) -> dict:
    source = data.load_prepared(ctx.upstream("prepare") / "source")
    num_classes = source["train"].features["label"].num_classes
    model, metrics = train_source_classifier(
        ctx, data.to_arrays(source["train"]), data.to_arrays(source["val"]), num_classes
    )
    models.save_classifier(model, ctx.out / "model")
    return metrics


if __name__ == "__main__":
    from tasks.runner import main

    main("surrogate")
