"""Stages on agents: a stage whose `meta.accelerator` in dvc.yaml names a pool in the pipeline's
`agents` runs on a worker of that work pool (deployment tlpipe-stage/stage-<pool>); the rest of the
pipeline runs in the orchestrating flow run.

The agent works in its own checkout of the project (the deployment's pull step). It restores the
upstream outputs the stage reads (from the DVC remote when the checkout lacks them), runs the stage
through the same stage runner as the pipeline, commits and pushes the outputs, and records the stage
as a child of the pipeline's MLflow run. The orchestrator then finds the stage's record in the shared
cache storage and the outputs in its DVC cache or remote, so its own step is a hit.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.stages import run_one
from runner import dvc, tracking
from runner.progress import ConsoleProgress
from runner.recorder import Recorder
from runner.spec import StageSpec, is_within, load_pipeline
from runner.workspace import ProjectWorkspace

DEPLOYMENT = "tlpipe-stage/stage-{pool}"


def needed_upstream(spec: StageSpec, known: dict[str, str]) -> dict[str, str]:
    """The recorded upstream outputs the stage reads ({path: md5}), a part of one included."""
    return {rel: md5 for rel, md5 in known.items()
            if any(is_within(dep, rel) for dep in spec.deps)}


@flow(name="tlpipe-stage", flow_run_name="{stage}")
def stage(stage: str, params: dict, known: dict[str, str], device: str, project: str = ".", refresh: bool = False,
          parent_id: str | None = None, tags: dict[str, str] | None = None) -> dict:
    """Runs one stage of a pipeline run on this worker; returns its status, cache key and outputs."""
    from tlpipe.training.runtime import resolve_device

    project_path = Path(project).resolve()
    specs = {s.name: s for s in load_pipeline(project_path)}
    if stage not in specs:
        raise ValueError(f"unknown stage {stage!r}; stages in dvc.yaml: {', '.join(specs)}")
    spec = specs[stage]
    device = str(resolve_device(device))  # a worker without the device says so before any work
    for rel, md5 in needed_upstream(spec, known).items():
        if not dvc.outputs_match(project_path, {rel: md5}) and not dvc.restore_output(project_path, rel, md5):
            raise FileNotFoundError(f"{rel} at version {md5} is neither in this checkout nor in its DVC remote")
    tracking.configure(project_path)
    workspace = ProjectWorkspace(project_path)
    workspace.known.update(known)
    with dvc.Commits(project_path) as commits:
        result = run_one(spec, params, workspace, device=device, refresh=refresh,
                         observers=[Recorder(parent_id, tags or {}, project_path), commits,
                                    ConsoleProgress(False)]).result()
    dvc.push_outputs(project_path, list(dvc.with_record(project_path, spec, result["outs"]).values()))
    return {k: result[k] for k in ("stage", "status", "cache_key", "outs", "mlflow_run_id")}


def dispatch(spec: StageSpec, project: Path, params: dict, known: dict[str, str], *, pool: str,
             device: str, refresh: bool, parent_id: str, tags: dict[str, str]) -> None:
    """Runs the stage on a worker of `pool` and waits for it; the orchestrator's own run of the stage on
    the same device (so the same key) then finds the agent's record and its outputs."""
    from prefect.deployments import run_deployment

    dvc.push_outputs(project, list(needed_upstream(spec, known).values()))  # for an agent on another machine
    name = DEPLOYMENT.format(pool=pool)
    get_run_logger().info("%s: sent to a worker of the %r pool (%s, device %s)", spec.name, pool, name, device)
    flow_run = run_deployment(name, timeout=None, parameters={  # `project`: the deployment's own checkout
        "stage": spec.name, "params": params, "known": known, "device": device,
        "refresh": refresh, "parent_id": parent_id, "tags": tags})
    if not flow_run.state.is_completed():
        raise RuntimeError(f"stage {spec.name} on the {pool!r} pool ended {flow_run.state.name}: {flow_run.state.message}")
