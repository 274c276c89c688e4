"""What a stage function receives: its params, where its inputs are, where to write, how to report."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

# Output folder of each stage under data/ (the stage `prepare` produces the *prepared* data).
STAGE_DIRS = {
    "prepare": "prepared",
    "surrogate": "surrogate",
    "prune": "prune",
    "pretrain": "pretrain",
    "distill": "distill",
    "finetune": "finetune",
    "evaluate": "evaluate",
}


def stage_dir(project: Path, stage: str) -> Path:
    return Path(project) / "data" / STAGE_DIRS[stage]


def metrics_file(project: Path, stage: str) -> Path:
    return Path(project) / "data" / "metrics" / f"{stage}.json"


def stage_outputs(stage: str) -> tuple[str, ...]:
    """The outputs every stage declares in dvc.yaml, relative to the project root."""
    return (f"data/{STAGE_DIRS[stage]}", f"data/metrics/{stage}.json")


def store_root(project: Path) -> Path:
    """Where content-addressed results live: TLPIPE_STORE_DIR (shared storage for a team), else
    .tlpipe/store in the project."""
    return Path(os.environ.get("TLPIPE_STORE_DIR") or Path(project) / ".tlpipe" / "store").resolve()


MetricsCallback = Callable[[int, dict], None]


@dataclass
class StageContext:
    """Handed to `tasks.<stage>.run`; `out` is a temporary folder that becomes data/<stage> on success."""

    stage: str
    project: Path
    params: dict
    out: Path
    tracker: Any  # tasks.tracking.StageTracker
    device: str = "cpu"
    show_progress: bool = True
    store: Path | None = None  # the project's store (tasks/store.py), for results shared across runs

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = store_root(self.project)

    def upstream(self, stage: str) -> Path:
        """The (already verified) output folder of an upstream stage."""
        return stage_dir(self.project, stage)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, artifact_path)

    def log_model(self, model, *, input_example) -> str:
        """Logs the deployable model to the stage's run; returns its model URI."""
        return self.tracker.log_model(model, input_example=input_example)

    @contextlib.contextmanager
    def progress(self, total: int, label: str) -> Iterator[MetricsCallback]:
        """A per-epoch callback that logs the epoch's metrics to the run and shows progress:
        a live bar on a terminal, one line per epoch otherwise (CI logs), nothing when disabled."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=sys.stderr)
        columns = (
            TextColumn(f"[bold]{self.stage}[/] {label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[summary]}"),
        )
        live = self.show_progress and console.is_terminal
        with Progress(*columns, console=console, disable=not live) as bar:
            task = bar.add_task(label, total=total, summary="")

            def on_metrics(step: int, metrics: dict) -> None:
                self.tracker.log_metrics(metrics, step=step)
                summary = "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
                bar.update(task, completed=step, summary=summary)
                if self.show_progress and not live:
                    console.print(f"{self.stage} {label} {step}/{total}  {summary}", highlight=False)

            yield on_metrics
