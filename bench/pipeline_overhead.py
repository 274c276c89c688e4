"""What the orchestration costs: the whole pipeline under Prefect (with caching, DVC commits and
MLflow tracking) against the same stage functions called in a plain Python loop, then the cached
re-run. Each measurement is one fresh process on a fresh copy of the project, timed from outside.

    python bench/pipeline_overhead.py            # the default (built-in benchmark) configuration
    python bench/pipeline_overhead.py --tiny     # a few-second configuration, to try the script
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.workspace import copy_project  # noqa: E402

TINY = {
    "prepare": {"source": {"images_per_class": 12}, "target": {"shots_per_class": 3}},
    "surrogate": {"epochs": 1}, "pretrain": {"epochs": 1}, "distill": {"epochs": 1}, "finetune": {"epochs": 2},
    "evaluate": {"probe_draws": 2},
}
QUIET = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
         "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
         "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}


class Untracked:
    """Stands where the MLflow run would be: the bare loop records nothing."""

    run_id = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def bare_loop(project: Path) -> None:
    """Every stage function, in dvc.yaml order, with the same atomic writes but no Prefect, DVC or MLflow."""
    from tasks import runner, versioning
    from tasks.context import StageContext, metrics_file, stage_dir
    from tlpipe import config
    from tlpipe.io import staged_outputs, write_json

    device = runner.device_name()
    for spec in versioning.load_pipeline(project):
        params = config.load_stage_params(project, spec.name)
        module = importlib.import_module(f"tasks.{spec.name}")
        started = time.perf_counter()
        with staged_outputs(stage_dir(project, spec.name), metrics_file(project, spec.name)) as (out, metrics):
            out.mkdir()
            ctx = StageContext(spec.name, project, params, out, Untracked(), device, show_progress=False)
            figures = module.run(ctx)
            write_json(metrics, {**figures, "wall_time_s": time.perf_counter() - started})


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few-second configuration")
    parser.add_argument("--loop", type=Path, help=argparse.SUPPRESS)  # internal: run the bare loop here
    args = parser.parse_args()
    if args.loop:
        return bare_loop(args.loop)
    overrides = TINY if args.tiny else None
    with tempfile.TemporaryDirectory(prefix="tlpipe-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, **QUIET, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
               "PREFECT_HOME": str(tmp / "prefect"), "HF_HOME": str(tmp / "hf")}
        env.pop("PREFECT_API_URL", None)
        loop_project = copy_project(REPO, tmp / "loop", overrides)
        flow_project = copy_project(REPO, tmp / "flow", overrides)
        subprocess.run(["git", "init", "-q"], cwd=flow_project, check=True)
        tlpipe = [str(Path(sys.executable).with_name("tlpipe")), "run", "--project", str(flow_project)]
        loop_s = timed([sys.executable, __file__, "--loop", str(loop_project)], REPO, env)
        flow_s = timed(tlpipe, REPO, env)
        cached_s = timed(tlpipe, REPO, env)
    print(f"configuration            {'tiny' if args.tiny else 'default'} (params/ of this checkout)")
    print(f"plain Python loop        {loop_s:7.1f} s")
    print(f"tlpipe run (Prefect)     {flow_s:7.1f} s")
    print(f"ratio pipeline / loop    {flow_s / loop_s:7.2f}   (goal <= 1.10)")
    print(f"cached re-run            {cached_s:7.1f} s   (all stages cache hits, outputs verified)")


if __name__ == "__main__":
    main()
