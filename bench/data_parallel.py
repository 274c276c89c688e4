"""The built-in pretrain with one and with two training processes (`pretrain.nproc`, PyTorch's launcher,
gloo on CPU, NCCL on CUDA) at the same global batch, for several seeds: validation accuracy, training
images per second and the stage's wall time.

    python bench/data_parallel.py                  # seeds 0 1 2, nproc 1 and 2 (about 6 minutes on 2 cores)
    python bench/data_parallel.py --nproc 1 2 4    # on a machine with 4 GPUs (TLPIPE_DEVICE=cuda)

Each point is `tlpipe run --until pretrain` on one fresh copy of the project (upstream stages computed
once, then cached); the figures come from the run's record (`.tlpipe/cache/pretrain/<key>.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _stages import QUIET  # noqa: E402

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))


def point(project: Path, seed: int, nproc: int, env: dict) -> dict:
    done = subprocess.run([TLPIPE, "run", "--project", str(project), "--until", "pretrain",
                           "-s", f"pretrain.seed={seed}", "-s", f"pretrain.nproc={nproc}"],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"seed {seed}, nproc {nproc} failed:\n{done.stderr[-3000:]}")
    record = max((project / ".tlpipe" / "cache" / "pretrain").glob("*.json"), key=lambda p: p.stat().st_mtime)
    metrics = json.loads(record.read_text())["metrics"]
    return {"seed": seed, "nproc": nproc, "val_accuracy": metrics["val_accuracy"],
            "images_per_s": metrics["images_per_s"], "train_time_s": metrics["train_time_s"],
            "wall_time_s": metrics["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    from flows.workspace import copy_project

    rows = []
    with tempfile.TemporaryDirectory(prefix="tlpipe-data-parallel-") as scratch:
        project = Path(scratch) / "project"
        copy_project(REPO, project, {})
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        env = {**os.environ, **QUIET, "PREFECT_HOME": str(Path(scratch) / "prefect"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
        for seed in args.seeds:
            for nproc in args.nproc:  # alternating, so both see the machine alike
                rows.append(point(project, seed, nproc, env))
                print(json.dumps(rows[-1]), flush=True)
    print("\n| nproc | val accuracy (seeds) | mean | images/s (median) | training s (median) |")
    print("|---:|---|---:|---:|---:|")
    for nproc in args.nproc:
        mine = [r for r in rows if r["nproc"] == nproc]
        accuracies = [r["val_accuracy"] for r in mine]
        print(f"| {nproc} | {', '.join(f'{a:.3f}' for a in accuracies)} | {statistics.mean(accuracies):.3f} | "
              f"{statistics.median(r['images_per_s'] for r in mine):,.0f} | "
              f"{statistics.median(r['train_time_s'] for r in mine):.1f} |")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "data_parallel.json").write_text(json.dumps(rows, indent=1))
    print("results: bench/results/data_parallel.json")


if __name__ == "__main__":
    main()
