"""The pipeline as a Prefect flow, built from dvc.yaml: one cached task per stage, DVC commit after each.

A stage is skipped when a cache record exists for its key (see tasks/cachekey.py) and its outputs
are present with the recorded hashes; outputs that are missing or different are restored from the
DVC cache, and the stage runs again only when that is impossible.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.context import get_run_context

from tlpipe import config
from tlpipe.io import locked
from tasks import cachekey, lineage, remote, runner, tracking, versioning

RAN, CACHED, RESTORED = "ran", "cached", "restored"
CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases


def cache_dir(project: Path) -> Path | str:
    """Where stage records live: TLPIPE_CACHE_DIR (shared storage for a team: a folder, or an fsspec
    URL such as s3://bucket/tlpipe-cache), else .tlpipe/cache in the project."""
    value = os.environ.get("TLPIPE_CACHE_DIR")
    if value and value.startswith("file://"):  # a local or mounted folder written as a URL
        value = urllib.parse.unquote(urllib.parse.urlsplit(value).path)
    if value and "://" in value:
        return value
    return Path(value or Path(project) / ".tlpipe" / "cache").resolve()


@functools.lru_cache(maxsize=None)
def _remote_storage(url: str, api: str):
    """A Prefect RemoteFileSystem block for an fsspec URL, saved on the server `api` (Prefect keeps
    task results only in saved storage blocks); named after the URL, so every member shares it."""
    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=url)
    block.save("tlpipe-cache-" + hashlib.sha256(url.encode()).hexdigest()[:12], overwrite=True)
    return block


def result_storage(project: Path):
    """The `result_storage` of stage tasks: a folder as a Path, an fsspec URL as a saved block."""
    from prefect.settings import PREFECT_API_URL

    where = cache_dir(project)
    return where if isinstance(where, Path) else _remote_storage(where, str(PREFECT_API_URL.value()))


def _key_from_inputs(context, parameters: dict) -> str:
    return parameters["cache_key"]


@task(cache_key_fn=_key_from_inputs, persist_result=True, result_serializer="json")
def stage_task(spec: versioning.StageSpec, project: str, cache_key: str, params: dict, deps: dict,
               device: str, parent_id: str, tags: dict, show_progress: bool) -> dict:
    """Runs one stage in-process (the task is skipped on a cache hit for `cache_key`)."""
    return runner.execute_stage(Path(project), spec, params=params, deps=deps, cache_key=cache_key,
                                device=device, parent_id=parent_id, tags=tags, show_progress=show_progress)


def _run_stage(spec, project: Path, *, refresh: bool, **kwargs) -> tuple[dict, str]:
    """(manifest, how): runs the task, then makes sure a cache hit's outputs are really there."""
    configured = stage_task.with_options(
        name=spec.name, task_run_name=spec.name, refresh_cache=refresh, result_storage=result_storage(project)
    )
    state = configured(spec, str(project), return_state=True, **kwargs)
    manifest = state.result()
    if state.name != "Cached":
        return manifest, RAN
    stale = {rel: md5 for rel, md5 in manifest["outs"].items() if not versioning.outputs_match(project, {rel: md5})}
    if not stale:
        return manifest, CACHED
    if all(versioning.restore_output(project, rel, md5) for rel, md5 in stale.items()):
        return manifest, RESTORED
    get_run_logger().warning("%s: cached outputs %s are gone from the DVC cache; running again", spec.name, sorted(stale))
    state = configured.with_options(refresh_cache=True)(spec, str(project), return_state=True, **kwargs)
    return state.result(), RAN


def gpu_index(device: str) -> int | None:
    """The physical GPU a CUDA device name means (through CUDA_VISIBLE_DEVICES); None off CUDA."""
    kind, _, index = device.partition(":")
    if kind != "cuda":
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    local = int(index or 0)
    return int(visible[local]) if local < len(visible) and visible[local].isdigit() else local


def accelerator_slot(spec, device: str):
    """The GPU's 1-slot global concurrency limit, held while a stage marked `meta.accelerator: gpu`
    runs on CUDA (two workers on one GPU take turns); nothing for CPU stages or devices."""
    from prefect.concurrency.sync import concurrency

    from flows.deploy import gpu_slot

    index = gpu_index(device)
    if index is None or spec.meta.get("accelerator") != "gpu":
        return contextlib.nullcontext()
    return concurrency(gpu_slot(index), occupy=1)


