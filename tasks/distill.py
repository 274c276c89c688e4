"""distill: the teacher's representation distilled into a smaller student on unlabeled images (SEED)."""

from __future__ import annotations

import numpy as np
import torch

from tlpipe import data, distill, io, models, runtime
from tasks.context import StageContext
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


def run(ctx: StageContext) -> dict:
    p = ctx.params
    images, counts = unlabeled_images(ctx)
    teacher = teacher_backbone(ctx.upstream("pretrain"))
    runtime.seed_everything(p["seed"])  # initial weights depend on the seed alone
    student = models.build_backbone(in_channels=images.shape[1], **p["model"])
    history: list[dict] = []
    with ctx.progress(p["epochs"], "epochs") as report:
        def on_metrics(epoch: int, metrics: dict) -> None:
            history.append({"epoch": epoch, **metrics})
            report(epoch, metrics)

        student, metrics = distill.distill(
            student, teacher, images, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
            weight_decay=p["weight_decay"], queue_size=p["queue_size"], tau_s=p["tau_s"], tau_t=p["tau_t"],
            seed=p["seed"], device=torch.device(ctx.device), augment=p["augment"], on_metrics=on_metrics,
        )
    models.save_backbone(student, ctx.out / "backbone")
    write_history(ctx.out / "history.csv", history)
    metrics.pop("loss_history", None)
    return {
        **metrics, **counts,
        "parameters": models.count_parameters(student),
        "teacher_parameters": models.count_parameters(teacher),
    }


if __name__ == "__main__":
    from tasks.runner import main

    main("distill")
