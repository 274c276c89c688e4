"""distill: the teacher(s) distilled into a smaller student on unlabeled images (SEED, CompRess or MSE),
or, with KRR-ST, the pruned source distilled into a few synthetic images that the student learns from."""

from __future__ import annotations

import time

import numpy as np
import torch

from tlpipe import io, registry
from tlpipe.data import images as image_sets, storage
from tlpipe.distillation import kernel_ridge, krr_st, representation, synthetic_set
from tlpipe.distillation.teachers import select_teachers, weigh_teachers
from tlpipe.evaluation import plots
from tlpipe.training import models, runtime
from project import files, sources
from project.outputs import teacher_backbone
from project.sources import OWN_TEACHER, teacher_candidates, teacher_folder
from tasks.common import recorded


def unlabeled_images(ctx) -> tuple[image_sets.Concatenated, dict]:
    """Target train-pool images (labels dropped) plus, if asked, the kept source images (read by
    index from the prepared source, never copied whole)."""
    prepared = ctx.upstream("prepare")
    target = storage.load_prepared(prepared / files.TARGET)
    parts = {split: storage.to_arrays(target[split])[0] for split in ("train", "unlabeled")}
    if ctx.params["use_source"]:
        kept = io.read_array(ctx.upstream("prune") / files.KEPT_INDICES)
        parts["source"] = image_sets.Images.of(storage.load_prepared(prepared / files.SOURCE)["train"]).select(kept)
    counts = {f"{name}_images": len(images) for name, images in parts.items()}
    return image_sets.Concatenated(list(parts.values())), counts


def load_teachers(ctx) -> dict[str, torch.nn.Module]:
    """Every teacher `distill.teachers` names (all candidates of a selection) by its entry: this run's,
    a local folder or a hub id."""
    teachers = {}
    for entry in teacher_candidates(ctx.params):
        if entry == OWN_TEACHER:
            teachers[entry] = teacher_backbone(ctx.upstream("pretrain"))
        else:
            teachers[entry] = models.load_backbone(teacher_folder(entry, ctx.project) or entry)
    return teachers


def choose_teachers(ctx, candidates: dict) -> tuple[dict, dict | None]:
    """The teachers to distil: every entry of a `teachers` list, or those a selection
    ({select, from, size}) picks among its candidates, measured on the labelled target train split
    and the prepared source (`teachers.select_teachers`); the selection's record, or None."""
    selection = ctx.params["teachers"]
    if not isinstance(selection, dict):
        return candidates, None
    prepared = ctx.upstream("prepare")
    target = storage.to_arrays(storage.load_prepared(prepared / files.TARGET)["train"])
    source = image_sets.Images.of(storage.load_prepared(prepared / files.SOURCE)["train"])
    return select_teachers(candidates, target, source, source.labels, select=selection["select"],
                           size=selection["size"], seed=ctx.params["seed"], device=torch.device(ctx.device))


def teacher_weights(ctx, teachers: dict) -> tuple[np.ndarray, dict]:
    """(weights, per-teacher record) from each teacher's LogME on the labeled target train split."""
    if len(teachers) == 1:  # no scoring needed
        return weigh_teachers(teachers, None, None)
    images, labels = storage.to_arrays(storage.load_prepared(ctx.upstream("prepare") / files.TARGET)["train"])
    return weigh_teachers(teachers, images, labels, mode=ctx.params["teacher_weighting"],
                          temperature=ctx.params["weighting_temperature"], device=torch.device(ctx.device))


def teacher_embeddings(ctx, teachers: dict, images: np.ndarray, *, force: bool = False) -> tuple[list | None, dict]:
    """Each teacher's embeddings of the un-augmented images, from the store when some run made them
    before (keyed by the teacher's weights and the images' bytes); None when training augments
    (unless `force`)."""
    if ctx.params["augment"] and not force:
        return None, {}
    images_digest = image_sets.digest(images)
    tables, status = [], {}
    for name, teacher in teachers.items():
        table, status[name] = ctx.memo(
            "teacher_embeddings", [models.weights_digest(teacher), images_digest],
            lambda: representation.teacher_embeddings_of(teacher, images, batch_size=256, device=torch.device(ctx.device)),
            code=representation.teacher_embeddings_of)
        tables.append(table)
    return tables, status