def _stage_step(spec, project: Path, stage_params: dict, known: dict, commits, *, refresh: bool, env: dict,
                device: str, parent_id: str, tags: dict, show_progress: bool, agent: str | None = None) -> dict:
    """Keys, runs or reuses, records and queues the DVC commit of one stage; returns its summary.

    `agent` names the work pool whose worker has just run the stage (flows/agents.py): its record is
    then a hit here, and the stage counts as ran, by the agent's MLflow run.
    """
    started = time.perf_counter()
    deps = runner.dep_hashes(project, spec, known, stage_params)
    key = cachekey.stage_cache_key(spec, params={f"params/{spec.name}.yaml": stage_params}, dep_hashes=deps, env=env)
    with accelerator_slot(spec, device) if agent is None else contextlib.nullcontext():  # the agent held it
        manifest, how = _run_stage(spec, project, refresh=refresh, cache_key=key, params=stage_params, deps=deps,
                                   device=device, parent_id=parent_id, tags=tags, show_progress=show_progress)
    if how == RAN:
        commits.submit(spec.name)  # lands while the next stage computes
    else:
        if agent is None:
            tracking.record_cached_stage(spec.name, parent_id=parent_id, params=stage_params, manifest=manifest,
                                         tags={**tags, tracking.TAG_CACHE_KEY: key})
        commits.wait()  # dvc.lock is read next: earlier commits first
        if not versioning.lock_records(project, spec, deps=deps, outs=manifest["outs"],
                                       params=spec.declared(stage_params)):
            commits.submit(spec.name)
    summary = {"stage": spec.name, "status": RAN if agent else how, "cache_key": key, "deps": deps,
               "seconds": time.perf_counter() - started, "outs": manifest["outs"], "metrics": manifest["metrics"],
               "mlflow_run_id": manifest["mlflow_run_id"]}
    return {**summary, "agent": agent} if agent else summary


def start_tracked_run(project: Path, kind: str, params: dict) -> tuple[str, str, dict]:
    """(MLflow parent run id, Prefect flow-run id, lineage tags) of the flow run in progress."""
    tracking.configure(project)
    flow_run_id = str(get_run_context().flow_run.id)
    tags = {tracking.TAG_FLOW_RUN: flow_run_id, tracking.TAG_GIT: tracking.git_commit(project)}
    run_name = f"{kind}-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return tracking.start_pipeline_run(project, run_name=run_name, tags=tags, params=params), flow_run_id, tags


def model_name(params: dict) -> str:
    """The registered model's default name: tlpipe-<target data set>."""
    target = Path(str(params["prepare"]["target"]["name"]).rstrip("/")).name
    return "tlpipe-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in target)


def register_and_report(project: Path, results: list[dict], name: str, parent_id: str, tags: dict,
                        margin: float) -> dict:
    """Registers the fine-tuned model with its lineage in tags and publishes the evaluation report
    as a Prefect markdown artifact; returns {"model": name, "version": ..., "new_version": bool}."""
    from prefect.artifacts import create_markdown_artifact

    by_stage = {r["stage"]: r for r in results}
    finetune, evaluate = by_stage["finetune"], by_stage["evaluate"]
    lineage_tags = {f"tlpipe.key.{r['stage']}": r["cache_key"] for r in results}
    lineage_tags.update({f"tlpipe.out.{rel}": md5 for rel, md5 in finetune["outs"].items()})
    lineage_tags.update({tracking.TAG_PIPELINE_RUN: parent_id, **tags,
                    "test_accuracy": repr(evaluate["metrics"]["accuracy"]),
                    "test_macro_f1": repr(evaluate["metrics"]["macro_f1"])})
    version, created = tracking.register_model(
        name, finetune["metrics"]["model_uri"], run_id=finetune["mlflow_run_id"], tags=lineage_tags,
        identity=f"{finetune['cache_key']}:{evaluate['cache_key']}")
    report = (project / "data" / "evaluate" / "report.md").read_text(encoding="utf-8")
    create_markdown_artifact(key="evaluation-report", markdown=report,
                             description=f"{name} version {version}")
    registered = {"model": name, "version": version, "new_version": created}
    if created:
        registered.update(promote(name, version, evaluate["metrics"]["accuracy"], margin))
    return registered


def promote(name: str, version: str, accuracy: float, margin: float) -> dict:
    """Moves the `champion` alias to a new version only when its test accuracy beats the champion's
    by at least `margin`; otherwise the version becomes the `challenger`. Says why either way."""
    holder = tracking.alias_holder(name, CHAMPION)
    if holder is None:
        alias, reason = CHAMPION, f"first version of {name}"
    elif accuracy >= holder[1] + margin:
        alias, reason = CHAMPION, (f"test accuracy {accuracy:.4f} beats champion version {holder[0]} "
                                   f"({holder[1]:.4f}) by at least the margin {margin}")
    else:
        alias, reason = CHALLENGER, (f"test accuracy {accuracy:.4f} does not beat champion version {holder[0]} "
                                     f"({holder[1]:.4f}) by the margin {margin}")
    tracking.set_alias(name, alias, version, reason=reason)
    get_run_logger().info("%s version %s is the %s: %s", name, version, alias, reason)
    return {"alias": alias, "reason": reason}


