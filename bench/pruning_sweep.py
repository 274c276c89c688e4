"""Does target-aware pruning lose target accuracy, and what does it save? The pruning sweep on the
built-in benchmark, with paired differences, cost against the ideal, and the pruning stage's own speed.

Runs `tlpipe sweep` on a copy of this project kept in bench/.work/<name>/ (so a second call reuses
every finished point through the store), then prints:
  - 1- and 3-shot teacher linear-probe accuracy per method and ratio (mean ± std over seeds),
  - LM - random and LM - full, paired by seed (mean, std, min, max over seeds), and every method - full
    (mean, min, max),
  - pretraining time and images seen at ratio r over the full source, next to the ideal 1 - r,
  - the end-to-end cost with the surrogate, and surrogate inference in `prune` vs a bare loop.

    python bench/pruning_sweep.py                                   # ascii, supervised, 5 seeds
    python bench/pruning_sweep.py --charset extended
    python bench/pruning_sweep.py --ssl                             # SimCLR surrogate + teacher, fm vs random
    python bench/pruning_sweep.py --seeds 3 --methods lm random --ratios 0.8   # a smaller grid
    python bench/pruning_sweep.py --charset extended --report-only A B     # two sweeps' results as one
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _stages import QUIET, SSL, surrogate_inference_line  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

SUPERVISED_METHODS = ["lm", "lm_soft", "lm_balanced", "lm_bottom", "random", "random_samples", "el2n", "grand",
                      "moderate", "fm", "fm_samples"]
SSL_METHODS = ["fm", "fm_samples", "random", "random_samples"]


def run_sweep(args, work: Path) -> Path:
    """The sweep through the CLI, on a project copy with the charset (and SSL modes) set; returns its results."""
    overrides = {"prepare": {"source": {"charset": args.charset}}, **(SSL if args.ssl else {})}
    if not (work / "dvc.yaml").exists():
        copy_project(REPO, work, overrides)
    else:  # keep the store; refresh code and params from this checkout
        for folder in ("project", "tasks", "src", "params"):
            shutil.rmtree(work / folder)
        copy_project(REPO, work, overrides)
    sweep_file = work / "bench-sweep.json"
    sweep_file.write_text(json.dumps({
        "methods": args.methods or (SSL_METHODS if args.ssl else SUPERVISED_METHODS),
        "ratios": args.ratios, "seeds": list(range(args.seeds)), "full_source": not args.no_full_source, "set": {},
        "cluster": {"address": None, "n_workers": args.workers, "threads_per_worker": args.threads},
    }))
    env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "PREFECT_HOME": str(work / ".prefect")}
    before = set((work / "data" / "sweeps").glob("*")) if (work / "data" / "sweeps").exists() else set()
    started = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("tlpipe")), "sweep", "--project", str(work),
                           "--file", str(sweep_file)], env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"tlpipe sweep failed:\n{done.stderr[-4000:]}")
    print(f"sweep wall time {time.perf_counter() - started:.0f} s")
    return max(set((work / "data" / "sweeps").glob("*")) - before)


def surrogate_cost(work: Path) -> tuple[dict, Path]:
    """(surrogate metrics, timings included, and its store entry) from the sweep's store."""
    entries = [p for p in (work / ".tlpipe" / "store" / "surrogate").iterdir() if (p / "manifest.json").is_file()]
    newest = max(entries, key=lambda p: p.stat().st_mtime)
    return json.loads((newest / "manifest.json").read_text())["metrics"], newest


def load_results(path: Path):
    """A results table from a sweep's folder (results.parquet) or a results.csv (as kept in bench/results),
    in the current timing columns."""
    import pandas as pd

    from project import sweeps

    table = pd.read_parquet(path / "results.parquet") if path.is_dir() else pd.read_csv(path)
    return sweeps.upgrade_timing(table)


def merge_results(paths: list[Path], work: Path) -> Path:
    """One results folder (table, summary, plots) from several sweeps: grids that are not one product (a
    ratio for some methods only) are run as separate sweeps. A point in a later table replaces the same
    point in an earlier one. Merge only tables from the same code on the same machine: pairing by seed
    assumes the same pretraining run, and float results differ between CPUs."""
    import pandas as pd

    from flows.sweep import write_results
    from project import sweeps

    table = pd.concat([load_results(path) for path in paths], ignore_index=True)
    table = table.drop_duplicates(["method", "ratio", "seed"], keep="last")
    return write_results(work, f"merged-{time.strftime('%Y%m%d-%H%M%S')}", table.to_dict("records"),
                         {"full_source": bool((table.method == sweeps.FULL).any())})


