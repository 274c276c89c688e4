"""Does the pipeline use the accelerator, and does it give the same answers there? The stages on an
accelerator next to the CPU of the same machine, in one run: the stage functions in-process (no
orchestration), the same params and seeds, each device in its own copy of the project under
bench/.work/accelerator/. Printed:
  - per stage (after an untimed tiny run on each device, so one-off start-up is not counted): wall
    time on each device, training images/s where the stage trains, and the ratios,
  - what each stage produced on both (surrogate and teacher accuracy or loss, the kept source images
    and their overlap, test accuracy, few-shot probe). CUDA trains under bf16 autocast with
    channels_last, so its numbers differ a little from the CPU's, as any two devices' do,
  - the prune stage's surrogate inference against a bare loop on each device (goal >= 90 %).
With --photos N, instead: N JPEG photos at 224 px prepared with encoded storage, and ResNet-50 training
images/s on the first device (bf16 autocast, channels_last on CUDA) of the pipeline's loop (decoding and
RandomResizedCrop + flip in DataLoader workers) against a bare torchvision loop decoding in the same
workers and, on CUDA, a bare loop decoding batches with nvJPEG (`torchvision.io.decode_jpeg(device="cuda")`)
(goal >= 90 % of the faster bare loop).

    python bench/accelerator.py                          # auto (cuda > mps) vs cpu, the shipped params
    python bench/accelerator.py --ssl --until pretrain   # SimCLR surrogate + teacher, fm on k-means groups
    python bench/accelerator.py -s prune.method=grand --until prune
    python bench/accelerator.py --tiny --devices cpu cpu # a short check of the script itself
    python bench/accelerator.py --photos 8192            # ResNet-50 at 224 px, both decoders
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _stages import SSL, TINY, run_stage, surrogate_inference_line  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

# (stage, dotted key in its metrics, label): what a stage produced, compared across devices
FIGURES = [
    ("surrogate", "val_accuracy", "surrogate val accuracy"),
    ("surrogate", "loss", "surrogate SSL loss (last epoch)"),
    ("prune", "kept_train_images", "kept source images"),
    ("pretrain", "val_accuracy", "teacher val accuracy"),
    ("pretrain", "loss", "teacher SSL loss (last epoch)"),
    ("distill", "loss", "distillation loss (last epoch)"),
    ("evaluate", "finetuned.teacher.accuracy", "teacher fine-tuned test accuracy"),
    ("evaluate", "finetuned.student.accuracy", "student fine-tuned test accuracy"),
    *[("evaluate", f"transfer.{model}.{k}shot.mean", f"{model} {k}-shot probe")
      for model in ("teacher", "student") for k in (1, 3, 10)],
]


def deep_merge(*layers: dict) -> dict:
    """One {stage: {key: ...}} dict from several; a later layer wins, key by key at every depth."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            both = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = deep_merge(merged[key], value) if both else json.loads(json.dumps(value))
    return merged


