"""surrogate: a cheap model trained once on the full source; prune reads the target through it."""

from __future__ import annotations

from tlpipe.data import images, storage
from project import files
from tasks.common import fit_summary, train_source


def run(ctx) -> dict:
    source = storage.load_prepared(ctx.upstream("prepare") / files.SOURCE)
    num_classes = source["train"].features["label"].num_classes
    return train_source(ctx, images.read(source["train"]), images.read(source["val"]), num_classes)


def headline(m: dict) -> str:
    return f"{fit_summary(m)}; {m['images_seen']} imgs in {m['wall_time_s']:.1f}s"


if __name__ == "__main__":
    from runner.command import main

    main("surrogate")
