"""distill: the teacher(s) distilled into a smaller student on unlabeled images (SEED, CompRess or MSE)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from tlpipe import data, distill, io, models, runtime, training, transferability
from tasks.context import StageContext
from tasks.inputs import OWN_TEACHER, teacher_folder
from tasks.probe import teacher_backbone
from tasks.source import write_history


def unlabeled_images(ctx: StageContext) -> tuple[np.ndarray, dict]:
    """Target train-pool images (labels dropped) plus, if asked, the kept source images."""
    prepared = ctx.upstream("prepare")
    target = data.load_prepared(prepared / "target")
    parts = {split: data.to_arrays(target[split])[0] for split in ("train", "unlabeled")}
    if ctx.params["use_source"]:
        kept = io.read_array(ctx.upstream("prune") / "kept_indices.npy")
        parts["source"] = data.to_arrays(data.load_prepared(prepared / "source")["train"])[0][kept]
    counts = {f"{name}_images": len(images) for name, images in parts.items()}
    return np.concatenate(list(parts.values())), counts


def load_teachers(ctx: StageContext) -> dict[str, torch.nn.Module]:
    """Every teacher of `distill.teachers` by its entry: this run's, a local folder or a hub id."""
    teachers = {}
    for entry in ctx.params["teachers"]:
        if entry == OWN_TEACHER:
            teachers[entry] = teacher_backbone(ctx.upstream("pretrain"))
        else:
            teachers[entry] = models.load_backbone(teacher_folder(entry, ctx.project) or entry)
    return teachers


def weigh_teachers(ctx: StageContext, teachers: dict) -> tuple[np.ndarray, dict]:
    """(weights, per-teacher record): LogME of each teacher on the labeled target train split, turned
    into weights (Borup et al. 2023); a single teacher gets weight 1 and no score."""
    if len(teachers) == 1:
        return np.ones(1), {name: {"weight": 1.0} for name in teachers}
    images, labels = data.to_arrays(data.load_prepared(ctx.upstream("prepare") / "target")["train"])
    scores = [transferability.logme(training.extract_features(t, images, batch_size=256,
                                                               device=torch.device(ctx.device)), labels)
              for t in teachers.values()]
    weights = transferability.teacher_weights(np.array(scores), temperature=ctx.params["weighting_temperature"],
                                              mode=ctx.params["teacher_weighting"])
    record = {name: {"logme": float(s), "weight": float(w)} for name, s, w in zip(teachers, scores, weights)}
    return weights, record


def teacher_embeddings(ctx: StageContext, teachers: dict, images: np.ndarray) -> tuple[list | None, dict]:
    """Each teacher's embeddings of the un-augmented images, from the store when some run made them
    before (keyed by the teacher's weights and the images' bytes); None when training augments."""
    if ctx.params["augment"]:
        return None, {}
    images_digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    tables, status = [], {}
    for name, teacher in teachers.items():
        key = hashlib.sha256((models.weights_digest(teacher) + images_digest + ctx.device).encode()).hexdigest()
        table, status[name] = io.cached_file(
            Path(ctx.store) / "teacher_embeddings" / f"{key}.npy",
            lambda: distill.teacher_embeddings_of(teacher, images, batch_size=256, device=torch.device(ctx.device)),
            io.write_array, io.read_array)
        tables.append(table)
    return tables, status


def run(ctx: StageContext) -> dict:
    p = ctx.params
    images, counts = unlabeled_images(ctx)
    teachers = load_teachers(ctx)
    weights, teacher_record = weigh_teachers(ctx, teachers)
    ctx.log_metrics({f"teacher_weight/{k}": float(w) for k, w in zip(range(len(weights)), weights)})
    tables, embedding_status = teacher_embeddings(ctx, teachers, images)
    runtime.seed_everything(p["seed"])  # initial weights depend on the seed alone
    student = models.build_backbone(in_channels=images.shape[1], **p["model"])
    history: list[dict] = []
    with ctx.progress(p["epochs"], "epochs") as report:
        def on_metrics(epoch: int, metrics: dict) -> None:
            history.append({"epoch": epoch, **metrics})
            report(epoch, metrics)

        student, metrics = distill.distill(
            student, list(teachers.values()), images, method=p["method"], weights=weights, teacher_embeddings=tables,
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
            queue_size=p["queue_size"], tau_s=p["tau_s"], tau_t=p["tau_t"], seed=p["seed"],
            device=torch.device(ctx.device), augment=p["augment"], on_metrics=on_metrics,
        )
    models.save_backbone(student, ctx.out / "backbone")
    write_history(ctx.out / "history.csv", history)
    io.write_json(ctx.out / "teachers.json", [  # a list: the order is the teachers' order in params
        {"teacher": name, **record, "embeddings": embedding_status.get(name, "in loop")}
        for name, record in teacher_record.items()])
    metrics.pop("loss_history", None)
    largest = max(models.count_parameters(t) for t in teachers.values())
    return {
        **metrics, **counts,
        "parameters": models.count_parameters(student),
        "teacher_parameters": largest,
        "teachers": len(teachers),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("distill")
