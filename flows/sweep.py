"""The pruning sweep as a Prefect flow: methods x ratios x seeds fanned out with the Dask task runner.

The stages upstream of `prune` (prepare, surrogate) run once; every point then runs prune and
pretrain and probes its teacher. All outputs go to the content-addressed store (tasks/store.py), never
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
from tlpipe import config, io, plots, sweeps
from tasks import cachekey, probe, runner, store, tracking, versioning

POINT_STAGES = ("prune", "pretrain")
PROBE_SPEC = versioning.StageSpec(  # the teacher's probe: keyed like a stage, stored as one JSON record
    name="probe", cmd="python -m tasks.probe", deps=("data/prepared", "data/pretrain"),
    params={"params/evaluate.yaml": ("seed", "probe_shots", "probe_draws", "batch_size"),
            "params/finetune.yaml": ("mode", "seed", "epochs", "batch_size", "lr", "weight_decay")}, outs=(),
)


def point_params(base: dict[str, dict], point: dict) -> dict[str, dict]:
    """The stage params of one grid point: the grid sets prune.method/ratio/seed and pretrain.seed."""
    params = json.loads(json.dumps(base))
    full = point["method"] == sweeps.FULL
    params["prune"].update(method="random" if full else point["method"], ratio=point["ratio"], seed=point["seed"])
    params["pretrain"]["seed"] = point["seed"]
    return params


def _stage(project: Path, spec, params: dict, known: dict, upstream: dict, env: dict, **execute):
    deps = runner.dep_hashes(project, spec, known, params, locate=store.locator(project, upstream))
    key = cachekey.stage_cache_key(spec, params={f"params/{spec.name}.yaml": params}, dep_hashes=deps, env=env)
    return store.run_stage(project, spec, key=key, upstream=upstream, params=params, deps=deps, **execute)


def _probe(project: Path, known: dict, upstream: dict, params: dict, env: dict, device: str) -> tuple[dict, str]:
    """The teacher's probe accuracies, transferability scores and fine-tuned accuracy, stored once per key."""
    deps = {dep: known[dep] for dep in PROBE_SPEC.deps}
    key = cachekey.stage_cache_key(PROBE_SPEC, params={"params/evaluate.yaml": params["evaluate"],
                                                       "params/finetune.yaml": params["finetune"]},
                                   dep_hashes=deps, env=env)
    return store.cached_json(project, "probe", key, lambda: probe.score_teacher(
        upstream["prepare"].out, upstream["pretrain"].out, params["evaluate"], device, finetune=params["finetune"]))


@task(name="sweep-point", task_run_name="{point[method]}-r{point[ratio]}-s{point[seed]}")
def sweep_point(project: str, point: dict, params: dict, shared: dict, env: dict, device: str,
                parent_id: str, tags: dict, threads: int) -> dict:
    """prune -> pretrain -> teacher probe for one grid point (inside a Dask worker)."""
    import torch

    torch.set_num_threads(threads)
    project_path = Path(project)
    specs = {s.name: s for s in versioning.load_pipeline(project_path)}
    known = dict(shared["outs"])
    upstream = {stage: store.entry(project_path, stage, key) for stage, key in shared["keys"].items()}
    row = dict(point)
    for stage in POINT_STAGES:
        manifest, found, how = _stage(project_path, specs[stage], params[stage], known, dict(upstream), env,
                                      device=device, parent_id=parent_id,
                                      tags={**tags, "tlpipe.sweep_point": json.dumps(point)}, show_progress=False)
        known.update(manifest["outs"])
        upstream[stage] = found
        row[f"{stage}_status"] = how
        row.update(_point_figures(stage, manifest["metrics"]))
    scores, row["probe_status"] = _probe(project_path, known, upstream, params, env, device)
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


def run_shared(project: Path, base: dict, env: dict, device: str, parent_id: str, tags: dict) -> dict:
    """The stages every point reads (those before prune), once, into the store."""
    stages = versioning.load_pipeline(project)
    shared = [s for s in stages[: [s.name for s in stages].index("prune")]]
    known, upstream, keys = {}, {}, {}
    for spec in shared:
        manifest, found, how = _stage(project, spec, base[spec.name], known, dict(upstream), env, device=device,
                                      parent_id=parent_id, tags=tags, show_progress=True)
        get_run_logger().info("%s: %s (%s)", spec.name, how, found.key[:12])
        known.update(manifest["outs"])
        upstream[spec.name], keys[spec.name] = found, found.key
    return {"outs": known, "keys": keys}


@flow(name="tlpipe-sweep")
def sweep(project: str, sweep_file: str, device: str | None = None) -> dict:
    """Runs every point of the sweep file; writes the results table and plots; returns where they are."""
    project_path = Path(project).resolve()
    base = config.load_all_params(project_path)
    spec = config.load_sweep(Path(sweep_file), methods=config.SCHEMA["prune"]["method"].choices, base=base)
    runner.preflight(project_path, versioning.load_pipeline(project_path), spec["params"])
    points = sweeps.grid(spec["methods"], spec["ratios"], spec["seeds"], full_source=spec["full_source"])
    device = device or runner.device_name()
    env = runner.run_environment(device)
    grid = {"sweep": {k: spec[k] for k in ("methods", "ratios", "seeds")}}
    for stale in store.remove_stale_workspaces(project_path):
        get_run_logger().info("removed the scratch workspace %s of a process that no longer runs", stale.name)
    parent_id, flow_run_id, tags = start_tracked_run(project_path, "sweep", grid)
    name = tracking.client().get_run(parent_id).info.run_name
    try:
        shared = run_shared(project_path, spec["params"], env, device, parent_id, tags)
        futures = {i: sweep_point.submit(str(project_path), points[i], point_params(spec["params"], points[i]),
                                         shared, env, device, parent_id, tags, spec["cluster"]["threads_per_worker"])
                   for i in sweeps.submission_order(points)}
        rows = [futures[i].result() for i in range(len(points))]  # in grid order
        out = write_results(project_path, name, rows, spec)
    except BaseException:
        tracking.end_run(parent_id, failed=True)
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

