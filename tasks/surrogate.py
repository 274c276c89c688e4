"""surrogate: a cheap model trained once on the full source; prune reads the target through it."""

from __future__ import annotations

from tlpipe import data
from tasks.context import StageContext
from tasks.source import train_source_model


def run(ctx: StageContext) -> dict:
    source = data.load_prepared(ctx.upstream("prepare") / "source")
    num_classes = source["train"].features["label"].num_classes
    return train_source_model(ctx, data.to_arrays(source["train"]), data.to_arrays(source["val"]), num_classes)


if __name__ == "__main__":
    from tasks.runner import main

    main("surrogate")