def parse_overrides(texts: list[str]) -> dict:
    """`-s stage.key=value` overrides as a {stage: {key: ...}} dict (for `copy_project`)."""
    from project import paramfiles

    parsed: dict = {}
    for text in texts:
        stage, keys, value = paramfiles.parse_override(text)
        node = parsed.setdefault(stage, {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return parsed


def run_chain(project: Path, overrides: dict, device: str, until: str | None, *, quiet: bool = False) -> dict[str, dict]:
    """Runs the stages in dvc.yaml order (through `until`) in a fresh copy of the project; {stage: metrics}."""
    from runner.spec import load_pipeline
    from project import paramfiles

    if project.exists():
        shutil.rmtree(project)
    copy_project(REPO, project, overrides)
    params = paramfiles.load_all_params(project)
    metrics = {}
    for spec in load_pipeline(project):
        metrics[spec.name] = run_stage(project, spec.name, params[spec.name], device)
        if not quiet:
            print(f"  {device}: {spec.name} {metrics[spec.name]['wall_time_s']:.1f} s", flush=True)
        if spec.name == until:
            break
    return metrics


def lookup(metrics: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


def kept_overlap(projects: list[Path]) -> str:
    """Jaccard overlap of the kept source images, and the kept class names only one device chose."""
    import numpy as np

    kept = [set(np.load(p / "data" / "prune" / "kept_indices.npy").tolist()) for p in projects]
    text = f"{len(kept[0] & kept[1]) / max(len(kept[0] | kept[1]), 1):.3f}"
    selections = [json.loads((p / "data" / "prune" / "selection.json").read_text()) for p in projects]
    if all("kept_names" in s for s in selections):
        names = [set(s["kept_names"]) for s in selections]
        only = [", ".join(sorted(a - b)) or "-" for a, b in ((names[0], names[1]), (names[1], names[0]))]
        text += f" (classes only on the first: {only[0]}; only on the second: {only[1]})"
    return text


def report(devices: list[str], runs: list[dict[str, dict]], projects: list[Path]) -> None:
    a, b = devices
    print(f"\n| stage | {a} s | {b} s | {b} / {a} | {a} img/s | {b} img/s | {a} / {b} img/s |\n|---|---|---|---|---|---|---|")
    for stage in runs[0]:
        first, second = runs[0][stage], runs[1][stage]
        speed = [m.get("images_per_s") for m in (first, second)]
        speeds = (f"{speed[0]:.0f} | {speed[1]:.0f} | {speed[0] / speed[1]:.2f}" if None not in speed else "| |")
        print(f"| {stage} | {first['wall_time_s']:.1f} | {second['wall_time_s']:.1f} | "
              f"{second['wall_time_s'] / first['wall_time_s']:.2f} | {speeds} |")
    print(f"\n| what it produced | {a} | {b} |\n|---|---|---|")
    for stage, key, label in FIGURES:
        values = [lookup(run.get(stage, {}), key) for run in runs]
        if None not in values:
            print(f"| {label} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values) + " |")
    if all((p / "data" / "prune" / "kept_indices.npy").exists() for p in projects):
        print(f"\nkept source images, overlap (intersection / union): {kept_overlap(projects)}")


def print_inference(device: str, project: Path) -> None:
    """The prune stage's surrogate inference vs a bare loop, on `device` (supervised surrogates only)."""
    model_dir = project / "data" / "surrogate" / "model"
    if model_dir.exists():
        print(surrogate_inference_line(model_dir, project / "data" / "prepared" / "target", device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs=2, default=["auto", "cpu"], metavar=("FIRST", "SECOND"),
                        help="two device names (auto | cpu | cuda | cuda:N | mps); default auto cpu")
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE")
    parser.add_argument("--ssl", action="store_true", help="SimCLR surrogate and teacher; fm on k-means groups")
    parser.add_argument("--until", help="the last stage to run (default: all)")
    parser.add_argument("--tiny", action="store_true", help="a few-second configuration, to try the script")
    parser.add_argument("--photos", type=int, metavar="N", help="ResNet-50 on N 224-px JPEG photos instead (see above)")
    parser.add_argument("--batch-size", type=int, default=128, help="--photos: images per step")
    parser.add_argument("--workers", type=int, help="--photos: DataLoader workers (default: the cores less one, at most 8)")
    args = parser.parse_args()
    if args.photos:
        return photos_training(args)

    import torch

    from tlpipe.training import runtime

    devices = [str(runtime.resolve_device(name)) for name in args.devices]
    if devices[0] == devices[1]:
        print(f"both devices are {devices[0]}: this compares the device with itself")
    overrides = deep_merge(TINY if args.tiny else {}, SSL if args.ssl else {}, parse_overrides(args.overrides))
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"{name}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads; overrides {overrides or 'none'}")
    work = REPO / "bench" / ".work" / "accelerator"
    projects = [work / f"{i}-{device.replace(':', '')}" for i, device in enumerate(devices)]
    for project, device in zip(projects, devices):  # imports, CUDA context, kernel choice: paid once, not timed
        run_chain(project, deep_merge(overrides, TINY), device, args.until, quiet=True)
    runs = [run_chain(project, overrides, device, args.until) for project, device in zip(projects, devices)]
    report(devices, runs, projects)
    for device, project in zip(devices, projects):
        print_inference(device, project)


def photos_training(args) -> None:
    """The --photos comparison (module docstring) on the first of `--devices`."""
    import os
    import tempfile

    import torch

    import photos
    from tlpipe.data import storage
    from tlpipe.training import runtime

    device = runtime.resolve_device(args.devices[0])
    workers = args.workers if args.workers is not None else max(1, min(8, (os.cpu_count() or 2) - 1))
    name = torch.cuda.get_device_name() if device.type == "cuda" else str(device)
    with tempfile.TemporaryDirectory(prefix="tlpipe-photos-") as tmp:
        files = photos.make_folder(Path(tmp) / "folder", args.photos, 100)
        photos.store(Path(tmp) / "folder", Path(tmp) / "prepared")
        split = storage.load_prepared(Path(tmp) / "prepared")["train"]
        speeds = photos.compare_training(files, split, device=device, model="resnet50", classes=100,
                                         batch_size=args.batch_size, workers=workers, repeats=3,
                                         gpu_decode=device.type == "cuda")
    best = max((k for k in speeds if k != "pipeline"), key=speeds.get)
    print(f"{name}: ResNet-50 at 224 px, batch {args.batch_size}, {workers} loader workers, {args.photos} photos; "
          + ", ".join(f"{k} {v:.0f} img/s" for k, v in speeds.items())
          + f"; pipeline / {best} = {speeds['pipeline'] / speeds[best]:.1%} (goal >= 90 %)")


if __name__ == "__main__":
    main()