def store_lineage(project: Path, doc: dict) -> None:
    """The run's lineage document in three places: the project, the MLflow parent run, Prefect."""
    from prefect.artifacts import create_markdown_artifact

    lineage.save_local(project, doc)
    tracking.client().log_dict(doc["pipeline_run"], doc, "lineage.json")
    create_markdown_artifact(key=lineage.ARTIFACT_KEY, markdown=lineage.to_markdown(doc),
                             description=f"lineage of pipeline run {doc['pipeline_run']}")


@flow(name="tlpipe")
def pipeline(project: str = ".", refresh: list[str] | None = None, until: str | None = None,
             show_progress: bool = True, checked: bool = False, device: str | None = None,
             registered_model: str | None = None, agents: dict[str, str] | None = None) -> dict:
    """Runs (or reuses) every stage of dvc.yaml up to `until`; `refresh` names stages to force ("all" for every one).

    `checked` says the caller already ran the preflight checks on these params (the CLI does);
    `device` overrides TLPIPE_DEVICE; `registered_model` names the model in the MLflow registry
    (default tlpipe-<target>). A run through `evaluate` registers its model and publishes the report.
    `agents` ({accelerator: device}, e.g. {"gpu": "cuda"}) sends each stage whose `meta.accelerator`
    is named to the workers of that pool (deployment tlpipe-stage/stage-<accelerator>, flows/agents.py),
    which run it on that device; the other stages run here. Runs in one project take turns (a scheduled run waits for a manual one, and the other way round).
    """
    project_path = Path(project).resolve()
    waiting = lambda: get_run_logger().info("another pipeline run holds %s; waiting for it", project_path)  # noqa: E731
    with locked(project_path / ".tlpipe" / "pipeline.lock", on_wait=waiting):
        return run_pipeline(project_path, refresh=refresh, until=until, show_progress=show_progress,
                            checked=checked, device=device, registered_model=registered_model, agents=agents or {})


def run_pipeline(project_path: Path, *, refresh, until, show_progress, checked, device, registered_model,
                 agents: dict[str, str]) -> dict:
    """The body of `pipeline`, for a flow run that holds the project's run lock."""
    stages = versioning.select_stages(versioning.load_pipeline(project_path), until)
    params = config.load_all_params(project_path, [s.name for s in stages])
    if not checked:
        runner.preflight(project_path, stages, params)
    refresh_set = {s.name for s in stages} if refresh and "all" in refresh else set(refresh or ())
    device = device or runner.device_name()
    env = runner.run_environment(device)
    data = remote.tracked_data(project_path)
    parent_id, flow_run_id, tags = start_tracked_run(project_path, "pipeline", params)
    known: dict[str, str] = {}
    results = []
    try:
        with versioning.BackgroundCommits(project_path) as commits:
            for spec in stages:
                step = {"refresh": spec.name in refresh_set, "env": env, "device": device}
                pool = spec.meta.get("accelerator", "cpu")
                if pool in agents:
                    from flows.agents import dispatch

                    commits.wait()  # the agent may need upstream outputs from the DVC remote
                    step = dispatch(spec, project_path, params[spec.name], known, pool=pool, device=agents[pool],
                                    refresh=step["refresh"], parent_id=parent_id, tags=tags)
                results.append(_stage_step(spec, project_path, params[spec.name], known, commits, **step,
                                           parent_id=parent_id, tags=tags, show_progress=show_progress))
                known.update(results[-1]["outs"])
        pushed = remote.push_outputs(project_path, [md5 for r in results for md5 in r["outs"].values()])
        if pushed:
            get_run_logger().info("pushed %d objects to the DVC remote %r", pushed, remote.default_remote(project_path))
    except BaseException:
        tracking.end_run(parent_id, failed=True)
        raise
    final = results[-1]["metrics"] if results and results[-1]["stage"] == "evaluate" else {}
    registered = None
    if final:
        registered = register_and_report(project_path, results, registered_model or model_name(params), parent_id,
                                         tags, params["evaluate"]["promote_margin"])
    store_lineage(project_path, lineage.document(parent_id=parent_id, flow_run_id=flow_run_id, git=tags[tracking.TAG_GIT],
                                                 stages=results, params=params, registered=registered, data=data))
    tracking.end_run(parent_id, metrics={k: v for k, v in final.items() if k in ("accuracy", "macro_f1")})
    return {"mlflow_run_id": parent_id, "flow_run_id": flow_run_id, "stages": results, "data": data,
            "tracking_uri": tracking.configure(project_path), "registered": registered}
