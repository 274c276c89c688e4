"""surrogate: a cheap model trained once on the full source, or a classifier trained elsewhere used
as it is (`pretrained`); prune reads the target through it."""

from __future__ import annotations

import numpy as np
import torch

from tlpipe.data import images, storage
from tlpipe.pretraining import pretrained
from tlpipe.training import inference, models
from project import files
from tasks.common import fit_summary, train_source


def run(ctx) -> dict:
    source = storage.load_prepared(ctx.upstream("prepare") / files.SOURCE)
    num_classes = source["train"].features["label"].num_classes
    if ctx.params["pretrained"] is not None:  # a local folder, else a hub id
        return use_pretrained(ctx, str(ctx.external("surrogate.pretrained") or ctx.params["pretrained"]), source)
    return train_source(ctx, images.read(source["train"]), images.read(source["val"]), num_classes)


def use_pretrained(ctx, name: str, source) -> dict:
    """The classifier `name` over the source's classes (its head's rows of their labels), scored on
    the source val split; saved as a trained surrogate's outputs are."""
    classifier = pretrained.load(name, source["train"].features["label"].names)
    val_images, val_labels = images.read(source["val"])
    predicted = inference.predict_classes(classifier, val_images, batch_size=256, device=torch.device(ctx.device))
    models.save_classifier(classifier, ctx.out / files.CLASSIFIER)
    models.save_backbone(classifier.backbone, ctx.out / files.BACKBONE)
    return {"pretrained_classifier": ctx.params["pretrained"], "input_normalization": pretrained.normalization(name)[2],
            "val_accuracy": float(np.mean(predicted == val_labels)),
            "images_seen": 0, "parameters": models.count_parameters(classifier)}


def headline(m: dict) -> str:
    if "pretrained_classifier" in m:
        return f"{fit_summary(m)}; pretrained classifier {m['pretrained_classifier']} (not trained)"
    return f"{fit_summary(m)}; {m['images_seen']} imgs in {m['wall_time_s']:.1f}s"


if __name__ == "__main__":
    from runner.command import main

    main("surrogate")
