"""evaluate: test-split metrics of the fine-tuned models, transfer scores and transferability of each
backbone, their size and speed, the cost of every stage, and the one-page report."""

from __future__ import annotations

import pandas as pd
import torch

import shutil
import time
from datetime import datetime, timezone

from tlpipe import io
from tlpipe.data import storage
from tlpipe.evaluation import efficiency, metrics, plots, probe
from tlpipe.training import inference, models, runtime
from project import files, outputs, report

REPORT_TITLE = "tlpipe evaluation"
PROBE_FIGURE = "probe_shots.png"


def backbones(ctx) -> dict:
    """Teacher, student, and an untrained copy of the student's architecture as the floor."""
    student = models.load_backbone(ctx.upstream("distill") / files.BACKBONE)
    runtime.seed_everything(ctx.params["seed"])
    scratch = type(student)(student.config)
    return {"teacher": outputs.teacher_backbone(ctx.upstream("pretrain")), "student": student, "scratch": scratch}


def transfer_scores(ctx, nets: dict, pool, test) -> pd.DataFrame:
    """Linear-probe accuracy of every backbone on the same few-shot draws (paired), one row per draw."""
    draws = probe.few_shot_draws(pool[1], ctx.params)
    rows = []
    for name, backbone in nets.items():
        rows += probe.probe_rows(name, backbone, pool, test, draws, batch_size=ctx.params["batch_size"],
                                 device=torch.device(ctx.device))
    return pd.DataFrame(rows)


def finetuned_models(ctx, test, names: list[str]) -> dict[str, dict]:
    """Test-split classification report of each fine-tuned model, by the backbone it started from."""
    folder = ctx.upstream("finetune")
    found = {ctx.upstream_metrics("finetune")["backbone"]: folder / "model"}
    if (folder / files.COMPARISON).is_file():
        found[io.read_json(folder / files.COMPARISON)["backbone"]] = folder / files.COMPARED
    reports = {}
    for backbone, path in found.items():
        model = models.load_classifier(path)
        logits = inference.predict_logits(model, test[0], batch_size=ctx.params["batch_size"],
                                      device=torch.device(ctx.device))
        reports[backbone] = metrics.classification_report(test[1], logits.argmax(1), num_classes=len(names))
    return reports


def transferability_scores(ctx, nets: dict, train) -> dict[str, dict]:
    """Transferability of teacher and student before fine-tuning (probe.transferability_of), plus
    the distillation teachers as distill scored and weighted them."""
    scores = {name: probe.transferability_of(nets[name], train, batch_size=ctx.params["batch_size"],
                                             device=torch.device(ctx.device),
                                             classifier_dir=ctx.upstream("pretrain") / files.CLASSIFIER if name == "teacher" else None)
              for name in ("teacher", "student")}
    teachers_file = ctx.upstream("distill") / "teachers.json"
    for record in (io.read_json(teachers_file) if teachers_file.is_file() else ()):
        if "logme" in record:
            scores[f"distill teacher {record['teacher']}"] = {"logme": record["logme"], "weight": record["weight"]}
    return scores


def size_and_speed(nets: dict, image_shape: tuple) -> dict[str, dict]:
    """Parameters, MACs, batch-1 latency and batch-64 throughput on this machine; ratios vs the teacher."""
    profiles = efficiency.profile_models({name: models.PooledBackbone(nets[name]) for name in ("teacher", "student")},
                                         input_shape=image_shape)
    ratios = efficiency.compare_profiles(profiles, reference="teacher")
    return {name: {**profiles[name], **ratios[name]} for name in profiles}


def stage_costs(ctx, evaluate_s: float) -> dict:
    """Images seen and wall time of every stage (evaluate's own up to its report), and the end-to-end
    sums; a time is None where this run does not know it (the stage ran in another process, e.g. dvc
    repro). Timings stay out of the metrics file (the runner drops them); the report and MLflow keep them."""
    costs = {stage: {"wall_time_s": ctx.upstream_timings(stage).get("wall_time_s"),
                     "images_seen": ctx.upstream_metrics(stage).get("images_seen", 0)} for stage in ctx.upstream_stages}
    costs["evaluate"] = {"wall_time_s": evaluate_s, "images_seen": 0}
    times = [c["wall_time_s"] for c in costs.values()]
    costs["end_to_end"] = {"wall_time_s": None if None in times else sum(times),
                           "images_seen": sum(c["images_seen"] for c in costs.values())}
    return costs


