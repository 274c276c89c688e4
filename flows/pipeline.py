"""The pipeline as a Prefect flow: the stages of dvc.yaml, in run order, each handed to the stage runner
(runner/) as one Prefect task, with MLflow, DVC and lineage observing it.

The flow wires and nothing more. The params are one snapshot taken under the project lock; the
runner decides whether a stage is reused (its outputs in place, or put back from DVC) or computed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.context import get_run_context

from runner import dvc, keys, lineage, tracking
from runner.lock import project_lock
from runner.progress import ConsoleProgress
from runner.recorder import Recorder
from runner.snapshot import Snapshot, take
from runner.spec import StageSpec, load_pipeline, select_stages
from runner.workspace import ProjectWorkspace

from flows import promotion
from flows.agents import dispatch
from flows.stages import run_one


def start_tracked_run(project: Path, kind: str, snapshot: Snapshot, params: dict | None = None) -> tuple[str, str, dict]:
    """(MLflow parent run id, Prefect flow-run id, tags) of the flow run in progress; the parent run
    records the run's params snapshot (`params` instead, when given)."""
    tracking.configure(project)
    flow_run_id = str(get_run_context().flow_run.id)
    tags = {tracking.TAG_FLOW_RUN: flow_run_id, tracking.TAG_GIT: tracking.git_commit(project)}
    run_name = f"{kind}-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = tracking.start_pipeline_run(project, run_name=run_name, params=params or snapshot.params,
                                         tags={**tags, "tlpipe.params_digest": snapshot.digest,
                                               "tlpipe.overrides": " ".join(snapshot.overrides)})
    return parent, flow_run_id, tags


def clean_up_after_killed_runs(workspace: ProjectWorkspace) -> None:
    """What runs killed on this machine left: half-written outputs, MLflow runs still RUNNING."""
    logger = get_run_logger()
    for path in workspace.remove_stale():
        logger.info("removed %s, left by a run that was killed", path.relative_to(workspace.project))
    tracking.configure(workspace.project)
    for run_id in tracking.close_abandoned_runs():
        logger.info("MLflow run %s of a process that no longer runs ended as KILLED", run_id)


def store_lineage(project: Path, doc: dict) -> None:
    """The run's lineage document in three places: the project, the MLflow parent run, Prefect."""
    from prefect.artifacts import create_markdown_artifact

    lineage.save_local(project, doc)
    tracking.client().log_dict(doc["pipeline_run"], doc, "lineage.json")
    create_markdown_artifact(key=lineage.ARTIFACT_KEY, markdown=lineage.to_markdown(doc),
                             description=f"lineage of pipeline run {doc['pipeline_run']}")


@flow(name="tlpipe")
def pipeline(project: str = ".", overrides: list[str] | None = None, snapshot: dict | None = None,
             refresh: list[str] | None = None, until: str | None = None, show_progress: bool = True,
             device: str | None = None, registered_model: str | None = None,
             agents: dict[str, str] | None = None) -> dict:
    """Runs (or reuses) every stage of dvc.yaml up to `until`; `refresh` names stages to force ("all" for every one).

    The params are the files plus `overrides` (STAGE.KEY=VALUE), checked and taken under the project
    lock; `snapshot` is one already taken by a caller that holds the lock (the CLI). `device`
    overrides TLPIPE_DEVICE; `registered_model` names the model in the MLflow registry (default
    tlpipe-<target>). A run through `evaluate` registers its model and publishes the report.
    `agents` ({accelerator: device}, e.g. {"gpu": "cuda"}) sends each stage whose `meta.accelerator`
    is named to the workers of that pool (flows/agents.py). Runs in one project take turns.
    """
    project_path = Path(project).resolve()
    stages = select_stages(load_pipeline(project_path), until)
    waiting = lambda: get_run_logger().info("another pipeline run holds %s; waiting for it", project_path)  # noqa: E731
    with project_lock(project_path, on_wait=waiting):
        taken = Snapshot.from_dict(snapshot) if snapshot else take(project_path, overrides or (), stages)
        return run_pipeline(project_path, taken, stages, refresh=refresh, show_progress=show_progress,
                            device=device, registered_model=registered_model, agents=agents or {})


def run_pipeline(project: Path, snapshot: Snapshot, stages: list[StageSpec], *, refresh, show_progress: bool,
                 device: str | None, registered_model: str | None, agents: dict[str, str]) -> dict:
    """The body of `pipeline`, for a flow run that holds the project lock."""
    refresh_set = {s.name for s in stages} if refresh and "all" in refresh else set(refresh or ())
    device = device or keys.device_name()
    data = dvc.tracked_data(project)
    workspace, collector = ProjectWorkspace(project), lineage.Collector()
    clean_up_after_killed_runs(workspace)
    parent_id, flow_run_id, tags = start_tracked_run(project, "pipeline", snapshot)
    recorder, console = Recorder(parent_id, tags), ConsoleProgress(show_progress)
    try:
        with dvc.Commits(project) as commits:
            for spec in stages:
                pool = spec.meta.get("accelerator", "cpu")
                if pool not in agents:
                    run_one(spec, snapshot.stage(spec.name), workspace, device=device,
                            observers=[recorder, commits, collector, console], refresh=spec.name in refresh_set)
                    continue
                commits.wait()  # the agent may need upstream outputs from the DVC remote
                dispatch(spec, project, snapshot.stage(spec.name), workspace.known, pool=pool, device=agents[pool],
                         refresh=spec.name in refresh_set, parent_id=parent_id, tags=tags)
                collector.ran_on(spec.name, pool)  # its MLflow run is the agent's; here its outputs arrive
                run_one(spec, snapshot.stage(spec.name), workspace, device=agents[pool],
                        observers=[commits, collector], refresh=False, slot=False)
        results = collector.stages
        pushed = dvc.push_outputs(project, [md5 for r in results for md5 in r["outs"].values()])
        if pushed:
            get_run_logger().info("pushed %d objects to the DVC remote %r", pushed, dvc.default_remote(project))
    except BaseException as exc:
        tracking.end_run(parent_id, error=exc)
        raise
    final = results[-1]["metrics"] if results and results[-1]["stage"] == "evaluate" else {}
    registered = None
    if final:
        registered = promotion.register_and_report(project, results, registered_model or
                                                   promotion.model_name(snapshot.params), parent_id, tags,
                                                   snapshot.params["evaluate"]["promote_margin"])
    store_lineage(project, lineage.document(parent_id=parent_id, flow_run_id=flow_run_id, git=tags[tracking.TAG_GIT],
                                            stages=results, params=snapshot.params, registered=registered, data=data))
    tracking.end_run(parent_id, metrics={k: v for k, v in final.items() if k in ("accuracy", "macro_f1")})
    return {"mlflow_run_id": parent_id, "flow_run_id": flow_run_id, "stages": results, "data": data,
            "tracking_uri": tracking.configure(project), "registered": registered,
            "params_digest": snapshot.digest}
