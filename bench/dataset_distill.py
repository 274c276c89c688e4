"""Does distilling the source into a few synthetic images (KRR-ST) pretrain a student as well as the
images themselves would? KRR-ST sets of two sizes against the paper's baselines of the same size (a
random subset and a k-means subset of the pruned source, each with the teacher's representations as
targets and the same student recipe) and against the SEED student, over several seeds.

For every seed, one project copy in bench/.work/dataset_distill/s<seed>/ runs prepare -> surrogate ->
prune -> pretrain once (the stage functions, in-process, no orchestration), then for every variant
distill -> finetune -> evaluate. Printed (mean ± std over seeds):
  - the student's few-shot linear-probe accuracy on the target test split (1/3/10 shots),
  - its test accuracy after fine-tuning on the labeled target train split,
  - the cost: distillation (the synthetic set's outer loop; SEED: the whole stage) and the student's
    pretraining on the set, against the teacher's pretraining on the pruned source.

    python bench/dataset_distill.py                    # 3 seeds, sizes 100 and 500
    python bench/dataset_distill.py --seeds 1 --sizes 100 --steps 300
    python bench/dataset_distill.py --tiny             # a few minutes, to try the script
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _stages import TINY, mean_std, run_stage  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

UPSTREAM = ("prepare", "surrogate", "prune", "pretrain")
PER_VARIANT = ("distill", "finetune", "evaluate")
SHOTS = ("1shot", "3shot", "10shot")


def variants(sizes: list[int], steps: int | None, epochs: int | None = None) -> dict[str, dict]:
    """name -> distill params changed: KRR-ST and its two baselines per size (no outer step: the
    initial set as drawn), and the SEED student."""
    found = {}
    for size in sizes:
        krr = {"synthetic_size": size, **({"steps": steps} if steps is not None else {}),
               **({"epochs": epochs} if epochs is not None else {})}
        found[f"KRR-ST {size}"] = {"method": "krr_st", "krr_st": krr}
        found[f"random {size}"] = {"method": "krr_st", "krr_st": {**krr, "steps": 0}}
        found[f"k-means {size}"] = {"method": "krr_st", "krr_st": {**krr, "steps": 0, "init": "kmeans"}}
    found["SEED (unlabeled target + pruned source)"] = {"method": "seed"}
    return found


def merged(params: dict, changes: dict) -> dict:
    return {**params, **{k: ({**params[k], **v} if isinstance(v, dict) else v) for k, v in changes.items()}}


def run_seed(work: Path, seed: int, chosen: dict[str, dict], tiny: bool, device: str) -> dict:
    """{variant: figures} for one seed, and the teacher's pretraining cost under "teacher"."""
    from project import paramfiles

    project = work / f"s{seed}"
    if project.exists():
        shutil.rmtree(project)
    overrides = {stage: dict(values) for stage, values in (TINY if tiny else {}).items()}
    for stage in ("prune", "pretrain", "distill", "finetune"):
        overrides.setdefault(stage, {})["seed"] = seed
    copy_project(REPO, project, overrides)
    params = paramfiles.load_all_params(project)
    upstream = {stage: run_stage(project, stage, params[stage], device) for stage in UPSTREAM}
    pretrain = upstream["pretrain"]
    results = {"teacher": {"pretrain_s": pretrain.get("train_time_s", pretrain["wall_time_s"]),
                           "source_images": upstream["prune"]["kept_train_images"]}}
    for name, changes in chosen.items():
        figures = {stage: run_stage(project, stage, merged(params[stage], changes) if stage == "distill"
                                    else params[stage], device) for stage in PER_VARIANT}
        d, e = figures["distill"], figures["evaluate"]
        results[name] = {
            "probe": {k: e["transfer"]["student"][k]["mean"] for k in SHOTS},
            "finetuned": e["finetuned"]["student"]["accuracy"],
            "distill_s": d.get("synthetic_time_s", d["wall_time_s"]) if d["method"] == "krr_st" else d["wall_time_s"],
            "student_s": d.get("student_time_s", 0.0),
            "krr_loss": [d.get("krr_loss_first"), d.get("krr_loss")],
        }
        print(f"seed {seed} {name}: " + json.dumps(results[name]), flush=True)
    return results


def report(results: dict[int, dict], names: list[str]) -> None:
    seeds = sorted(results)
    teacher_s = statistics.mean(results[s]["teacher"]["pretrain_s"] for s in seeds)
    print(f"\n{len(seeds)} seeds, {results[seeds[0]]['teacher']['source_images']:,} pruned source images; "
          f"the student on the target (mean ± std); cost in seconds on this machine, "
          f"against the teacher's pretraining on the pruned source ({teacher_s:.0f} s)")
    print("| student pretrained on | 1-shot | 3-shot | 10-shot | fine-tuned | distillation s | student s | "
          "cost / teacher pretraining |\n|---|---|---|---|---|---|---|---|")
    for name in names:
        rows = [results[s][name] for s in seeds]
        cost = statistics.mean(r["distill_s"] + r["student_s"] for r in rows)
        print(f"| {name} | " + " | ".join(mean_std(r["probe"][k] for r in rows) for k in SHOTS)
              + f" | {mean_std(r['finetuned'] for r in rows)} | {statistics.mean(r['distill_s'] for r in rows):.1f} | "
              f"{statistics.mean(r['student_s'] for r in rows):.1f} | {cost / teacher_s:.2f} |")
    krr = [n for n in names if n.startswith("KRR-ST")]
    for name in krr:
        size = name.split()[-1]
        for baseline in (f"random {size}", f"k-means {size}"):
            if baseline in names:
                diffs = {k: [results[s][name]["probe"][k] - results[s][baseline]["probe"][k] for s in seeds] for k in SHOTS}
                wins = sum(d > 0 for k in SHOTS for d in diffs[k])
                print(f"{name} - {baseline}, probe paired by seed: "
                      + ", ".join(f"{k} {statistics.mean(diffs[k]):+.3f}" for k in SHOTS)
                      + f" (ahead in {wins} of {len(SHOTS) * len(seeds)} pairs)")
        losses = [results[s][name]["krr_loss"] for s in seeds]
        print(f"{name}: KRR loss first round {statistics.mean(l[0] for l in losses):.3f} -> last "
              f"{statistics.mean(l[1] for l in losses):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--steps", type=int, help="KRR-ST outer steps (default: params/distill.yaml)")
    parser.add_argument("--tiny", action="store_true", help="a few-minute configuration, to try the script")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write the per-seed figures as JSON there")
    args = parser.parse_args()
    chosen = variants([20], 20, epochs=20) if args.tiny else variants(args.sizes, args.steps)
    work = REPO / "bench" / ".work" / "dataset_distill"
    results = {seed: run_seed(work, seed, chosen, args.tiny, args.device) for seed in range(args.seeds)}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    report(results, list(chosen))


if __name__ == "__main__":
    main()
