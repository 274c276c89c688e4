"""prepare: the source and target data sets, split once and stored as Hugging Face datasets on disk."""

from __future__ import annotations

from pathlib import Path

from tlpipe import data
from tasks.context import StageContext
from tasks.inputs import BUILTIN, dataset_location


def load_source(params: dict, project: Path):
    """The full source data set in the prepared format (before splitting)."""
    spec = params["source"]
    if spec["name"] == BUILTIN["source"]:
        return data.render_glyphs(
            charset=spec["charset"],
            images_per_class=spec["images_per_class"],
            seed=params["seed"],
            image_size=params["image_size"],
            degrade_fraction=spec["degrade_fraction"],
        )
    return _load_external(spec, params, spec["split"], project)


def load_target(params: dict, project: Path):
    """(train pool, own test split or None) of the target in the prepared format."""
    spec = params["target"]
    if spec["name"] == BUILTIN["target"]:
        return data.load_digits_dataset(image_size=params["image_size"]), None
    test = _load_external(spec, params, spec["test_split"], project) if spec["test_split"] else None
    return _load_external(spec, params, spec["split"], project), test


def _load_external(spec: dict, params: dict, split: str, project: Path):
    return data.load_image_dataset(
        dataset_location(spec["name"], project),
        split=split,
        image_column=spec["image_column"],
        label_column=spec["label_column"],
        image_size=params["image_size"],
        channels=params["channels"],
    )


def split_target(params: dict, pool, test):
    spec = params["target"]
    return data.split_target(
        pool, shots_per_class=spec["shots_per_class"], test_fraction=spec["test_fraction"],
        seed=params["seed"], test=test,
    )


def run(ctx: StageContext) -> dict:
    params = ctx.params
    source = data.split_source(load_source(params, ctx.project), val_fraction=params["source"]["val_fraction"],
                               seed=params["seed"])
    pool, test = load_target(params, ctx.project)
    target = split_target(params, pool, test)
    data.save_prepared(source, ctx.out / "source")
    data.save_prepared(target, ctx.out / "target")
    counts = {f"source_{k}": len(v) for k, v in source.items()} | {f"target_{k}": len(v) for k, v in target.items()}
    return {
        **counts,
        "source_classes": source["train"].features["label"].num_classes,
        "target_classes": target["train"].features["label"].num_classes,
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("prepare")
