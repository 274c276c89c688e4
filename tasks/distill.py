"""distill: the teacher(s) distilled into a smaller student on unlabeled images (SEED, CompRess or MSE)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tlpipe import data, distill, images as image_sets, io, models, runtime
from tlpipe.probe import teacher_backbone
from tlpipe.sources import OWN_TEACHER, teacher_folder
from tasks.common import recorded


def unlabeled_images(ctx) -> tuple[image_sets.Concatenated, dict]:
    """Target train-pool images (labels dropped) plus, if asked, the kept source images (read by
    index from the prepared source, never copied whole)."""
    prepared = ctx.upstream("prepare")
    target = data.load_prepared(prepared / "target")
    parts = {split: data.to_arrays(target[split])[0] for split in ("train", "unlabeled")}
    if ctx.params["use_source"]:
        kept = io.read_array(ctx.upstream("prune") / "kept_indices.npy")
        parts["source"] = image_sets.Images.of(data.load_prepared(prepared / "source")["train"]).select(kept)
    counts = {f"{name}_images": len(images) for name, images in parts.items()}
    return image_sets.Concatenated(list(parts.values())), counts


def load_teachers(ctx) -> dict[str, torch.nn.Module]:
    """Every teacher of `distill.teachers` by its entry: this run's, a local folder or a hub id."""
    teachers = {}
    for entry in ctx.params["teachers"]:
        if entry == OWN_TEACHER:
            teachers[entry] = teacher_backbone(ctx.upstream("pretrain"))
        else:
            teachers[entry] = models.load_backbone(teacher_folder(entry, ctx.project) or entry)
    return teachers


def weigh_teachers(ctx, teachers: dict) -> tuple[np.ndarray, dict]:
    """(weights, per-teacher record) from each teacher's LogME on the labeled target train split."""
    if len(teachers) == 1:  # no scoring needed
        return distill.weigh_teachers(teachers, None, None)
    images, labels = data.to_arrays(data.load_prepared(ctx.upstream("prepare") / "target")["train"])
    return distill.weigh_teachers(teachers, images, labels, mode=ctx.params["teacher_weighting"],
                                  temperature=ctx.params["weighting_temperature"], device=torch.device(ctx.device))


def teacher_embeddings(ctx, teachers: dict, images: np.ndarray) -> tuple[list | None, dict]:
    """Each teacher's embeddings of the un-augmented images, from the store when some run made them
    before (keyed by the teacher's weights and the images' bytes); None when training augments."""
    if ctx.params["augment"]:
        return None, {}
    images_digest = image_sets.digest(images)
    tables, status = [], {}
    for name, teacher in teachers.items():
        key = hashlib.sha256((models.weights_digest(teacher) + images_digest + ctx.device).encode()).hexdigest()
        table, status[name] = io.cached_file(
            Path(ctx.store) / "teacher_embeddings" / f"{key}.npy",
            lambda: distill.teacher_embeddings_of(teacher, images, batch_size=256, device=torch.device(ctx.device)),
            io.write_array, io.read_array)
        tables.append(table)
    return tables, status


def run(ctx) -> dict:
    p = ctx.params
    images, counts = unlabeled_images(ctx)
    teachers = load_teachers(ctx)
    weights, teacher_record = weigh_teachers(ctx, teachers)
    ctx.log_metrics({f"teacher_weight/{k}": float(w) for k, w in zip(range(len(weights)), weights)})
    tables, embedding_status = teacher_embeddings(ctx, teachers, images)
    runtime.seed_everything(p["seed"])  # initial weights depend on the seed alone
    student = models.build_backbone(in_channels=images.shape[1], **p["model"])
    with recorded(ctx, p["epochs"], "epochs", ctx.out / "history.csv") as on_metrics:
        student, metrics = distill.distill(
            student, list(teachers.values()), images, method=p["method"], weights=weights, teacher_embeddings=tables,
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
            queue_size=p["queue_size"], tau_s=p["tau_s"], tau_t=p["tau_t"], seed=p["seed"],
            device=torch.device(ctx.device), augment=p["augment"], on_metrics=on_metrics,
            checkpoint=ctx.checkpoint("train"),
        )
    models.save_backbone(student, ctx.out / "backbone")
    io.write_json(ctx.out / "teachers.json", [  # a list: the order is the teachers' order in params
        {"teacher": name, **record, "embeddings": embedding_status.get(name, "in loop")}
        for name, record in teacher_record.items()])
    metrics.pop("loss_history", None)
    largest = max(models.count_parameters(t) for t in teachers.values())
    return {
        **metrics, **counts,
        "method": ctx.params["method"],
        "parameters": models.count_parameters(student),
        "teacher_parameters": largest,
        "teachers": len(teachers),
    }


def headline(m: dict) -> str:
    return f"loss {m['loss']:.3f}; student {m['parameters']:,} params vs teacher {m['teacher_parameters']:,}"


if __name__ == "__main__":
    from runner.command import main

    main("distill")
