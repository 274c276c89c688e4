"""Stage functions called in-process without Prefect, DVC or MLflow, for benchmarks that time or
compare what the stages compute (the same code `tlpipe run` executes, minus the orchestration)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path


class Untracked:
    """Stands where the MLflow run would be: records nothing."""

    run_id = ""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def run_stage(project: Path, stage: str, params: dict, device: str) -> dict:
    """Runs `tasks.<stage>.run` with the same atomic writes as the runner; returns its metrics."""
    from tasks.context import StageContext, metrics_file, stage_dir
    from tlpipe.io import staged_outputs, write_json

    module = importlib.import_module(f"tasks.{stage}")
    started = time.perf_counter()
    with staged_outputs(stage_dir(project, stage), metrics_file(project, stage)) as (out, metrics_path):
        out.mkdir()
        ctx = StageContext(stage, Path(project), params, out, Untracked(), device, show_progress=False)
        metrics = module.run(ctx)
        metrics["wall_time_s"] = time.perf_counter() - started
        write_json(metrics_path, metrics)
    return metrics