def source_images(ctx) -> image_sets.Images:
    """The kept source images, read by index from the prepared source."""
    kept = io.read_array(ctx.upstream("prune") / files.KEPT_INDICES)
    return image_sets.Images.of(storage.load_prepared(ctx.upstream("prepare") / files.SOURCE)["train"]).select(kept)




def make_synthetic_set(ctx, name: str, teacher) -> tuple[synthetic_set.SyntheticSet, dict]:
    """KRR-ST's synthetic set: reused from `krr_st.synthetic`, or distilled from the pruned source with
    the teacher (its representations of the un-augmented images computed once and stored when
    `augment` is off or the set starts from k-means). Either way it is written to synthetic/ with its
    grid, so the output holds the set its student learned from."""
    p, k = ctx.params, ctx.params["krr_st"]
    reused = sources.synthetic_folder(p, ctx.project)
    if reused is not None:
        synthetic, meta = synthetic_set.load_synthetic(reused)
        save_synthetic(ctx, synthetic, meta, f"KRR-ST: {len(synthetic.images)} synthetic images (reused)")
        return synthetic, {"synthetic_reused": True, "synthetic_made_with": meta}
    started = time.perf_counter()  # the teacher's features count in the set's cost
    images = source_images(ctx)
    tables, status = teacher_embeddings(ctx, {name: teacher}, images, force=k["init"] == "kmeans")
    table = torch.as_tensor(tables[0]) if tables else None
    make = kernel_ridge.regressor_factory(p["model"], images.shape[1], models.feature_dim(teacher))
    rounds = min(20, max(k["steps"], 1))
    with recorded(ctx, rounds, "KRR-ST rounds", ctx.out / files.SYNTHETIC / "history.csv") as on_metrics:
        synthetic, metrics = krr_st.distill_dataset(
            teacher, images, make, synthetic_size=k["synthetic_size"], steps=k["steps"], batch_size=k["batch_size"],
            lr=k["lr"], pool_size=k["pool_size"], online_steps=k["online_steps"], online_lr=k["online_lr"],
            online_weight_decay=k["online_weight_decay"], seed=p["seed"], device=torch.device(ctx.device),
            init=k["init"], init_features=table, teacher_table=None if p["augment"] else table, augment=p["augment"],
            rounds=rounds, on_metrics=on_metrics, checkpoint=ctx.checkpoint(files.SYNTHETIC))
    meta = {"method": "krr_st", "teacher": name, "teacher_digest": models.weights_digest(teacher),
            "real_images": len(images), "images_digest": image_sets.digest(images), "seed": p["seed"],
            **{key: k[key] for key in ("init", "steps", "pool_size", "online_steps")}}
    save_synthetic(ctx, synthetic, meta, f"KRR-ST: {len(synthetic.images)} synthetic images from {len(images):,} "
                                         f"source images, {k['steps']} outer steps")
    return synthetic, {"synthetic_reused": False, "source_images": len(images),
                       "real_images_seen": metrics["images_seen"], "synthetic_time_s": time.perf_counter() - started,
                       "teacher_embeddings": status.get(name, "in loop"),
                       **{key: metrics[key] for key in ("krr_loss", "krr_loss_first") if key in metrics}}


