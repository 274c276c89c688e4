"""finetune: the target classifier, from the student (or teacher) on the labeled target train split."""

from __future__ import annotations

import numpy as np
import torch

from tlpipe import io, registry
from tlpipe.data import images as image_sets, storage
from tlpipe.finetuning import fixmatch, lora, regularizers  # noqa: F401 (the methods the registry names: in this stage's key)
from tlpipe.training import loops, models
from project import files
from project.outputs import teacher_backbone
from tasks.common import augmentation, recorded

BACKBONES = ("student", "teacher")


def load_backbone(ctx, which: str):
    if which == "student":
        return models.load_backbone(ctx.upstream("distill") / files.BACKBONE)
    return teacher_backbone(ctx.upstream("pretrain"))


def fit(ctx, which: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
        on_metrics=None, unlabeled=None):
    """(classifier, metrics) of the configured recipe on one backbone."""
    p = ctx.params
    return loops.finetune(
        load_backbone(ctx, which), images, labels, num_classes=num_classes, method=p["method"],
        method_params=registry.finetune_method_params(p),
        epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
        seed=p["seed"], device=torch.device(ctx.device), on_metrics=on_metrics,
        checkpoint=ctx.checkpoint(f"train-{which}"), augment=augmentation(ctx, images), unlabeled=unlabeled,
    )


def run(ctx) -> dict:
    p = ctx.params
    target = storage.load_prepared(ctx.upstream("prepare") / files.TARGET)
    train = target["train"]
    images, labels = image_sets.read(train)  # an encoded split decoded as it is read (and augmented)
    num_classes = train.features["label"].num_classes
    # read (never its labels) only by a method that trains on the unlabeled images; never the test split
    unlabeled = image_sets.Images.of(target["unlabeled"]) if registry.FINETUNING[p["method"]].unlabeled else None
    with recorded(ctx, p["epochs"], f"{p['method']} on {p['backbone']}", ctx.out / "history.csv") as on_metrics:
        model, metrics = fit(ctx, p["backbone"], images, labels, num_classes, on_metrics, unlabeled)
    models.save_classifier(model.cpu(), ctx.out / files.CLASSIFIER)
    result = {**metrics, "parameters": models.count_parameters(model), "train_images": len(images),
              "backbone": p["backbone"], "method": p["method"],
              **({"unlabeled_images": len(unlabeled)} if unlabeled is not None else {})}
    if p["compare"]:  # the other backbone, same recipe: evaluate reports both fine-tuned accuracies
        other = next(b for b in BACKBONES if b != p["backbone"])
        reference, reference_metrics = fit(ctx, other, images, labels, num_classes, unlabeled=unlabeled)
        models.save_classifier(reference.cpu(), ctx.out / files.COMPARED)
        # no timings in an output: its bytes (and DVC hash) must depend on the inputs alone
        io.write_json(ctx.out / files.COMPARISON, {"backbone": other, "train_accuracy": reference_metrics["train_accuracy"],
                                                 "images_seen": reference_metrics["images_seen"]})
    deployed, example = _deployable(model, images)
    ctx.log_model(deployed, input_example=example)
    return result


def _deployable(model, images: np.ndarray) -> tuple:
    """(the model people deploy: pixels in, logits out; an input example) of a classifier."""
    return models.PixelClassifier(model).eval(), np.ascontiguousarray(images[:2])


def deployable(out, inputs: dict) -> tuple:
    """What `run` logs as the model, rebuilt from the stage's output folder and its inputs ({dep: path}):
    for a reused run whose model the tracking store at hand lacks (a teammate's run)."""
    train = storage.load_prepared(inputs["data/prepared/target"])["train"].select(range(2))
    return _deployable(models.load_classifier(out / files.CLASSIFIER), storage.to_arrays(train)[0])


def headline(m: dict) -> str:
    return f"train acc {m['train_accuracy']:.3f}; {m['parameters']:,} params"


if __name__ == "__main__":
    from runner.command import main

    main("finetune")
