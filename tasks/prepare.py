"""prepare: the source and target data sets, split once and stored as Hugging Face datasets on disk.

The source is written a unit at a time by worker processes (`tlpipe.data.shards`), so its size is not
bounded by memory; the target (a few-shot data set) is split in memory.
"""

from __future__ import annotations

from tlpipe.data import shards, storage
from project import files, sources


def run(ctx) -> dict:
    params = ctx.params
    source = sources.source_parts(params, ctx.project)
    sizes = shards.prepare_source(source, ctx.out / files.SOURCE, val_fraction=params["source"]["val_fraction"],
                                  seed=params["seed"])
    target = sources.split_target(params, *sources.load_target(params, ctx.project))
    storage.save_prepared(target, ctx.out / files.TARGET)
    counts = {f"source_{k}": n for k, n in sizes.items()} | {f"target_{k}": len(v) for k, v in target.items()}
    return {
        **counts,
        "source_data": params["source"]["name"],  # what the data sets are, for reports
        "target_data": params["target"]["name"],
        "source_classes": len(source.names()),
        "target_classes": target["train"].features["label"].num_classes,
    }


def headline(m: dict) -> str:
    return f"source {m['source_train']} train imgs / {m['source_classes']} classes; target {m['target_classes']} classes"


if __name__ == "__main__":
    from runner.command import main

    main("prepare")
