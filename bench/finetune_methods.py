"""Fine-tuning methods on few labels, side by side: test accuracy (mean ± std over seeds), the paired
difference from `full` (same seed: same head initialisation and batches), and wall time.

    python bench/finetune_methods.py                 # every method, 3 seeds, both targets
    python bench/finetune_methods.py --seeds 0 1 2 3 4 --methods full l2sp
    python bench/finetune_methods.py --methods l2sp -s l2sp.alpha=0.01   # another setting of a method

Both targets start from the student the last default run distilled (`data/distill/backbone`, `make run`
first) with the recipe of params/finetune.yaml (epochs, lr, batch size, each method's own params):
- digits: the built-in target's split (10 labeled images per class, 539 test images);
- greek: 24 Greek capital letters rendered like the built-in glyphs (fonts inside matplotlib, the
  digits' 8x8 degradation on every image), 10 labeled per class and 30 test per class, and 40 more per
  class (960) from another seed as its unlabeled split. The student's teacher was trained on ASCII
  glyphs, so this is a near-domain target with classes it never saw.
fixmatch trains on the unlabeled split (digits: the run's 1,158 unlabeled target images), never on test.
Results: the table on stdout and bench/results/finetune_methods.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _stages  # noqa: E402,F401  (offline and quiet, before the Hugging Face libraries load)

GREEK = "ΓΔΘΛΞΠΣΦΨΩ" + "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"  # 24 capitals (Alpha, Beta, ... look like Latin letters the teacher saw)


def digits_target():
    from tlpipe.data import storage

    target = storage.load_prepared(REPO / "data" / "prepared" / "target")
    train, test, unlabeled = (storage.to_arrays(target[split]) for split in ("train", "test", "unlabeled"))
    return train, test, unlabeled[0], 10


def greek_target(shots: int = 10, tests: int = 30, unlabeled: int = 40, seed: int = 0):
    import numpy as np

    from tlpipe.data.glyphs import render_class

    train_x, train_y, test_x, test_y, unlabeled_x = [], [], [], [], []
    for label, char in enumerate(GREEK):
        pixels, _ = render_class(char, count=shots + tests, seed=seed, image_size=32, degrade_fraction=1.0)
        train_x.append(pixels[:shots, None]), test_x.append(pixels[shots:, None])
        more, _ = render_class(char, count=unlabeled, seed=seed + 1, image_size=32, degrade_fraction=1.0)
        unlabeled_x.append(more[:, None])  # drawn apart from train and test
        train_y += [label] * shots
        test_y += [label] * tests
    as_arrays = lambda x, y: (np.concatenate(x), np.array(y, dtype=np.int64))  # noqa: E731
    return as_arrays(train_x, train_y), as_arrays(test_x, test_y), np.concatenate(unlabeled_x), len(GREEK)


def run(method: str, seed: int, backbone, train, test, unlabeled, classes: int, recipe: dict) -> tuple[float, float]:
    import torch

    from tlpipe import registry
    from tlpipe.training import inference, loops

    params = {**recipe, "method": method}
    start = time.perf_counter()
    model, _ = loops.finetune(backbone, *train, num_classes=classes, method=method,
                              method_params=registry.finetune_method_params(params), epochs=recipe["epochs"],
                              batch_size=recipe["batch_size"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                              seed=seed, device=torch.device("cpu"), unlabeled=unlabeled)
    wall = time.perf_counter() - start
    logits = inference.predict_logits(model, test[0], batch_size=256, device=torch.device("cpu"))
    return float((logits.argmax(1) == test[1]).mean()), wall


def main() -> None:
    from tlpipe import registry

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(registry.FINETUNING), choices=list(registry.FINETUNING))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--targets", nargs="+", default=["digits", "greek"], choices=["digits", "greek"])
    parser.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a finetune param for this benchmark only, e.g. l2sp.alpha=0.01")
    args = parser.parse_args()

    from project import paramfiles
    from tlpipe.training import models

    student = REPO / "data" / "distill" / "backbone"
    if not (student / "config.json").is_file():
        raise SystemExit("no distilled student in data/distill/backbone: run `make run` first")
    recipe = paramfiles.load_stage_params(REPO, "finetune")
    for override in args.overrides:  # never written to params/
        import yaml

        key, _, value = override.partition("=")
        *path, last = key.split(".")
        section = recipe
        for part in path:
            section = section[part]
        if last not in section:
            raise SystemExit(f"-s {override}: params/finetune.yaml has no {key}")
        section[last] = yaml.safe_load(value)
    backbone = models.load_backbone(student)
    results = {}
    for target in args.targets:
        train, test, unlabeled, classes = digits_target() if target == "digits" else greek_target()
        for method in args.methods:
            runs = [run(method, seed, backbone, train, test, unlabeled, classes, recipe) for seed in args.seeds]
            results.setdefault(target, {})[method] = {"accuracy": [a for a, _ in runs], "wall_s": [w for _, w in runs]}
            print(f"  {target:<7} {method:<7} " + " ".join(f"{a:.4f}" for a, _ in runs), flush=True)
    print(f"\n{'target':<7} {'method':<7} {'test accuracy':>17} {'minus full (paired)':>21} {'wall s':>7}")
    for target, by_method in results.items():
        full = by_method.get("full")
        for method, r in by_method.items():
            acc = r["accuracy"]
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            line = f"{target:<7} {method:<7} {statistics.mean(acc):>9.4f} ± {spread:.4f}"
            if full is not None and method != "full":
                diff = [a - b for a, b in zip(acc, full["accuracy"])]
                diff_spread = statistics.stdev(diff) if len(diff) > 1 else 0.0
                line += f" {statistics.mean(diff):>+11.4f} ± {diff_spread:.4f}"
            else:
                line += " " * 21
            print(line + f" {statistics.mean(r['wall_s']):>7.1f}")
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "finetune_methods" + ("-" + "-".join(o.replace("=", "_") for o in args.overrides) if args.overrides else "")
    (out / f"{name}.json").write_text(json.dumps({"seeds": args.seeds, "recipe": recipe, "results": results},
                                                          indent=1, ensure_ascii=False))
    print(f"results: bench/results/{name}.json")


if __name__ == "__main__":
    main()
