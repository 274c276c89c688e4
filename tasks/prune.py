"""prune: which source images to keep for this target (class-level or sample-level methods)."""

from __future__ import annotations


import numpy as np
import torch

from tlpipe import io, pruning, registry
from tlpipe.data import images as image_sets, storage
from tlpipe.evaluation import plots
from tlpipe.pruning.early import SCORED, early_training_scores
from tlpipe.training import inference, models
from project import files


def surrogate_logits(ctx, images: np.ndarray) -> np.ndarray:
    """The surrogate's source-class logits for the target train images (target labels are not read)."""
    model = models.load_classifier(ctx.upstream("surrogate") / files.CLASSIFIER)
    return inference.predict_logits(model, images, batch_size=256, device=torch.device(ctx.device))


def surrogate_features(ctx, images: np.ndarray) -> np.ndarray:
    backbone = models.load_backbone(ctx.upstream("surrogate") / files.BACKBONE)
    return inference.extract_features(backbone, images, batch_size=256, device=torch.device(ctx.device))


def source_feature_chunks(ctx, images):
    """The surrogate's features of the source a chunk at a time: the methods sum or rank them as they
    come (what reads them more than once joins them)."""
    backbone = models.load_backbone(ctx.upstream("surrogate") / files.BACKBONE)
    return inference.iter_features(backbone, images, batch_size=256, device=torch.device(ctx.device))


def scores(ctx, source: tuple, num_classes: int) -> list:
    """EL2N error norms or GraNd gradient norms of `scores.runs` short trainings, one per seed; kept in
    the store, since every pruning ratio of a method and seed needs the same scores."""
    p = ctx.params
    surrogate = models.load_backbone(ctx.upstream("surrogate") / files.BACKBONE)
    images, labels = source
    parts = [SCORED[p["method"]], p["method"], p["seed"], p["scores"], num_classes, models.weights_digest(surrogate),
             image_sets.digest(images), image_sets.digest(labels.astype(np.int64))]
    stacked, _ = ctx.memo("prune_scores", parts, lambda: early_training_scores(
        surrogate, images, labels, method=p["method"], num_classes=num_classes, runs=p["scores"]["runs"],
        epochs=p["scores"]["epochs"], batch_size=p["scores"]["batch_size"], lr=p["scores"]["lr"], seed=p["seed"],
        device=torch.device(ctx.device), checkpoints=lambda run: ctx.checkpoint(f"scores-{run}")),
        code=early_training_scores)
    return list(stacked)


def select(ctx, source: tuple, target: tuple, num_classes: int):
    """The selection of the configured method, computing only the inputs it reads (registry.PRUNING)."""
    p = ctx.params
    providers = {
        "logits": lambda: surrogate_logits(ctx, target[0]),
        "target_labels": lambda: target[1],
        "target_features": lambda: surrogate_features(ctx, target[0]),
        "source_features": lambda: source_feature_chunks(ctx, source[0]),
        "el2n_norms_per_model": lambda: scores(ctx, source, num_classes),
        "grad_norms_per_model": lambda: scores(ctx, source, num_classes),
    }
    method = registry.pruning_method(p["method"])
    inputs = {name: providers[name]() for name in method.needs}
    if method.level == registry.CLASS:  # groups: the source classes, or k-means clusters of the features
        inputs.update({"source_labels": source[1]} if p["groups"] == "classes" else {"num_clusters": p["num_clusters"]})
        inputs["num_classes"] = num_classes
    else:
        inputs.update(source_labels=source[1], num_samples=len(source[1]))
    return pruning.select(p["method"], ratio=p["ratio"], seed=p["seed"], **inputs)


def run(ctx) -> dict:
    p = ctx.params
    prepared = ctx.upstream("prepare")
    source_split = storage.load_prepared(prepared / files.SOURCE)["train"]
    class_names = list(source_split.features["label"].names)
    source = image_sets.read(source_split)
    target = storage.to_arrays(storage.load_prepared(prepared / files.TARGET)["train"])
    selection = select(ctx, source, target, len(class_names))
    kept = pruning.kept_indices(selection, source[1])
    table = pruning.class_table(selection, source[1], kept, class_names)
    kept_classes = table.loc[table["kept_images"] > 0, "class_id"].sort_values().to_numpy()
    io.write_table(ctx.out / "classes.csv", table)
    io.write_array(ctx.out / files.KEPT_INDICES, kept)
    io.write_json(ctx.out / files.SELECTION, {
        "method": p["method"], "ratio": p["ratio"], "level": registry.PRUNING[p["method"]].level,
        "kept": kept_classes, "kept_names": [class_names[i] for i in kept_classes],
        "num_classes": len(class_names), "kept_images": len(kept),
    })
    voted = pruning.ranks_source_classes(selection, source[1]) and selection.votes is not None
    figure = (plots.plot_class_votes(selection.votes, class_names, selection.kept, what=f"{p['method']} votes")
              if voted else
              plots.plot_class_votes(table.sort_values("class_id")["kept_images"].to_numpy(), class_names,
                                     kept_classes, ylabel="kept source images", what=f"{p['method']} selection"))
    io.write_figure(ctx.out / "votes.png", figure)
    return {
        "method": p["method"],
        "ratio": p["ratio"],
        "kept_classes": int(len(kept_classes)),
        "source_classes": len(class_names),
        "kept_train_images": int(len(kept)),
        "source_train_images": int(len(source[1])),
        "kept_fraction": len(kept) / len(source[1]),
    }


def headline(m: dict) -> str:
    return f"kept {m['kept_classes']}/{m['source_classes']} classes, {m['kept_fraction']:.0%} of source images"


if __name__ == "__main__":
    from runner.command import main

    main("prune")
