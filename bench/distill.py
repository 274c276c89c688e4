"""Does distillation earn its place? A student with about a quarter of the teacher's parameters,
distilled without labels, against the teacher and against the same student architecture trained
from scratch on the target labels, over several seeds; and the distillation loop's speed against a
bare PyTorch loop over the same student and loss.

For every seed, one project copy in bench/.work/distill/s<seed>/ runs prepare -> surrogate -> prune
-> pretrain once (the stage functions, in-process, no orchestration), then for every distillation
method distill -> finetune (teacher and student, same recipe) -> evaluate. Printed:
  - test accuracy after fine-tuning: teacher, student, scratch student; retention = student / teacher,
  - few-shot linear-probe accuracy (1/3/10 shots) of teacher and student, and its retention,
  - parameters, multiply-accumulates, batch-1 latency and batch-64 throughput, student vs teacher,
  - distillation images/s in `tlpipe.distillation.representation.distill` vs a bare loop (same student, loss, batches).

    python bench/distill.py                        # 3 seeds, methods seed compress mse
    python bench/distill.py --seeds 5 --methods seed
    python bench/distill.py --tiny                 # a minute-long configuration, to try the script
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _stages import TINY, mean_std, run_stage, stage_context  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

UPSTREAM = ("prepare", "surrogate", "prune", "pretrain")
PER_METHOD = ("distill", "finetune", "evaluate")


def seed_overrides(seed: int, tiny: bool) -> dict:
    """Every seeded stage takes the run's seed; evaluate keeps its own (the same few-shot draws for all)."""
    overrides = {stage: dict(values) for stage, values in (TINY if tiny else {}).items()}
    for stage in ("prune", "pretrain", "distill", "finetune"):
        overrides.setdefault(stage, {})["seed"] = seed
    return overrides


def run_seed(work: Path, seed: int, methods: list[str], tiny: bool, device: str) -> dict:
    """{method: evaluate metrics (+ scratch accuracy, distill figures)} for one seed."""
    from project import paramfiles

    project = work / f"s{seed}"
    if project.exists():
        shutil.rmtree(project)
    copy_project(REPO, project, seed_overrides(seed, tiny))
    params = paramfiles.load_all_params(project)
    for stage in UPSTREAM:
        run_stage(project, stage, params[stage], device)
    scratch = scratch_accuracy(project, params, device)
    results = {}
    for method in methods:
        figures = {}
        for stage in PER_METHOD:
            stage_params = {**params[stage], "method": method} if stage == "distill" else params[stage]
            figures[stage] = run_stage(project, stage, stage_params, device)
        results[method] = {**figures["evaluate"], "scratch_accuracy": scratch,
                           "distill_images_per_s": figures["distill"]["images_per_s"]}
    return results


def scratch_accuracy(project: Path, params: dict, device: str) -> float:
    """Test accuracy of the student's architecture, randomly initialised, fine-tuned like the student."""
    import torch

    from tlpipe.evaluation.probe import finetuned_accuracy
    from tlpipe.data import storage
    from tlpipe.training import models
    from tlpipe.training import runtime

    target = storage.load_prepared(project / "data" / "prepared" / "target")
    train, test = storage.to_arrays(target["train"]), storage.to_arrays(target["test"])
    runtime.seed_everything(params["finetune"]["seed"])
    backbone = models.build_backbone(in_channels=train[0].shape[1], **params["distill"]["model"])
    return finetuned_accuracy(backbone, train, test, params["finetune"],
                              target["train"].features["label"].num_classes, torch.device(device))


