"""What the orchestration costs: the whole pipeline under Prefect (with caching, DVC commits and
MLflow tracking) against the same stage functions called in a plain Python loop, then the cached
re-run. Each measurement is one fresh process on a fresh copy of the project, timed from outside.

    python bench/pipeline_overhead.py            # the default (built-in benchmark) configuration
    python bench/pipeline_overhead.py --tiny     # a few-second configuration, to try the script
    python bench/pipeline_overhead.py --repeat 3 # three pairs, alternating which runs first; median ratio
    python bench/pipeline_overhead.py --cold     # first run on a machine: Prefect and MLflow create their databases

By default the Prefect and MLflow databases exist before timing starts (as on every run after the
first on a machine; creating them costs a few seconds once). The DVC cache and the stage cache start
empty either way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _stages import QUIET, TINY  # noqa: E402
from flows.workspace import copy_project  # noqa: E402

LOOP_SECONDS = "loop-seconds.json"


def bare_loop(project: Path) -> None:
    """Every stage in dvc.yaml order through the runner with nothing recorded (its keys, hashes and atomic
    writes included): what Prefect, MLflow, DVC and the records add is the difference. The stages' own
    seconds go to `LOOP_SECONDS` in the project (the metrics files hold no timings)."""
    from _stages import run_stage
    from runner.keys import device_name
    from runner.spec import load_pipeline
    from project import paramfiles

    device = device_name()
    seconds = {spec.name: run_stage(project, spec.name, paramfiles.load_stage_params(project, spec.name), device)["wall_time_s"]
               for spec in load_pipeline(project)}
    (project / LOOP_SECONDS).write_text(json.dumps(seconds))


def create_databases(env: dict) -> None:
    """What the first run on a machine leaves behind: Prefect's database and the MLflow store."""
    subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                   env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
                   env=env, check=True, capture_output=True)


def stage_names(project: Path) -> list[str]:
    from runner.spec import load_pipeline

    return [spec.name for spec in load_pipeline(project)]


def stage_seconds(project: Path, stage: str) -> float:
    """The stage function's wall time: from the flow's lineage document (timings are not outputs), or
    from what the plain loop wrote."""
    documents = sorted((project / ".tlpipe" / "lineage").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if documents:
        first_run = json.loads(documents[0].read_text())
        return next(s for s in first_run["stages"] if s["stage"] == stage)["metrics"]["wall_time_s"]
    return json.loads((project / LOOP_SECONDS).read_text())[stage]


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def measure(folder: Path, *, overrides: dict | None, cold: bool, loop_first: bool) -> dict:
    """One loop run and one `tlpipe run` (in the given order) on fresh copies, then the cached re-run."""
    folder.mkdir(parents=True)
    env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
           "PREFECT_HOME": str(folder / "prefect"), "HF_HOME": str(folder / "hf")}
    env.pop("PREFECT_API_URL", None)
    if not cold:
        create_databases(env)
    loop_project = copy_project(REPO, folder / "loop", overrides)
    flow_project = copy_project(REPO, folder / "flow", overrides)
    subprocess.run(["git", "init", "-q"], cwd=flow_project, check=True)
    tlpipe = [str(Path(sys.executable).with_name("tlpipe")), "run", "--project", str(flow_project)]
    loop = [sys.executable, __file__, "--loop", str(loop_project)]
    seconds = {}
    for name, command in (("loop", loop), ("flow", tlpipe)) if loop_first else (("flow", tlpipe), ("loop", loop)):
        seconds[name] = timed(command, REPO, env)
    seconds["cached"] = timed(tlpipe, REPO, env)
    seconds["stages"] = [(s, stage_seconds(loop_project, s), stage_seconds(flow_project, s)) for s in stage_names(REPO)]
    return seconds


def outside_stages(run: dict) -> float:
    """Seconds the flow spends outside the stage functions, minus the same for the loop (imports, data loading)."""
    loop_in = sum(s[1] for s in run["stages"])
    flow_in = sum(s[2] for s in run["stages"])
    return (run["flow"] - flow_in) - (run["loop"] - loop_in)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few-second configuration")
    parser.add_argument("--cold", action="store_true", help="start from empty Prefect and MLflow databases")
    parser.add_argument("--repeat", type=int, default=1,
                        help="pairs to measure, alternating which runs first; the median ratio is the result")
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # internal: run the bare loop here
    args = parser.parse_args()
    if args.loop:
        return bare_loop(args.loop)
    overrides = TINY if args.tiny else None
    runs = []
    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-") as tmp:
        for i in range(args.repeat):
            runs.append(measure(Path(tmp) / str(i), overrides=overrides, cold=args.cold, loop_first=i % 2 == 0))
    print("stage         loop s   flow s   (time inside the stage function as written to data/metrics; "
          "median over pairs)")
    stages = [(name, statistics.median(r["stages"][i][1] for r in runs), statistics.median(r["stages"][i][2] for r in runs))
              for i, (name, _, _) in enumerate(runs[0]["stages"])]
    for name, loop_stage, flow_stage in stages:
        print(f"{name:<12} {loop_stage:7.1f}  {flow_stage:7.1f}")
    print(f"{'sum':<12} {sum(s[1] for s in stages):7.1f}  {sum(s[2] for s in stages):7.1f}")
    print(f"configuration            {'tiny' if args.tiny else 'default'} (params/ of this checkout), "
          f"{'empty' if args.cold else 'existing'} Prefect and MLflow databases")
    for i, r in enumerate(runs):
        first = "loop first" if i % 2 == 0 else "flow first"
        print(f"pair {i + 1} ({first})     loop {r['loop']:6.1f} s   tlpipe run {r['flow']:6.1f} s   "
              f"ratio {r['flow'] / r['loop']:5.2f}   outside stages +{outside_stages(r):4.1f} s   "
              f"cached re-run {r['cached']:5.1f} s")
    ratios = sorted(r["flow"] / r["loop"] for r in runs)
    print(f"ratio pipeline / loop    {statistics.median(ratios):7.2f}   (median of {len(runs)}; goal <= 1.10)")
    print(f"outside stage functions  {statistics.median(outside_stages(r) for r in runs):+7.1f} s   "
          "(start-up, keys, commits, tracking between stages, registry: the flow's extra seconds outside the "
          "stage functions, which are free of the stages' run-to-run noise)")
    print(f"cached re-run            {statistics.median(r['cached'] for r in runs):7.1f} s   "
          "(all stages cache hits, outputs verified)")


if __name__ == "__main__":
    main()
