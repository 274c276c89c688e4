"""prune: which source images to keep for this target (class-level or sample-level methods)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tlpipe import data, io, models, plots, pruning, runtime, training
from tasks.context import StageContext

LOGIT_METHODS = ("lm", "lm_bottom", "lm_soft", "lm_balanced")  # need the supervised surrogate's classifier
FEATURE_METHODS = ("fm", "fm_samples", "moderate")  # need the surrogate's features (supervised or SSL)
TRAINED_METHODS = ("el2n", "grand")  # train short runs of the surrogate's architecture themselves


def surrogate_logits(ctx: StageContext, images: np.ndarray) -> np.ndarray:
    """The surrogate's source-class logits for the target train images (target labels are not read)."""
    model = models.load_classifier(ctx.upstream("surrogate") / "model")
    return training.predict_logits(model, images, batch_size=256, device=torch.device(ctx.device))


def surrogate_features(ctx: StageContext, images: np.ndarray) -> np.ndarray:
    backbone = models.load_backbone(ctx.upstream("surrogate") / "backbone")
    return training.extract_features(backbone, images, batch_size=256, device=torch.device(ctx.device))


def early_training_scores(ctx: StageContext, images: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    """EL2N logits or GraNd gradient norms of `scores.runs` short trainings (Paul et al. 2021), one per
    seed; kept in the store, since every pruning ratio of a method and seed needs the same scores."""
    p = ctx.params
    surrogate = models.load_backbone(ctx.upstream("surrogate") / "backbone")
    data_digest = hashlib.sha256(np.ascontiguousarray(images).tobytes() + labels.astype(np.int64).tobytes())
    key = hashlib.sha256(json.dumps([p["method"], p["seed"], p["scores"], num_classes, ctx.device,
                                     models.weights_digest(surrogate), data_digest.hexdigest()]).encode()).hexdigest()
    stacked, _ = io.cached_file(Path(ctx.store) / "prune_scores" / f"{key}.npy",
                                lambda: np.stack(_train_and_score(ctx, surrogate, images, labels, num_classes)),
                                io.write_array, io.read_array)
    return list(stacked)


def _train_and_score(ctx: StageContext, surrogate, images: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
    p, device = ctx.params, torch.device(ctx.device)
    per_run = []
    for run in range(p["scores"]["runs"]):
        seed = p["seed"] + run
        runtime.seed_everything(seed)  # fresh weights of the surrogate's architecture, drawn from the seed
        model = models.Classifier(type(surrogate)(surrogate.config), num_classes)
        training.train_classifier(model, images, labels, epochs=p["scores"]["epochs"],
                                  batch_size=p["scores"]["batch_size"], lr=p["scores"]["lr"],
                                  weight_decay=0.0005, seed=seed, device=device, label_smoothing=0.0)
        if p["method"] == "el2n":
            per_run.append(training.predict_logits(model, images, batch_size=256, device=device))
        else:
            pixels = runtime.to_float(torch.from_numpy(images))
            per_run.append(pruning.per_sample_grad_norms(model.eval(), pixels, labels, batch_size=128))
    return per_run


def select(ctx: StageContext, source: tuple, target: tuple, num_classes: int):
    """The selection of the configured method: a ClassSelection or a SampleSelection."""
    p = ctx.params
    method, common = p["method"], {"ratio": p["ratio"], "seed": p["seed"]}
    if method in LOGIT_METHODS:
        return pruning.select_classes(method, logits=surrogate_logits(ctx, target[0]), target_labels=target[1],
                                      **common)
    if method == "random":
        return pruning.select_classes(method, num_classes=num_classes, **common)
    if method == "random_samples":
        return pruning.select_samples(method, num_samples=len(source[1]), **common)
    if method in FEATURE_METHODS:
        target_f, source_f = surrogate_features(ctx, target[0]), surrogate_features(ctx, source[0])
        if method == "fm":
            grouping = {"source_labels": source[1]} if p["groups"] == "classes" else {"num_clusters": p["num_clusters"]}
            return pruning.select_classes(method, target_features=target_f, source_features=source_f,
                                          **grouping, **common)
        return pruning.select_samples(method, target_features=target_f, source_features=source_f,
                                      source_labels=source[1], **common)
    scores = early_training_scores(ctx, *source, num_classes)
    key = "logits_per_model" if method == "el2n" else "grad_norms_per_model"
    return pruning.select_samples(method, source_labels=source[1], **{key: scores}, **common)


def kept_indices(selection, source_labels: np.ndarray) -> np.ndarray:
    """Positions of the kept source train images, ascending."""
    if isinstance(selection, pruning.FeatureMapping):
        return np.flatnonzero(np.isin(selection.groups, selection.kept)).astype(np.int64)
    if isinstance(selection, pruning.ClassSelection):
        return pruning.kept_sample_indices(source_labels, selection.kept)
    return np.asarray(selection.kept, dtype=np.int64)


def votes_per_class(selection, params: dict) -> bool:
    """True when the selection ranked source classes (not k-means groups or single images)."""
    if not isinstance(selection, pruning.ClassSelection):
        return False
    return not (params["method"] == "fm" and params["groups"] == "kmeans")


def class_table(selection, source_labels: np.ndarray, kept: np.ndarray, class_names: list[str],
                by_class: bool) -> pd.DataFrame:
    """One row per source class: kept images out of all, and the votes when the method counts them."""
    ids = np.arange(len(class_names))
    table = pd.DataFrame({"class_id": ids, "name": class_names,
                          "images": np.bincount(source_labels, minlength=len(ids)),
                          "kept_images": np.bincount(source_labels[kept], minlength=len(ids))})
    if by_class:
        rank = np.empty(len(ids), dtype=np.int64)
        rank[selection.ranking] = ids
        table["rank"] = rank
        if selection.votes is not None:
            table["votes"], table["psum"] = selection.votes, selection.psum
        return table.sort_values("rank", kind="stable")
    return table.sort_values(["kept_images", "class_id"], ascending=[False, True], kind="stable")


def run(ctx: StageContext) -> dict:
    p = ctx.params
    prepared = ctx.upstream("prepare")
    source_split = data.load_prepared(prepared / "source")["train"]
    class_names = list(source_split.features["label"].names)
    source = data.to_arrays(source_split)
    target = data.to_arrays(data.load_prepared(prepared / "target")["train"])
    selection = select(ctx, source, target, len(class_names))
    kept = kept_indices(selection, source[1])
    by_class = votes_per_class(selection, p)
    table = class_table(selection, source[1], kept, class_names, by_class)
    kept_classes = table.loc[table["kept_images"] > 0, "class_id"].sort_values().to_numpy()
    io.write_table(ctx.out / "classes.csv", table)
    io.write_array(ctx.out / "kept_indices.npy", kept)
    io.write_json(ctx.out / "selection.json", {
        "method": p["method"], "ratio": p["ratio"],
        "level": "sample" if isinstance(selection, pruning.SampleSelection) else "class",
        "kept": kept_classes, "kept_names": [class_names[i] for i in kept_classes],
        "num_classes": len(class_names), "kept_images": len(kept),
    })
    figure = (plots.plot_class_votes(selection.votes, class_names, selection.kept,
                                     what=f"{p['method']} votes") if by_class and selection.votes is not None else
              plots.plot_class_votes(table.sort_values("class_id")["kept_images"].to_numpy(), class_names,
                                     kept_classes, ylabel="kept source images", what=f"{p['method']} selection"))
    io.write_figure(ctx.out / "votes.png", figure)
    return {
        "kept_classes": int(len(kept_classes)),
        "source_classes": len(class_names),
        "kept_train_images": int(len(kept)),
        "source_train_images": int(len(source[1])),
        "kept_fraction": len(kept) / len(source[1]),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("prune")
