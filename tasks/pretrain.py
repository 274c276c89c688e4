"""pretrain: the teacher, trained on the pruned source (with its labels, or self-supervised)."""

from __future__ import annotations

from tlpipe import io
from tlpipe.data import images, splits, storage
from project import files
from tasks.common import fit_summary, train_source


def run(ctx) -> dict:
    source = storage.load_prepared(ctx.upstream("prepare") / files.SOURCE)
    kept = io.read_array(ctx.upstream("prune") / files.KEPT_INDICES)
    train, val, classes = splits.pruned_split(images.read(source["train"]), images.read(source["val"]), kept)
    metrics = train_source(ctx, train, val, len(classes), ctx.params["label_smoothing"])
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


def headline(m: dict) -> str:
    return (f"{fit_summary(m)}; {m['images_seen']} imgs in {m['train_time_s']:.1f}s of training "
            f"({m['source_fraction']:.0%} of full source, full est. {m['est_full_source_train_time_s']:.0f}s)")


if __name__ == "__main__":
    from runner.command import main

    main("pretrain")