def report(results: Path, work: Path, ssl: bool) -> None:
    from project import sweeps

    table = load_results(results)
    shots = sweeps.probe_columns(table.columns)
    print(f"\nresults: {results}\n")
    print("teacher few-shot linear-probe accuracy on the target test split, mean ± std over seeds")
    summary = {c: sweeps.summarise(table, c).set_index(["method", "ratio"]) for c in shots}
    print("| method | ratio | " + " | ".join(shots) + " |\n|---|---|" + "---|" * len(shots))
    for method, ratio in summary[shots[0]].index:
        cells = [f"{summary[c].loc[(method, ratio), 'mean']:.3f} ± {summary[c].loc[(method, ratio), 'std']:.3f}"
                 for c in shots]
        print(f"| {method} | {ratio:.1f} | " + " | ".join(cells) + " |")
    ours = "fm" if ssl else "lm"
    sample_level = [("fm_samples", "random_samples")] if ssl else []
    pairs = [(ours, "random"), *sample_level, (ours, sweeps.FULL)]
    for method, baseline in pairs:
        if not {method, baseline} <= set(table.method):
            continue
        print(f"\n{method} - {baseline}, paired by seed")
        print("| shots | ratio | mean | std | min | max | pairs |\n|---|---|---|---|---|---|---|")
        for c in shots:
            for _, r in sweeps.paired_differences(table, c, method=method, baseline=baseline).iterrows():
                print(f"| {c} | {r.ratio:.1f} | {r['mean']:+.3f} | {r['std']:.3f} | {r['min']:+.3f} | "
                      f"{r['max']:+.3f} | {int(r.pairs)} |")
    if sweeps.FULL in set(table.method):
        print_against_full(table, shots)
    seconds = sweeps.seconds_column(table)
    print("\npretraining cost at ratio r over the full source (mean over seeds), ideal = 1 - r; time = "
          + ("the training loop" if seconds == "pretrain_time_s" else "the stage's wall time, validation included"))
    print("| method | ratio | time | images seen | ideal | time off ideal |\n|---|---|---|---|---|---|")
    time_costs = sweeps.cost_ratios(table, seconds).set_index(["method", "ratio"])
    seen_costs = sweeps.cost_ratios(table, "images_seen").set_index(["method", "ratio"])
    for (method, ratio), r in time_costs.iterrows():
        print(f"| {method} | {ratio:.1f} | {r.relative:.3f} | {seen_costs.loc[(method, ratio), 'relative']:.3f} | "
              f"{r.ideal:.2f} | {r.off_ideal:+.1%} |")
    surrogate, entry = surrogate_cost(work)
    full = table[table.method == sweeps.FULL]
    full_seen = full["images_seen"].mean()
    # The surrogate runs once in the flow process (all cores), the points in workers with --threads each,
    # so seconds do not compare; images seen (and model size) do.
    print(f"\nsurrogate (once per source, shared by every target and ratio): {surrogate['wall_time_s']:.1f} s on all "
          f"cores; {surrogate['images_seen']} images seen = {surrogate['images_seen'] / full_seen:.2f}x a full-source "
          f"pretraining's {full_seen:.0f}, with {surrogate['parameters']:,} parameters")
    for ratio, group in table[table.method == ours].groupby("ratio"):
        seen = (group["images_seen"].mean() + surrogate["images_seen"]) / full_seen
        print(f"end to end in images seen, surrogate included, {ours} at {ratio:.1f}: {seen:.2f}x full source")
    if (entry / "out" / "model").exists():
        prepare = max((work / ".tlpipe" / "store" / "prepare").glob("*/out"), key=lambda p: p.stat().st_mtime)
        print("\n" + surrogate_inference_line(entry / "out" / "model", prepare / "target", "cpu"))


def print_against_full(table, shots: list[str]) -> None:
    """Every method minus the full source, paired by seed: mean [min, max] per ratio and shot count."""
    from project import sweeps

    print("\nevery method - full source, paired by seed: mean [min, max] over seeds")
    print("| method | ratio | " + " | ".join(shots) + " |\n|---|---|" + "---|" * len(shots))
    for method in sorted(set(table.method) - {sweeps.FULL}):
        diffs = [sweeps.paired_differences(table, c, method=method, baseline=sweeps.FULL).set_index("ratio")
                 for c in shots]
        for ratio in diffs[0].index:
            cells = [f"{d.loc[ratio, 'mean']:+.3f} [{d.loc[ratio, 'min']:+.3f}, {d.loc[ratio, 'max']:+.3f}]"
                     for d in diffs]
            print(f"| {method} | {ratio:.1f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charset", choices=["ascii", "extended"], default="ascii")
    parser.add_argument("--ssl", action="store_true", help="SimCLR surrogate and teacher; fm on k-means groups")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", help="default: every method of the variant")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.8, 0.9])
    parser.add_argument("--no-full-source", action="store_true",
                        help="skip the full-source points (merge with a table that has them to pair)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--report-only", type=Path, nargs="+", metavar="RESULTS",
                        help="print the report of existing results (folders or results.csv files; several: "
                             "merged into a new folder)")
    args = parser.parse_args()
    work = REPO / "bench" / ".work" / f"{args.charset}{'-ssl' if args.ssl else ''}"
    if not args.report_only:
        results = run_sweep(args, work)
    elif len(args.report_only) == 1:
        results = args.report_only[0]
    else:
        results = merge_results(args.report_only, work)
    report(results, work, args.ssl)


if __name__ == "__main__":
    main()
