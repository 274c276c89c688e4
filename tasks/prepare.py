"""prepare: the source and target data sets, split once and stored as Hugging Face datasets on disk."""

from __future__ import annotations

from tlpipe import data, sources, splits


def run(ctx) -> dict:
    params = ctx.params
    source = splits.split_source(sources.load_source(params, ctx.project),
                                 val_fraction=params["source"]["val_fraction"], seed=params["seed"])
    target = sources.split_target(params, *sources.load_target(params, ctx.project))
    data.save_prepared(source, ctx.out / "source")
    data.save_prepared(target, ctx.out / "target")
    counts = {f"source_{k}": len(v) for k, v in source.items()} | {f"target_{k}": len(v) for k, v in target.items()}
    return {
        **counts,
        "source_classes": source["train"].features["label"].num_classes,
        "target_classes": target["train"].features["label"].num_classes,
    }


def headline(m: dict) -> str:
    return f"source {m['source_train']} train imgs / {m['source_classes']} classes; target {m['target_classes']} classes"


if __name__ == "__main__":
    from runner.command import main

    main("prepare")
