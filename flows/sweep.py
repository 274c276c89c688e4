"""The pruning sweep as a Prefect flow: methods x ratios x seeds fanned out with the Dask task runner.

The stages upstream of `prune` (prepare, surrogate) run once; every point then runs prune and
pretrain and probes its teacher. All outputs go to the store's entries (runner/workspace.py), never
to the project's data/ or dvc.lock, so points run side by side and a point whose inputs did not
change is a cache hit in this sweep and in any later one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.pipeline import start_tracked_run
from runner import keys, memo, tracking
from runner.core import run_stage
from runner.progress import ConsoleProgress
from runner.recorder import Recorder
from runner.snapshot import Snapshot, preflight
from runner.spec import load_pipeline
from runner.workspace import StoreWorkspace
from tlpipe import io, registry
from tlpipe.evaluation import plots
from project import config, outputs, paramfiles, sweeps

POINT_STAGES = ("prune", "pretrain")
# The teacher's probe of a point reads these params and the outputs of prepare and pretrain; it is a memo
# in the store, keyed by them, by the probe's code and by the environment (runner/memo.py).
PROBE_PARAMS = {"evaluate": ("seed", "probe_shots", "probe_draws", "batch_size"),
                "finetune": ("method", *(name for name, m in registry.FINETUNING.items() if m.params),  # their sections
                             "seed", "epochs", "batch_size", "lr", "weight_decay")}
PROBE_DEPS = ("data/prepared", "data/pretrain")


def point_params(base: dict[str, dict], point: dict) -> dict[str, dict]:
    """The stage params of one grid point: the grid sets prune.method/ratio/seed and pretrain.seed."""
    params = json.loads(json.dumps(base))
    full = point["method"] == sweeps.FULL
    params["prune"].update(method="random" if full else point["method"], ratio=point["ratio"], seed=point["seed"])
    params["pretrain"]["seed"] = point["seed"]
    return params


def _probe(workspace: StoreWorkspace, params: dict, device: str) -> tuple[dict, str]:
    """The teacher's probe accuracies, transferability scores and fine-tuned accuracy, stored once per key."""
    parts = {"params": {stage: {key: params[stage][key] for key in names} for stage, names in PROBE_PARAMS.items()},
             "deps": {dep: workspace.known[dep] for dep in PROBE_DEPS}}
    return memo.memo(workspace.store, "probe", parts, lambda: outputs.score_teacher(
        workspace.upstream("prepare"), workspace.upstream("pretrain"), params["evaluate"], device,
        finetune=params["finetune"]), code=outputs.score_teacher, device=device, form=memo.JSON)


@task(name="sweep-point", task_run_name="{point[method]}-r{point[ratio]}-s{point[seed]}")
def sweep_point(project: str, point: dict, params: dict, shared: dict[str, str], device: str,
                parent_id: str, tags: dict, threads: int) -> dict:
    """prune -> pretrain -> teacher probe for one grid point (inside a Dask worker), in the store."""
    import torch

    torch.set_num_threads(threads)
    project_path = Path(project)
    tracking.configure(project_path)
    specs = {s.name: s for s in load_pipeline(project_path)}
    workspace = StoreWorkspace(project_path, shared)
    recorder = Recorder(parent_id, {**tags, "tlpipe.sweep_point": json.dumps(point)})
    row = dict(point)
    for stage in POINT_STAGES:
        outcome = run_stage(specs[stage], params[stage], workspace, device=device, observers=[recorder])
        row[f"{stage}_status"] = outcome.status
        row.update(_point_figures(stage, outcome.metrics))
    scores, row["probe_status"] = _probe(workspace, params, device)
    return {**row, **scores}


def _point_figures(stage: str, m: dict) -> dict:
    if stage == "prune":
        return {"kept_classes": m["kept_classes"], "kept_images": m["kept_train_images"],
                "kept_fraction": m["kept_fraction"], "prune_time_s": m["wall_time_s"]}
    # Training time is the cost pruning saves; the stage's wall time adds loading, validation and saving.
    return {"pretrain_time_s": m["train_time_s"], "pretrain_wall_s": m["wall_time_s"], "images_seen": m["images_seen"]}


def task_runner(cluster: dict):
    """Prefect's Dask task runner: the scheduler in params, else a local cluster of worker processes."""
    from prefect_dask import DaskTaskRunner

    if cluster["address"]:
        return DaskTaskRunner(address=cluster["address"])
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": cluster["n_workers"], "threads_per_worker": 1, "processes": True,
        "dashboard_address": ":0", "local_directory": os.environ.get("TMPDIR", "/tmp"),
    })