def save_synthetic(ctx, synthetic: synthetic_set.SyntheticSet, meta: dict, title: str) -> None:
    """synthetic/ (the set and how it was made; also logged to the stage's MLflow run) and its grid
    synthetic.png (a report figure, logged with the others)."""
    synthetic_set.save_synthetic(synthetic, ctx.out / files.SYNTHETIC, meta)
    io.write_figure(ctx.out / f"{files.SYNTHETIC}.png", plots.plot_image_grid(synthetic.images.detach().numpy(), title=title))
    ctx.log_artifact(ctx.out / files.SYNTHETIC, f"distill/{files.SYNTHETIC}")  # the set itself, for whoever opens the run


def run_krr_st(ctx, teachers: dict, teacher_record: dict) -> dict:
    """KRR-ST: the synthetic set (made or reused), then the student pretrained on it by MSE."""
    p, k = ctx.params, ctx.params["krr_st"]
    (name, teacher), = teachers.items()
    synthetic, made = make_synthetic_set(ctx, name, teacher)
    runtime.seed_everything(p["seed"])
    student = models.build_backbone(in_channels=synthetic.images.shape[1], **p["model"])
    with recorded(ctx, k["epochs"], "epochs on the synthetic set", ctx.out / "history.csv") as on_metrics:
        student, metrics = krr_st.pretrain_on_synthetic(
            student, synthetic, epochs=k["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            weight_decay=p["weight_decay"], seed=p["seed"], device=torch.device(ctx.device), on_metrics=on_metrics,
            checkpoint=ctx.checkpoint("train"))
    models.save_backbone(student, ctx.out / files.BACKBONE)
    io.write_json(ctx.out / "teachers.json", [{"teacher": name, **teacher_record[name]}])
    metrics.pop("loss_history", None)
    return {**metrics, **made, "method": "krr_st", "synthetic_size": len(synthetic.images),
            "student_time_s": metrics["wall_time_s"], "parameters": models.count_parameters(student),
            "teacher_parameters": models.count_parameters(teacher), "teachers": 1}


def selection_metrics(record: dict | None) -> dict:
    """What the metrics say of a selection (the whole record is selection.json)."""
    if record is None:
        return {}
    return {"teachers_selected_by": record["select"], "teacher_candidates": len(record["candidates"])}


def run(ctx) -> dict:
    p = ctx.params
    teachers, selection = choose_teachers(ctx, load_teachers(ctx))
    if selection is not None:
        io.write_json(ctx.out / files.SELECTION, selection, sort_keys=False)
    if p["method"] in registry.DATASET_DISTILLATION:
        return {**run_krr_st(ctx, teachers, {name: {"weight": 1.0} for name in teachers}),
                **selection_metrics(selection)}
    images, counts = unlabeled_images(ctx)
    weights, teacher_record = teacher_weights(ctx, teachers)
    ctx.log_metrics({f"teacher_weight/{k}": float(w) for k, w in zip(range(len(weights)), weights)})
    tables, embedding_status = teacher_embeddings(ctx, teachers, images)
    runtime.seed_everything(p["seed"])  # initial weights depend on the seed alone
    student = models.build_backbone(in_channels=images.shape[1], **p["model"])
    with recorded(ctx, p["epochs"], "epochs", ctx.out / "history.csv") as on_metrics:
        student, metrics = representation.distill(
            student, list(teachers.values()), images, method=p["method"], weights=weights, teacher_embeddings=tables,
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
            queue_size=p["queue_size"], tau_s=p["tau_s"], tau_t=p["tau_t"], seed=p["seed"],
            device=torch.device(ctx.device), augment=p["augment"], on_metrics=on_metrics,
            checkpoint=ctx.checkpoint("train"),
        )
    models.save_backbone(student, ctx.out / files.BACKBONE)
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
        **selection_metrics(selection),
    }


def headline(m: dict) -> str:
    made = f"{m['synthetic_size']} synthetic images; " if m.get("method") == "krr_st" else ""
    return f"{made}loss {m['loss']:.3f}; student {m['parameters']:,} params vs teacher {m['teacher_parameters']:,}"


if __name__ == "__main__":
    from runner.command import main

    main("distill")
