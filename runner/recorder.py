"""The MLflow observer of the stage runner: every stage gets a child run of the pipeline's run (a reused
stage too, pointing at the run that produced its outputs)."""

from __future__ import annotations

import importlib
from pathlib import Path

from runner.events import Observer, Outcome, StageRun
from runner.spec import stage_outputs
from runner.tracking import (REPORT_SUFFIXES, TAG_CACHE_KEY, TAG_CACHED, TAG_DIRTY, TAG_FLOW_RUN, TAG_GIT, TAG_NOTE,
                             TAG_PRODUCED_BY, TAG_STAGE, StageTracker, client, experiment_id, model_source_run,
                             owner_tags, source_tags)


def reuse_note(outcome: Outcome, key: str) -> str:
    """The description of a reused stage's run: which run computed its outputs, as a link the MLflow
    UI follows (within the same tracking server)."""
    producer = outcome.produced_by
    how = "put back from the DVC cache" if outcome.status == "restored" else "found in place"
    if not producer:
        return f"Outputs reused ({how}, cache key `{key[:16]}`); the run that computed them is not recorded."
    try:
        found = client().get_run(producer)
        link = f"[{found.info.run_name or producer}](#/experiments/{found.info.experiment_id}/runs/{producer})"
    except Exception:  # noqa: BLE001 - a store that no longer holds it: the id still says which run
        link = f"`{producer}` (not in this tracking store)"
    return (f"Outputs reused ({how}, cache key `{key[:16]}`): computed by run {link}, run id `{producer}`. "
            "Inputs, figures and reports here are those of that computation.")


class Recorder(Observer):
    """The MLflow side of stage runs: a child run of `parent_id` per stage (a top-level run when None,
    e.g. under `dvc repro`) with params, input data sets and their DVC digests, per-epoch metrics,
    reports, the model, and the output hashes that lineage looks runs up by."""

    def __init__(self, parent_id: str | None, tags: dict[str, str] | None = None, project: Path | None = None):
        self.parent_id = parent_id
        self.tags = {**(source_tags(project) if project is not None else {}), **(tags or {})}
        self._trackers: dict[str, StageTracker] = {}

    def _open(self, run: StageRun, **tags: str) -> StageTracker:
        mlf = client()
        all_tags = {TAG_STAGE: run.spec.name, TAG_CACHED: "false", TAG_CACHE_KEY: run.key, **self.tags, **tags,
                    **owner_tags()}
        if self.parent_id:
            all_tags["mlflow.parentRunId"] = self.parent_id
        tracker = StageTracker(mlf.create_run(experiment_id(mlf), run_name=run.spec.name, tags=all_tags).info.run_id)
        tracker.log_params(run.params)
        return tracker

    def stage_started(self, run: StageRun) -> None:
        tracker = self._trackers[run.key] = self._open(run)
        run.record["mlflow_run_id"] = tracker.run_id
        # Where the computation is recorded, for the stage's own reports (evaluate's report says it).
        run.record.update({key: value for key, value in (
            ("pipeline_run", self.parent_id), ("flow_run", self.tags.get(TAG_FLOW_RUN)),
            ("git_commit", self.tags.get(TAG_GIT)), ("git_dirty", self.tags.get(TAG_DIRTY))) if value})
        self._log_inputs(tracker, run)

    @staticmethod
    def _log_inputs(tracker: StageTracker, run: StageRun) -> None:
        for dep, path in run.inputs.items():
            tracker.log_dataset(dep, path, run.deps[dep], context="input")

    @staticmethod
    def _log_reports(tracker: StageTracker, run: StageRun) -> None:
        """The metrics file and the small files people read (tables, figures, the report); models and
        data stay in DVC."""
        folder, metrics_file = (run.outputs[rel] for rel in stage_outputs(run.spec))
        tracker.log_artifact(metrics_file)
        for report in sorted(folder.iterdir()):
            if report.is_file() and report.suffix in REPORT_SUFFIXES:
                tracker.log_artifact(report, run.spec.name)

    def stage_progress(self, run: StageRun, step: int, total: int, label: str, metrics: dict) -> None:
        self._trackers[run.key].log_metrics(metrics, step=step)

    def stage_metrics(self, run: StageRun, metrics: dict, step: int | None) -> None:
        self._trackers[run.key].log_metrics(metrics, step=step)

    def stage_artifact(self, run: StageRun, path: Path, artifact_path: str | None) -> None:
        self._trackers[run.key].log_artifact(path, artifact_path)

    def stage_model(self, run: StageRun, model, input_example) -> str:
        return self._trackers[run.key].log_model(model, input_example=input_example)

    def stage_finished(self, run: StageRun, outcome: Outcome) -> None:
        tracker = self._trackers.pop(run.key)
        tracker.log_summary(outcome.metrics)
        self._log_reports(tracker, run)
        tracker.set_tags({f"tlpipe.out.{rel}": md5 for rel, md5 in outcome.outs.items()})
        client().set_terminated(tracker.run_id, "FINISHED")

    def stage_cached(self, run: StageRun, outcome: Outcome) -> None:
        """A run of its own for a reused stage, with the same inputs, figures and reports as the run
        that computed the outputs, and a link to that run in its description."""
        tags = {TAG_CACHED: "true", TAG_PRODUCED_BY: outcome.produced_by or "",
                TAG_NOTE: reuse_note(outcome, run.key)}
        tracker = self._open(run, **tags)
        self._log_inputs(tracker, run)
        tracker.log_metrics(outcome.metrics)
        self._log_reports(tracker, run)
        if outcome.model_uri and model_source_run(outcome.model_uri) is None:
            # The run that logged the model is in another tracking store (a teammate's clone): this
            # store gets the same model, rebuilt from the reused outputs, so the registry can hold it.
            folder = run.outputs[run.spec.folder]
            model, example = importlib.import_module(run.spec.module).deployable(folder, run.inputs)
            outcome.model_uri = tracker.log_model(model, input_example=example)
        client().set_terminated(tracker.run_id, "FINISHED")

    stage_restored = stage_cached

    def stage_failed(self, run: StageRun, error: BaseException) -> None:
        self._end(run, "FAILED")

    def stage_interrupted(self, run: StageRun) -> None:
        self._end(run, "KILLED")

    def _end(self, run: StageRun, status: str) -> None:
        tracker = self._trackers.pop(run.key, None)  # None: the stage ended before its run was opened
        if tracker is not None:
            client().set_terminated(tracker.run_id, status)
