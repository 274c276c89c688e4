"""evaluate: test-split metrics of the target model, transfer scores of each backbone, costs of every stage."""

from __future__ import annotations

import pandas as pd
import torch

from tlpipe import data, io, metrics, models, plots, runtime, training
from tasks import probe
from tasks.context import StageContext, metrics_file

COST_STAGES = ("surrogate", "prune", "pretrain", "distill", "finetune")


def backbones(ctx: StageContext) -> dict:
    """Teacher, student, and an untrained copy of the student's architecture as the floor."""
    student = models.load_backbone(ctx.upstream("distill") / "backbone")
    runtime.seed_everything(ctx.params["seed"])
    scratch = type(student)(student.config)
    return {"teacher": probe.teacher_backbone(ctx.upstream("pretrain")), "student": student, "scratch": scratch}


def transfer_scores(ctx: StageContext, pool, test) -> pd.DataFrame:
    """Linear-probe accuracy of every backbone on the same few-shot draws (paired), one row per draw."""
    draws = probe.few_shot_draws(pool[1], ctx.params)
    rows = []
    for name, backbone in backbones(ctx).items():
        rows += probe.probe_rows(name, backbone, pool, test, draws, batch_size=ctx.params["batch_size"],
                                 device=torch.device(ctx.device))
    return pd.DataFrame(rows)


def stage_costs(ctx: StageContext) -> dict:
    """Wall time and images seen of each upstream stage, and the end-to-end sum (surrogate included)."""
    costs = {}
    for stage in COST_STAGES:
        record = io.read_json(metrics_file(ctx.project, stage))
        costs[stage] = {"wall_time_s": record["wall_time_s"], "images_seen": record.get("images_seen", 0)}
    costs["end_to_end"] = {key: sum(c[key] for c in costs.values()) for key in ("wall_time_s", "images_seen")}
    return costs


def run(ctx: StageContext) -> dict:
    p = ctx.params
    target = data.load_prepared(ctx.upstream("prepare") / "target")
    names = list(target["test"].features["label"].names)
    test = data.to_arrays(target["test"])
    model = models.load_classifier(ctx.upstream("finetune") / "model")
    predicted = training.predict_logits(model, test[0], batch_size=p["batch_size"], device=torch.device(ctx.device)).argmax(1)
    report = metrics.classification_report(test[1], predicted, num_classes=len(names))
    io.write_figure(ctx.out / "confusion.png", plots.plot_confusion_matrix(report["confusion_matrix"], names))
    scores = transfer_scores(ctx, probe.probe_pool(target), test)
    io.write_table(ctx.out / "probe.csv", scores)
    transfer = {
        name: {f"{shots}shot": metrics.summarise(group["accuracy"]) for shots, group in by_backbone.groupby("shots")}
        for name, by_backbone in scores.groupby("backbone", sort=False)
    }
    pretrain = io.read_json(metrics_file(ctx.project, "pretrain"))
    result = {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "per_class_accuracy": dict(zip(names, report["per_class_accuracy"])),
        "transfer": transfer,
        "cost": stage_costs(ctx),
        "pretrain_source_fraction": pretrain["source_fraction"],
        "test_images": len(test[1]),
    }
    io.write_text(ctx.out / "report.md", render_report(result))
    return result


def render_report(result: dict) -> str:
    """A one-page markdown summary of the run."""
    lines = ["# tlpipe evaluation", "", f"- test accuracy: {result['accuracy']:.4f}",
             f"- macro-F1: {result['macro_f1']:.4f}",
             f"- pretraining used {result['pretrain_source_fraction']:.1%} of the source images", "",
             "## Transfer score (few-shot linear probe, mean ± std over paired draws)", "",
             "| backbone | " + " | ".join(next(iter(result["transfer"].values()))) + " |",
             "|---|" + "---|" * len(next(iter(result["transfer"].values())))]
    for name, by_shots in result["transfer"].items():
        lines.append(f"| {name} | " + " | ".join(f"{s['mean']:.3f} ± {s['std']:.3f}" for s in by_shots.values()) + " |")
    lines += ["", "## Cost", "", "| stage | wall time (s) | images seen |", "|---|---|---|"]
    for stage, cost in result["cost"].items():
        lines.append(f"| {stage} | {cost['wall_time_s']:.1f} | {cost['images_seen']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from tasks.runner import main

    main("evaluate")
