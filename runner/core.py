"""The one stage runner: every path that runs a stage (`tlpipe run`, `dvc repro`, sweep points, GPU
agents) calls `run_stage`.

It keys the stage, reuses an earlier run with the same key when its outputs are (or can be put back)
in place, and otherwise runs the stage's `run(ctx)` into temporary outputs that replace the old ones
only when the stage succeeds. So a failure or an interruption leaves the previous outputs as they
were and nothing half-written; this module is the one place that decides it. The rest (MLflow, DVC,
lineage, the console) observes the events.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path

from tlpipe.io import remove_path, staged_outputs, write_json

from runner import inputs, keys, ranks
from runner.context import StageContext
from runner.dvc import md5_path
from runner.events import RAN, Events, Observer, Outcome, StageRun, varies_by_attempt
from runner.spec import StageSpec

QUIET = {  # per-file progress bars of datasets/transformers would drown the stage's own progress
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
for _key, _value in QUIET.items():
    os.environ.setdefault(_key, _value)


class MissingInput(FileNotFoundError):
    """A dependency of the stage is not there (its upstream stage has not run)."""


def dep_hashes(workspace, spec: StageSpec, external: dict[str, Path]) -> dict[str, str]:
    """Content hash of every dependency; upstream outputs reuse the hash already recorded for them.

    `external` ({name: path}) are the data sets outside the pipeline that the stage reads (a local
    folder named in its params): they count as dependencies too.
    """
    hashes = {name: md5_path(path) for name, path in external.items()}
    for dep in spec.deps:
        if dep in workspace.known:
            hashes[dep] = workspace.known[dep]
        elif (path := workspace.locate(dep)).exists():  # code, or a part of an upstream output
            hashes[dep] = md5_path(path)
        else:
            raise MissingInput(f"stage {spec.name}: dependency {dep} does not exist (run its stage first)")
    return hashes


def run_stage(spec: StageSpec, params: dict, workspace, *, device: str, observers: list[Observer] = (),
              refresh: bool = False) -> Outcome:
    """Runs (or reuses) one stage with `params` (its section of the run's snapshot) in `workspace`.

    `refresh` runs the stage even when an earlier run with the same key exists.
    """
    started = time.perf_counter()
    events = Events(observers)
    external = inputs.external_inputs(spec.name, params, workspace.project)
    deps = dep_hashes(workspace, spec, external)
    key = keys.stage_cache_key(spec, declared=spec.declared(params), dep_hashes=deps, env=keys.run_environment(device))
    run = StageRun(spec, params, key, deps, device,
                   inputs={dep: external.get(dep) or workspace.locate(dep) for dep in deps if not dep.endswith(".py")})
    with workspace.claim(spec, key):
        found = None if refresh else workspace.lookup(spec, key)
        if found is None:
            outcome = _compute(run, workspace, events, started)
        else:
            record, status = found
            outcome = Outcome(spec.name, status, key, deps, record["outs"], record["metrics"],
                              record.get("mlflow_run_id"), time.perf_counter() - started, record.get("headline", ""),
                              record.get("model_uri"))
            run.outputs = {rel: workspace.locate(rel) for rel in record["outs"]}
            events.emit(f"stage_{status}", run, outcome)
    workspace.known.update(outcome.outs)
    workspace.outcomes[spec.name] = outcome
    return outcome


def of_outputs(metrics: dict) -> dict:
    """The metrics that describe the outputs: those that vary by attempt (timings, where a resumed
    run took over) left out at every depth (evaluate's per-stage cost nests its times)."""
    return {k: of_outputs(v) if isinstance(v, dict) else v for k, v in metrics.items() if not varies_by_attempt(k)}


def _compute(run: StageRun, workspace, events: Events, began: float) -> Outcome:
    """Runs the stage into temporary outputs; `wall_time_s` counts from its start event to its metrics
    (its keys and lookup are the runner's; `Outcome.seconds` counts those too, from `began`)."""
    spec = run.spec
    module = importlib.import_module(spec.module)
    started = time.perf_counter()
    out, metrics_path = workspace.outputs(spec, run.key)
    run.outputs = {rel: workspace.locate(rel) for rel in spec.outs}
    try:
        events.emit("stage_started", run)  # an observer failing here ends the run like the stage failing
        with staged_outputs(out, metrics_path) as (tmp_out, tmp_metrics):
            tmp_out.mkdir()
            metrics = ranks.run_stage(module, StageContext(run, tmp_out, workspace, events), run, workspace, events)
            metrics["wall_time_s"] = time.perf_counter() - started
            # Timings stay out of the metrics file, a DVC output that downstream stages read: an output
            # must depend on its inputs alone. They go to the record, MLflow and lineage.
            write_json(tmp_metrics, of_outputs(metrics))
    except Exception as exc:
        events.emit_each("stage_failed", run, exc)
        raise
    except BaseException:  # Ctrl-C, SIGTERM (as Prefect's or our own signal exception), exit
        events.emit_each("stage_interrupted", run)
        raise
    outs = {rel: md5_path(path) for rel, path in run.outputs.items()}
    run.record["headline"] = module.headline(metrics) if hasattr(module, "headline") else ""
    outcome = Outcome(spec.name, RAN, run.key, run.deps, outs, metrics, run.record.get("mlflow_run_id"),
                      time.perf_counter() - began, run.record["headline"], run.record.get("model_uri"))
    # Saved before the finished event: its observers commit the record with the outputs to DVC.
    workspace.save(spec, run.key, {"stage": spec.name, "cache_key": run.key, "outs": outs, "metrics": metrics,
                                   **run.record})
    events.emit("stage_finished", run, outcome)
    remove_path(workspace.checkpoints(spec.name, run.key))  # the outputs are in place: nothing to resume
    return outcome