def run_shared(project: Path, base: dict, device: str, parent_id: str, tags: dict) -> dict[str, str]:
    """The stages every point reads (those before prune), once, into the store; {stage: entry key}."""
    stages = load_pipeline(project)
    workspace = StoreWorkspace(project)
    observers = [Recorder(parent_id, tags), ConsoleProgress()]
    for spec in stages[: [s.name for s in stages].index("prune")]:
        outcome = run_stage(spec, base[spec.name], workspace, device=device, observers=observers)
        get_run_logger().info("%s: %s (%s)", spec.name, outcome.status, outcome.key[:12])
    return dict(workspace.entries)


def sweep_run_name() -> str:
    """`<project>: sweep <file>`, from the flow run's parameters (Prefect calls this as the run starts)."""
    from prefect.runtime import flow_run

    given = flow_run.parameters
    return f"{Path(given.get('project') or '.').resolve().name}: sweep {Path(given.get('sweep_file') or 'sweep').stem}"


@flow(name="tlpipe-sweep", flow_run_name=sweep_run_name)
def sweep(project: str, sweep_file: str, device: str | None = None) -> dict:
    """Runs every point of the sweep file; writes the results table and plots; returns where they are."""
    project_path = Path(project).resolve()
    base = paramfiles.load_all_params(project_path)
    spec = paramfiles.load_sweep(Path(sweep_file), methods=config.SCHEMA["prune"]["method"].choices, base=base)
    preflight(project_path, load_pipeline(project_path), spec["params"])
    points = sweeps.grid(spec["methods"], spec["ratios"], spec["seeds"], full_source=spec["full_source"])
    device = device or keys.device_name()
    grid = {"sweep": {k: spec[k] for k in ("methods", "ratios", "seeds")}}
    tracking.configure(project_path)
    for run_id in tracking.close_abandoned_runs():
        get_run_logger().info("MLflow run %s of a process that no longer runs ended as KILLED", run_id)
    parent_id, flow_run_id, tags = start_tracked_run(project_path, "sweep", Snapshot(spec["params"]), params=grid)
    name = tracking.client().get_run(parent_id).info.run_name
    try:
        shared = run_shared(project_path, spec["params"], device, parent_id, tags)
        futures = {i: sweep_point.submit(str(project_path), points[i], point_params(spec["params"], points[i]),
                                         shared, device, parent_id, tags, spec["cluster"]["threads_per_worker"])
                   for i in sweeps.submission_order(points)}
        rows = [futures[i].result() for i in range(len(points))]  # in grid order
        out = write_results(project_path, name, rows, spec)
    except BaseException as exc:
        tracking.end_run(parent_id, error=exc)
        raise
    tracking.log_sweep(parent_id, out)
    tracking.end_run(parent_id)
    create_table_artifact(key="pruning-sweep", table=[{k: _plain(v) for k, v in r.items()} for r in rows],
                          description=f"pruning sweep {name}: {len(rows)} points")
    return {"mlflow_run_id": parent_id, "flow_run_id": flow_run_id, "results": str(out), "points": len(rows)}


def _plain(value):
    return round(value, 6) if isinstance(value, float) else value


def write_results(project: Path, name: str, rows: list[dict], spec: dict) -> Path:
    """results.parquet/.csv, summary.csv and the two plots under data/sweeps/<name>/."""
    import pandas as pd

    table = pd.DataFrame(rows).sort_values(["method", "ratio", "seed"], kind="stable").reset_index(drop=True)
    folder = project / "data" / "sweeps" / name
    with io.staged_outputs(folder) as (temp,):
        temp.mkdir()
        table.to_parquet(temp / "results.parquet", index=False)
        io.write_table(temp / "results.csv", table)
        shots = sweeps.probe_columns(table.columns)
        summary = pd.concat([sweeps.summarise(table, c).assign(metric=c)
                             for c in shots + [c for c in ("finetune_accuracy", "pretrain_time_s", "pretrain_wall_s")
                                                    if c in table]])
        io.write_table(temp / "summary.csv", summary)
        if len(table) > 2:  # which transferability score ranks the teachers as fine-tuning does
            io.write_table(temp / "rank_correlation.csv", sweeps.rank_correlations(table))
        for column in shots:
            rows_full = summary[(summary.metric == column) & (summary.method == sweeps.FULL)]
            full = (rows_full["mean"].iloc[0], rows_full["std"].iloc[0]) if len(rows_full) else None
            pruned = summary[(summary.metric == column) & (summary.method != sweeps.FULL)]
            io.write_figure(temp / f"{column}_vs_ratio.png",
                            plots.plot_metric_vs_ratio(pruned, ylabel=f"teacher {column.removeprefix('probe_')} probe accuracy",
                                                       full=full))
        if spec["full_source"]:
            io.write_figure(temp / "cost_vs_ratio.png", plots.plot_cost_vs_ratio(sweeps.cost_ratios(table, sweeps.seconds_column(table))))
    return folder