def bare_distill_loop(student_backbone, teacher, images, p: dict, device) -> float:
    """Images/s of the plainest SEED loop: same student + head, teacher, augmentation, loss, optimizer
    and batches as `representation.distill`, without its bookkeeping (schedule, loss log, checks, wrappers)."""
    import copy

    import torch
    import torch.nn.functional as F

    from tlpipe.data.augment import augment_batch
    from tlpipe.distillation.seed import seed_loss
    from tlpipe.training.models import ProjectionHead, embed, feature_dim

    torch.manual_seed(p["seed"])
    backbone = copy.deepcopy(student_backbone).to(device)
    head = ProjectionHead(feature_dim(backbone), feature_dim(teacher)).to(device)
    teacher = teacher.to(device).eval()
    queue = F.normalize(torch.randn(p["queue_size"], feature_dim(teacher), device=device), dim=1)
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=p["lr"],
                                  weight_decay=p["weight_decay"])
    pixels, order_gen = torch.from_numpy(images[:]), torch.Generator().manual_seed(p["seed"])  # a bare loop holds them all
    view_gen = torch.Generator(device=device).manual_seed(p["seed"] + 1)
    batch, pointer, seen = p["batch_size"], 0, 0
    start = time.perf_counter()
    for _ in range(p["epochs"]):
        order = torch.randperm(len(pixels), generator=order_gen)
        for i in range(0, len(pixels) - batch + 1, batch):
            x = pixels[order[i:i + batch]].to(device).float() / 127.5 - 1.0
            if p["augment"]:
                x = augment_batch(x, generator=view_gen)
            with torch.no_grad():
                target = embed(teacher, x)
            loss = seed_loss(head(embed(backbone, x)), target, queue, tau_s=p["tau_s"], tau_t=p["tau_t"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            slots = (pointer + torch.arange(batch, device=device)) % len(queue)
            queue[slots] = F.normalize(target, dim=1)
            pointer, seen = (pointer + batch) % len(queue), seen + batch
    return seen / (time.perf_counter() - start)


def loop_speed(project: Path, params: dict, device: str, repeats: int) -> tuple[float, float]:
    """(representation.distill images/s, bare loop images/s): medians of `repeats` alternating runs, SEED."""
    import torch

    from tasks.distill import unlabeled_images
    from tlpipe.distillation import representation
    from tlpipe.training import models
    from tlpipe.training import runtime

    p = {**params["distill"], "method": "seed"}
    ctx = stage_context(project, "distill", p, device, project / "data" / "distill")
    images, _ = unlabeled_images(ctx)
    teacher = models.load_backbone(project / "data" / "pretrain" / "backbone")
    runtime.seed_everything(p["seed"])
    student = models.build_backbone(in_channels=images.shape[1], **p["model"])
    device = torch.device(device)

    def ours(epochs: int) -> float:
        return representation.distill(student, teacher, images, epochs=epochs, batch_size=p["batch_size"], lr=p["lr"],
                                      weight_decay=p["weight_decay"], queue_size=p["queue_size"], tau_s=p["tau_s"],
                                      tau_t=p["tau_t"], seed=p["seed"], device=device, augment=p["augment"])[1]["images_per_s"]

    ours(1), bare_distill_loop(student, teacher, images, {**p, "epochs": 1}, device)  # one-off setup: not timed
    speeds = {"pipeline": [], "bare": []}
    for _ in range(repeats):
        speeds["pipeline"].append(ours(p["epochs"]))
        speeds["bare"].append(bare_distill_loop(student, teacher, images, p, device))
    return statistics.median(speeds["pipeline"]), statistics.median(speeds["bare"])


def report(results: dict[int, dict], methods: list[str]) -> None:
    seeds = sorted(results)
    print(f"\n{len(seeds)} seeds; test accuracy after fine-tuning on the labeled target train split (mean ± std)")
    print("| method | teacher | student | scratch student | retention (student / teacher) |\n|---|---|---|---|---|")
    for method in methods:
        rows = [results[s][method] for s in seeds]
        print(f"| {method} | {mean_std(r['finetuned']['teacher']['accuracy'] for r in rows)} | "
              f"{mean_std(r['finetuned']['student']['accuracy'] for r in rows)} | "
              f"{mean_std(r['scratch_accuracy'] for r in rows)} | {mean_std(r['retention']['finetuned'] for r in rows)} |")
    shots = list(results[seeds[0]][methods[0]]["transfer"]["teacher"])
    print("\nfew-shot linear probe on the test split: student (teacher) and retention, mean over seeds")
    print("| method | " + " | ".join(shots) + " |\n|---|" + "---|" * len(shots))
    for method in methods:
        rows = [results[s][method] for s in seeds]
        cells = []
        for k in shots:
            student = statistics.mean(r["transfer"]["student"][k]["mean"] for r in rows)
            teacher = statistics.mean(r["transfer"]["teacher"][k]["mean"] for r in rows)
            cells.append(f"{student:.3f} ({teacher:.3f}) = {statistics.mean(r['retention'][f'probe_{k}'] for r in rows):.1%}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    size = results[seeds[0]][methods[0]]["efficiency"]
    t, s = size["teacher"], size["student"]
    print("\nsize and speed on this machine (student vs teacher; timings: median over every seed and method's "
          "evaluate, each timing both models in alternating rounds)")
    print(f"parameters {s['parameters']:,} vs {t['parameters']:,} = {s['parameters_ratio']:.1%} (goal <= 25 %)")
    print(f"multiply-accumulates {s['macs']:,} vs {t['macs']:,} = {s['macs_ratio']:.1%}")
    runs = [results[seed][method]["efficiency"] for seed in seeds for method in methods]
    for label, key, speed, unit, goal in (("latency batch 1", "latency_ms", "latency_speedup", "{:.2f} ms", ""),
                                          ("throughput batch 64", "throughput_ips", "throughput_ratio", "{:.0f} img/s",
                                           " (goal >= 3x)")):
        ratios = [run["student"][speed] for run in runs]
        student = unit.format(statistics.median(run["student"][key] for run in runs))
        teacher = unit.format(statistics.median(run["teacher"][key] for run in runs))
        print(f"{label} {student} vs {teacher}: {statistics.median(ratios):.2f}x faster{goal}, "
              f"range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["seed", "compress", "mse"])
    parser.add_argument("--tiny", action="store_true", help="a minute-long configuration")
    parser.add_argument("--speed-repeats", type=int, default=3, help="alternating runs of the loop comparison")
    args = parser.parse_args()
    from runner.keys import device_name
    from project import paramfiles

    device = device_name()
    work = REPO / "bench" / ".work" / ("distill-tiny" if args.tiny else "distill")
    started = time.perf_counter()
    results = {seed: run_seed(work, seed, args.methods, args.tiny, device) for seed in range(args.seeds)}
    report(results, args.methods)
    project = work / "s0"
    pipeline, bare = loop_speed(project, paramfiles.load_all_params(project), device, args.speed_repeats)
    print(f"\ndistillation training (SEED, {device}): representation.distill {pipeline:.0f} img/s vs bare loop {bare:.0f} img/s "
          f"= {pipeline / bare:.1%} (goal >= 85 %; median of {args.speed_repeats} alternating runs)")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
