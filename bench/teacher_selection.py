"""Which teachers to distil together? OSBORN's choice of k teachers among candidates against the k
best by LogME, judged by the student distilled from them, over several seeds.

The candidates are teachers of this project's source pretrained differently (pruning method, ratio,
self-supervised mode), made once in bench/.work/teacher_selection/ with the stage functions
(in-process, no orchestration) and kept in candidates/<name>/. Then for every seed and selector:
distill (teachers: {select, from: the candidates, size: k}) -> finetune -> evaluate. Printed:
  - which teachers each selector chose, and every candidate's LogME and OSBORN terms,
  - the student's few-shot probe (1/3/10 shots) and fine-tuned accuracy (mean ± std over seeds),
  - the selection's own time (features, transport) within the distill stage.

    python bench/teacher_selection.py                 # 5 candidates, k = 2, 3 seeds
    python bench/teacher_selection.py --size 3 --seeds 1
    python bench/teacher_selection.py --tiny          # a few minutes, to try the script
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _stages import TINY, mean_std, run_stage  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

# name -> (prune changes, pretrain changes): teachers a team would have from its sweeps
CANDIDATES = {
    "lm-0.8": ({"method": "lm", "ratio": 0.8}, {}),
    "lm-0.5": ({"method": "lm", "ratio": 0.5}, {}),
    "random-0.8": ({"method": "random", "ratio": 0.8}, {}),
    "fm-0.9": ({"method": "fm", "ratio": 0.9}, {}),
    "simclr-lm-0.8": ({"method": "lm", "ratio": 0.8}, {"mode": "simclr"}),
}
SELECTORS = ("osborn", "logme")
SHOTS = ("1shot", "3shot", "10shot")


def make_candidates(project: Path, params: dict, device: str) -> dict[str, Path]:
    """Pretrains every candidate teacher once; name -> its folder (a pretrain output, backbone/ inside)."""
    folders = {}
    for name, (prune, pretrain) in CANDIDATES.items():
        run_stage(project, "prune", {**params["prune"], **prune}, device)
        run_stage(project, "pretrain", {**params["pretrain"], **pretrain}, device)
        folders[name] = project / "candidates" / name
        shutil.copytree(project / "data" / "pretrain", folders[name])
    for stage in ("prune", "pretrain"):  # the default pruning again: the images the student is distilled on
        run_stage(project, stage, params[stage], device)
    return folders


def run_selector(project: Path, params: dict, folders: dict[str, Path], select: str, size: int, seed: int,
                 device: str) -> dict:
    teachers = {"select": select, "from": [str(folders[name]) for name in folders], "size": size}
    distill = run_stage(project, "distill", {**params["distill"], "teachers": teachers, "seed": seed}, device)
    record = json.loads((project / "data" / "distill" / "selection.json").read_text())
    run_stage(project, "finetune", {**params["finetune"], "seed": seed}, device)
    evaluate = run_stage(project, "evaluate", params["evaluate"], device)
    by_path = {str(path): name for name, path in folders.items()}
    return {"chosen": [by_path[path] for path in record["chosen"]],
            "candidates": {by_path[path]: terms for path, terms in record["candidates"].items()},
            "probe": {k: evaluate["transfer"]["student"][k]["mean"] for k in SHOTS},
            "finetuned": evaluate["finetuned"]["student"]["accuracy"], "distill_s": distill["wall_time_s"]}


def report(results: dict[int, dict], size: int) -> None:
    seeds = sorted(results)
    first = results[seeds[0]]["osborn"]["candidates"]
    print("\ncandidates (seed 0): LogME on the target train split; OSBORN's domain (W_D) and task (W_T) terms")
    print("| candidate | LogME | W_D | W_T |\n|---|---|---|---|")
    for name, terms in first.items():
        print(f"| {name} | {terms['logme']:.4f} | {terms.get('domain', float('nan')):.4f} | "
              f"{terms.get('task', float('nan')):.4f} |")
    print(f"\n{len(seeds)} seeds, {size} teachers chosen of {len(first)}; the distilled student (mean ± std)")
    print("| selector | chosen (per seed) | 1-shot | 3-shot | 10-shot | fine-tuned | distill stage s |\n"
          "|---|---|---|---|---|---|---|")
    for select in SELECTORS:
        rows = [results[s][select] for s in seeds]
        chosen = "; ".join(", ".join(r["chosen"]) for r in rows)
        print(f"| {select} | {chosen} | " + " | ".join(mean_std(r["probe"][k] for r in rows) for k in SHOTS)
              + f" | {mean_std(r['finetuned'] for r in rows)} | {statistics.mean(r['distill_s'] for r in rows):.0f} |")
    same = sum(set(results[s]["osborn"]["chosen"]) == set(results[s]["logme"]["chosen"]) for s in seeds)
    print(f"the two selectors chose the same set in {same} of {len(seeds)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2, help="teachers to choose")
    parser.add_argument("--tiny", action="store_true", help="a few-minute configuration, to try the script")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="write the per-seed figures as JSON there")
    args = parser.parse_args()
    from project import paramfiles

    project = REPO / "bench" / ".work" / "teacher_selection"
    if project.exists():
        shutil.rmtree(project)
    copy_project(REPO, project, TINY if args.tiny else {})
    params = paramfiles.load_all_params(project)
    started = time.perf_counter()
    for stage in ("prepare", "surrogate"):
        run_stage(project, stage, params[stage], args.device)
    folders = make_candidates(project, params, args.device)
    print(f"{len(folders)} candidate teachers in {time.perf_counter() - started:.0f} s", flush=True)
    results = {}
    for seed in range(args.seeds):
        results[seed] = {select: run_selector(project, params, folders, select, args.size, seed, args.device)
                         for select in SELECTORS}
        print(f"seed {seed}: " + json.dumps({s: {k: v for k, v in r.items() if k != "candidates"}
                                              for s, r in results[seed].items()}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    report(results, args.size)


if __name__ == "__main__":
    main()
