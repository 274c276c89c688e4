"""What a stage's `run(ctx)` receives: its params, where its inputs are, where to write, how to report.

Everything a stage reports (per-epoch metrics, artifacts, its model) leaves as an event; the
observers of the run decide what to do with it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from tlpipe.io import read_json
from tlpipe.training.checkpoints import Checkpoint

from runner import memo
from runner.events import Events, StageRun, is_timing
from runner.spec import metrics_output, stage_folders

MetricsCallback = Callable[[int, dict], None]
CHECKPOINT_VARIABLE = "TLPIPE_CHECKPOINT_MINUTES"


def checkpoint_minutes() -> float:
    """TLPIPE_CHECKPOINT_MINUTES: minutes between checkpoints within an epoch (default 10)."""
    value = os.environ.get(CHECKPOINT_VARIABLE, "10")
    try:
        minutes = float(value)
    except ValueError:
        minutes = float("nan")
    if not minutes >= 0 or minutes == float("inf"):
        raise ValueError(f"{CHECKPOINT_VARIABLE}={value!r} must be a number of minutes >= 0")
    return minutes


class StageContext:
    """Handed to `tasks.<stage>.run`; `out` is a temporary folder that becomes the stage's output on
    success. `project` is the user's project, against which local paths in params are resolved."""

    def __init__(self, run: StageRun, out: Path, workspace, events: Events):
        self.stage = run.spec.name
        self.params = run.params
        self.device = run.device
        self.out = out
        self.project = workspace.project
        self.store = workspace.store  # for intermediate results shared across runs (e.g. prune scores)
        self._run, self._workspace, self._events = run, workspace, events

    def external(self, name: str) -> Path | None:
        """Where the local data a param names outside the pipeline is (`runner.inputs.external_inputs`,
        e.g. "surrogate.pretrained"); None when the param names none (unset, or a hub id)."""
        return self._run.inputs.get(name)

    def upstream(self, stage: str) -> Path:
        """The (already verified) output folder of an upstream stage."""
        return self._workspace.upstream(stage)

    @property
    def upstream_stages(self) -> list[str]:
        """The stages whose metrics files this stage declares as deps in dvc.yaml, in run order."""
        deps = set(self._run.spec.deps)
        return [stage for stage in stage_folders(self.project) if metrics_output(stage) in deps]

    def upstream_metrics(self, stage: str) -> dict:
        """The metrics an upstream stage recorded in its metrics file (no timings)."""
        return read_json(self._workspace.locate(metrics_output(stage)))

    def upstream_timings(self, stage: str) -> dict:
        """The timings of the run that produced an upstream stage's outputs, when this run knows it
        ({} otherwise); not a dependency: they never change what a stage's key is."""
        outcome = self._workspace.outcomes.get(stage)
        return {k: v for k, v in outcome.metrics.items() if is_timing(k)} if outcome else {}

    def provenance(self) -> dict:
        """Where this computation is recorded, as far as the observers said (`None` where nothing
        records it): its MLflow run, the pipeline's run, the Prefect flow run, the commit; and its key."""
        record = self._run.record
        return {"stage_run": record.get("mlflow_run_id"), "pipeline_run": record.get("pipeline_run"),
                "flow_run": record.get("flow_run"), "git_commit": record.get("git_commit"),
                "git_dirty": record.get("git_dirty") == "true", "cache_key": self._run.key}

    def checkpoint(self, name: str) -> Checkpoint:
        """Where the training loop `name` of this stage saves and finds its state: keyed by the stage's
        cache key, so a changed param or code starts afresh. Within an epoch it saves every
        TLPIPE_CHECKPOINT_MINUTES minutes (default 10); always at the end of one."""
        def on_resume(epoch: int, batch: int) -> None:
            self._events.emit("stage_resumed", self._run, name, epoch, batch)

        return Checkpoint(self._workspace.checkpoints(self.stage, self._run.key) / name,
                          every_minutes=checkpoint_minutes(), on_resume=on_resume)

    def memo(self, name: str, parts, compute: Callable[[], Any], *, code=None, form: tuple = memo.ARRAY) -> tuple[Any, str]:
        """(value, RAN or CACHED): a result shared across runs and stages, in the store, keyed by `parts`,
        the code that computes it and the run's environment (`runner.memo.memo`)."""
        return memo.memo(self.store, name, parts, compute, code=code, device=self.device, form=form)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._events.emit("stage_metrics", self._run, metrics, step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._events.emit("stage_artifact", self._run, Path(path), artifact_path)

    def log_model(self, model, *, input_example) -> str | None:
        """Hands the deployable model to the observers; returns its URI where one stored it (kept in the
        stage's record, not in its outputs: it differs from run to run)."""
        uri = self._events.first("stage_model", self._run, model, input_example)
        if uri is not None:
            self._run.record["model_uri"] = uri
        return uri

    @contextlib.contextmanager
    def progress(self, total: int, label: str) -> Iterator[MetricsCallback]:
        """A per-epoch callback: each call reports the epoch's metrics to the observers."""
        def on_metrics(step: int, metrics: dict) -> None:
            self._events.emit("stage_progress", self._run, step, total, label, metrics)

        yield on_metrics
