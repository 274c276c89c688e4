"""How the stages that read the source scale with its size: wall time, images per second, peak RSS of
the stage's process and the size on disk, for the `extended` glyph source (400 classes) at several
sizes, plus the streaming training loop against the in-memory one at the smallest size.

    python bench/scale.py                          # 20k, 200k and 1M images at 32 px, 20k at 64 px
    python bench/scale.py --sizes 50 500           # images per class (400 classes)
    python bench/scale.py --tiny                   # a minute: 4k images, to try the script
    python bench/scale.py --image-size 224 --sizes 10 50 --wide 0 --no-loops   # colour glyphs at 224 px, encoded

Each stage runs in a fresh process (`_stages.run_stage`: the pipeline's runner with nothing recorded,
no Prefect, MLflow or DVC commit) on a fresh copy of the project, one epoch where it trains; its time is the
stage's own (imports excluded). Peak RSS is the process's own high-water mark (VmHWM), read as the
stage ends (prepare's worker processes are not in it: each holds one unit). Prune runs feature mapping (`fm`),
which reads every source image through the surrogate. The table and a plot go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _stages import QUIET  # noqa: E402



def source_stages() -> tuple[str, ...]:
    """The stages dvc.yaml runs through distill: those whose work grows with the source (distill learns
    from the teacher that the pruned source trained)."""
    from runner.spec import load_pipeline, select_stages

    return tuple(spec.name for spec in select_stages(load_pipeline(REPO), "distill"))


STAGES = source_stages()


def point_params(images_per_class: int, image_size: int) -> dict:
    """Above 64 px: glyphs in colour (3 channels) on textured backgrounds, stored encoded (storage auto)."""
    one_epoch = {"epochs": 1}
    channels = 3 if image_size > 64 else 1
    return {"prepare": {"image_size": image_size, "channels": channels,
                        "source": {"charset": "extended", "images_per_class": images_per_class}},
            "surrogate": one_epoch, "pretrain": one_epoch, "distill": one_epoch, "prune": {"method": "fm"}}


def stage_process(project: str, stage: str) -> None:
    """In the child: runs one stage and prints its figures as JSON."""
    from _stages import run_stage
    from runner.keys import device_name
    from project import paramfiles
    from tlpipe.data import storage

    started = time.perf_counter()
    metrics = run_stage(Path(project), stage, paramfiles.load_stage_params(Path(project), stage), device_name())
    wall = time.perf_counter() - started
    peak = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmHWM:"))
    if "images_seen" not in metrics:  # a stage that does not train reads every source image once
        source = storage.load_prepared(Path(project) / "data" / "prepared" / "source")
        metrics["images_seen"] = len(source["train"]) + len(source["val"])
    print(json.dumps({"stage": stage, "wall_s": wall, "stage_s": metrics["wall_time_s"], "peak_rss_mb": peak / 1024,
                      "images": metrics["images_seen"]}))


def disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(images_per_class: int, image_size: int, scratch: Path, stages=STAGES) -> list[dict]:
    from flows.workspace import copy_project
    from project import paramfiles

    project = scratch / f"p{images_per_class}-{image_size}"
    copy_project(REPO, project, point_params(images_per_class, image_size))
    paramfiles.load_all_params(project)  # the params are valid
    rows = []
    for stage in stages:
        done = subprocess.run([sys.executable, __file__, "--stage", stage, "--project", str(project)],
                              env={**os.environ, **QUIET}, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{stage} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row.update(source=images_per_class * 400, image_size=image_size,
                   images_per_s=row["images"] / row["stage_s"] if row["images"] else None,
                   disk_mb=disk_mb(project / "data" / "prepared" / "source") if stage == "prepare" else None)
        print(f"  {row['source']:>9,} imgs {image_size:>3} px  {stage:<9} {row['stage_s']:7.1f} s  "
              f"{row['peak_rss_mb']:7.0f} MB" + (f"  {row['images_per_s']:8.0f} img/s" if row["images_per_s"] else ""),
              flush=True)
        rows.append(row)
    return rows


def loop_comparison(images_per_class: int, scratch: Path, repeat: int = 3) -> dict:
    """One training epoch of the surrogate's model from whole arrays, from the mapped data set, and from
    it through 2 DataLoader worker processes, in turns; images/s of each (median)."""
    import statistics

    import torch

    from project import paramfiles
    from tlpipe.data import storage
    from tlpipe.data import images
    from tlpipe.training import models
    from tlpipe.training import runtime
    from tlpipe.training import loops

    project = scratch / f"p{images_per_class}-32"
    params = paramfiles.load_stage_params(project, "surrogate")
    split = storage.load_prepared(project / "data" / "prepared" / "source")["train"]
    mapped = images.read(split)
    arrays = storage.to_arrays(split)
    speeds: dict[str, list[float]] = {"arrays": [], "mapped": [], "mapped_2_workers": []}
    for r in range(repeat):
        for name in list(speeds)[r % 3:] + list(speeds)[: r % 3]:
            pixels, labels = arrays if name == "arrays" else mapped
            os.environ["TLPIPE_LOADER_WORKERS"] = "2" if name == "mapped_2_workers" else "0"
            runtime.seed_everything(0)
            model = models.Classifier(models.build_backbone(in_channels=1, **params["model"]), len(split.features["label"].names))
            m = loops.train_classifier(model, pixels, labels, epochs=1, batch_size=params["batch_size"], lr=1e-3,
                                       weight_decay=0.0, seed=0, device=torch.device("cpu"))
            speeds[name].append(m["images_per_s"])
    os.environ.pop("TLPIPE_LOADER_WORKERS")
    result = {name: statistics.median(v) for name, v in speeds.items()}
    result["ratio"] = result["mapped"] / result["arrays"]
    return result


def plot(rows: list[dict], path: Path, image_size: int = 32) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rss, cost) = plt.subplots(1, 2, figsize=(10, 4))
    for stage in STAGES:
        points = sorted((r["source"], r) for r in rows if r["stage"] == stage and r["image_size"] == image_size)
        xs = [x for x, _ in points]
        rss.plot(xs, [r["peak_rss_mb"] for _, r in points], marker="o", label=stage)
        cost.plot(xs, [r["stage_s"] / r["source"] * 1e3 for _, r in points], marker="o", label=stage)
    for axis, label in ((rss, "peak RSS of the stage (MB)"), (cost, "ms per source image")):
        axis.set_xscale("log")
        axis.set_xlabel(f"source images ({image_size} px)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    rss.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 500, 2500], help="images per class (400 classes)")
    parser.add_argument("--wide", type=int, default=50, help="images per class of the 64 px point (0: none)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="image size of the --sizes points (above 64: colour glyphs, encoded storage)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the first stages only (each needs those before it)")
    parser.add_argument("--no-loops", action="store_true", help="skip the arrays vs mapped loop comparison")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return stage_process(args.project, args.stage)
    sizes, wide = ([10], 10) if args.tiny else (args.sizes, args.wide)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlpipe-scale-") as scratch:
        stages = STAGES[: max(STAGES.index(s) for s in args.stages) + 1]
        rows = [row for size in sizes for row in measure(size, args.image_size, Path(scratch), stages)]
        if wide:
            rows += measure(wide, 64, Path(scratch), stages)
        loops = None if args.no_loops else loop_comparison(sizes[0], Path(scratch))
    if loops:
        print(f"\none training epoch at {sizes[0] * 400:,} images: arrays {loops['arrays']:.0f} img/s, "
          f"mapped {loops['mapped']:.0f} img/s = {loops['ratio']:.1%} (goal >= 95 %), "
          f"mapped with 2 loader workers {loops['mapped_2_workers']:.0f} img/s")
    for stage in STAGES:
        points = sorted((r["source"], r) for r in rows if r["stage"] == stage and r["image_size"] == args.image_size)
        if len(points) > 1:
            (_, small), (_, large) = points[0], points[-1]
            print(f"{stage:<9} peak RSS {large['peak_rss_mb']:.0f} MB at {large['source']:,} vs "
                  f"{small['peak_rss_mb']:.0f} MB at {small['source']:,} = {large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x")
    name = "scale-tiny" if args.tiny else "scale" if stages == STAGES else f"scale-{'-'.join(stages)}"
    name += f"-{args.image_size}px" if args.image_size != 32 else ""
    (out / f"{name}.json").write_text(json.dumps({"rows": rows, "loops": loops}, indent=1))
    plot(rows, out / f"{name}.png", args.image_size)
    print(f"results: bench/results/{name}.json, bench/results/{name}.png")


if __name__ == "__main__":
    main()