def run(ctx) -> dict:
    started = time.perf_counter()
    target = storage.load_prepared(ctx.upstream("prepare") / files.TARGET)
    names = list(target["test"].features["label"].names)
    test, train = storage.to_arrays(target["test"]), storage.to_arrays(target["train"])
    deployed = ctx.upstream_metrics("finetune")["backbone"]
    finetuned = finetuned_models(ctx, test, names)
    scored = finetuned[deployed]
    io.write_figure(ctx.out / "confusion.png", plots.plot_confusion_matrix(scored["confusion_matrix"], names))
    nets = backbones(ctx)
    scores = transfer_scores(ctx, nets, probe.probe_pool(target), test)
    io.write_table(ctx.out / "probe.csv", scores)
    transfer = {
        name: {f"{shots}shot": metrics.summarise(group["accuracy"]) for shots, group in by_backbone.groupby("shots")}
        for name, by_backbone in scores.groupby("backbone", sort=False)
    }
    pretrain = ctx.upstream_metrics("pretrain")
    result = {
        "accuracy": scored["accuracy"],
        "macro_f1": scored["macro_f1"],
        "deployed_backbone": deployed,
        "per_class_accuracy": dict(zip(names, scored["per_class_accuracy"])),
        "finetuned": {name: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for name, r in finetuned.items()},
        "transfer": transfer,
        "transferability": transferability_scores(ctx, nets, train),
        "efficiency": size_and_speed(nets, tuple(test[0].shape[1:])),
        "pretrain_source_fraction": pretrain["source_fraction"],
        "test_images": len(test[1]),
    }
    result["retention"] = retention(result)
    io.write_json(ctx.out / "summary.json", summary(ctx, result))
    io.write_figure(ctx.out / PROBE_FIGURE, plots.plot_probe_vs_shots(result["transfer"]))
    curves = [(stage, copy_figure(ctx, stage, "curves.png", f"curves_{stage}.png")) for stage in ctx.upstream_stages]
    votes = copy_figure(ctx, "prune", "votes.png", "votes.png")
    synthetic = copy_figure(ctx, "distill", "synthetic.png", "synthetic.png")
    result["cost"] = stage_costs(ctx, time.perf_counter() - started)
    sections = report.evaluation_sections(result, context=run_context(ctx), votes=votes, probe_figure=PROBE_FIGURE,
                                          curves=[(stage, name) for stage, name in curves if name], synthetic=synthetic)
    io.write_text(ctx.out / "report.md", report.render_markdown(REPORT_TITLE, sections))
    figures = {s.figure: (ctx.out / s.figure).read_bytes() for s in sections if s.figure}
    io.write_text(ctx.out / "report.html", report.render_html(REPORT_TITLE, sections, figures))
    return result


def copy_figure(ctx, stage: str, name: str, as_name: str) -> str:
    """Copies an upstream stage's figure beside the report (report.md links figures by file name);
    returns its name there, "" when the stage drew none."""
    found = ctx.upstream(stage) / name
    if not found.is_file():
        return ""
    shutil.copyfile(found, ctx.out / as_name)
    return as_name


def run_context(ctx) -> dict:
    """What the report states first: the data, the pruning and distillation that made the model, and
    where this computation is recorded (run ids, commit, date)."""
    upstream = {stage: ctx.upstream_metrics(stage) for stage in ("prepare", "prune", "distill", "finetune")}
    return {"source": upstream["prepare"].get("source_data"), "target": upstream["prepare"].get("target_data"),
            **upstream,
            "runs": {**ctx.provenance(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}}


SUMMARY_SHOTS = "10shot"


def summary(ctx, result: dict) -> dict:
    """The headline figures of the run, one flat row for `dvc metrics show` (dvc.yaml's top-level
    metrics): deterministic, no timings; everything else is in data/metrics/<stage>.json."""
    shots = SUMMARY_SHOTS if SUMMARY_SHOTS in result["transfer"]["student"] else list(result["transfer"]["student"])[-1]
    prune, pretrain, distill = (ctx.upstream_metrics(s) for s in ("prune", "pretrain", "distill"))
    return {
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        f"student_probe_{shots}": result["transfer"]["student"][shots]["mean"],
        f"teacher_probe_{shots}": result["transfer"]["teacher"][shots]["mean"],
        "source_kept": prune["kept_fraction"],
        "teacher_val_acc": pretrain.get("val_accuracy"),
        "student_params": distill["parameters"],
        "teacher_params": distill["teacher_parameters"],
    }


def retention(result: dict) -> dict:
    """Student over teacher: fine-tuned accuracy (when both were fine-tuned) and each probe's mean."""
    out = {f"probe_{shots}": result["transfer"]["student"][shots]["mean"] / result["transfer"]["teacher"][shots]["mean"]
           for shots in result["transfer"]["teacher"]}
    if {"student", "teacher"} <= set(result["finetuned"]):
        out["finetuned"] = result["finetuned"]["student"]["accuracy"] / result["finetuned"]["teacher"]["accuracy"]
    return out


def headline(m: dict) -> str:
    return f"test acc {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}"


if __name__ == "__main__":
    from runner.command import main

    main("evaluate")
