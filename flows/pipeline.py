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
from runner.spec import StageSpec, load_pipeline, producers, select_stages, upstream_of
from runner.workspace import ProjectWorkspace

from flows import promotion
from flows.agents import dispatch
from flows.stages import run_one


def run_labels(project: Path, params: dict, digest: str | None = None) -> tuple[str, list[str]]:
    """(flow-run name, tags) that tell a project's runs apart in the Prefect UI: `proj: digits from
    glyphs [3f2a91c0]`, tags project:, target:, source:, params: (the snapshot digest's prefix)."""
    source, target = (promotion.data_name(params.get("prepare", {}).get(side, {})) for side in ("source", "target"))
    name = f"{project.name}: {target} from {source}" + (f" [{digest[:8]}]" if digest else "")
    tags = [f"project:{project.name}", f"target:{target}", f"source:{source}"]
    return name, tags + ([f"params:{digest[:8]}"] if digest else [])


def pipeline_run_name() -> str:
    """The flow run's name, from its parameters (Prefect calls this as the run starts)."""
    from prefect.runtime import flow_run

    given = flow_run.parameters
    project = Path(given.get("project") or ".").resolve()
    if given.get("snapshot"):
        taken = Snapshot.from_dict(given["snapshot"])
        return run_labels(project, taken.params, taken.digest)[0]
    try:  # a deployment or schedule: the params files as they are (the snapshot is taken in the run)
        from project import paramfiles

        return run_labels(project, paramfiles.load_all_params(project))[0]
    except Exception:  # noqa: BLE001 - bad params fail the run itself, with the one-line message
        return f"{project.name}: pipeline"


def label_flow_run(flow_run_id: str, tags: list[str]) -> None:
    """Adds `tags` to the flow run (Prefect takes tags only at creation; these are known later)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        current = prefect.read_flow_run(flow_run_id).tags
        prefect.update_flow_run(flow_run_id, tags=sorted({*current, *tags}))


def start_tracked_run(project: Path, kind: str, snapshot: Snapshot, params: dict | None = None) -> tuple[str, str, dict]:
    """(MLflow parent run id, Prefect flow-run id, tags) of the flow run in progress; the parent run
    records the run's params snapshot (`params` instead, when given). The flow run gets its tags."""
    tracking.configure(project)
    flow_run_id = str(get_run_context().flow_run.id)
    label_flow_run(flow_run_id, [*run_labels(project, snapshot.params, snapshot.digest)[1], f"kind:{kind}"])
    tags = {tracking.TAG_FLOW_RUN: flow_run_id, **tracking.source_tags(project)}
    note = (f"{get_run_context().flow_run.name}: `{tags[tracking.TAG_SOURCE]}` in {project}. "
            f"Prefect flow run `{flow_run_id}`; `tlpipe lineage {flow_run_id}` tells where every output came from.")
    run_name = f"{kind}-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = tracking.start_pipeline_run(project, run_name=run_name, params=params or snapshot.params,
                                         tags={**tags, tracking.TAG_NOTE: note, "tlpipe.params_digest": snapshot.digest,
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


@flow(name="tlpipe", flow_run_name=pipeline_run_name)
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
    made_by, states = producers(stages), {}  # task-run states: the run graph's edges in the Prefect UI
    try:
        with dvc.Commits(project) as commits:
            for spec in stages:
                pool = spec.meta.get("accelerator", "cpu")
                after = [states[name] for name in upstream_of(spec, made_by) if name in states]
                if pool not in agents:
                    states[spec.name] = run_one(spec, snapshot.stage(spec.name), workspace, device=device,
                                                observers=[recorder, commits, collector, console],
                                                refresh=spec.name in refresh_set, after=after)
                    continue
                commits.wait()  # the agent may need upstream outputs from the DVC remote
                dispatch(spec, project, snapshot.stage(spec.name), workspace.known, pool=pool, device=agents[pool],
                         refresh=spec.name in refresh_set, parent_id=parent_id, tags=tags)
                collector.ran_on(spec.name, pool)  # its MLflow run is the agent's; here its outputs arrive
                states[spec.name] = run_one(spec, snapshot.stage(spec.name), workspace, device=agents[pool],
                                            observers=[commits, collector], refresh=False, slot=False, after=after)
        results = collector.stages
        specs = {spec.name: spec for spec in stages}  # each stage's outputs with its record: a clone needs both
        pushed = dvc.push_outputs(project, [md5 for r in results
                                            for md5 in dvc.with_record(project, specs[r["stage"]], r["outs"]).values()])
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
    store_lineage(project, lineage.document(parent_id=parent_id, flow_run_id=flow_run_id, git=tags.get(tracking.TAG_GIT, "unknown"),
                                            git_dirty=tags.get(tracking.TAG_DIRTY) == "true",
                                            stages=results, params=snapshot.params, registered=registered, data=data))
    tracking.end_run(parent_id, metrics={k: v for k, v in final.items() if k in ("accuracy", "macro_f1")})
    if results:  # the last stage's key chains every input, param and code of the run
        label_flow_run(flow_run_id, [f"key:{results[-1]['cache_key'][:12]}"])
    return {"mlflow_run_id": parent_id, "flow_run_id": flow_run_id, "stages": results, "data": data,
            "tracking_uri": tracking.configure(project), "registered": registered,
            "params_digest": snapshot.digest}
