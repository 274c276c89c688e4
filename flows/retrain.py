"""Scheduled retraining: bring the DVC-tracked data up to date, say what changed since the last run,
then run the pipeline, where only the stages that the changed data reaches run again.

Deployed from prefect.yaml (`tlpipe serve` runs the deployments in one process, `tlpipe deploy`
registers them for workers). The new model becomes the champion only when it beats the current one
by `evaluate.promote_margin` (flows/promotion.py); the run's summary says why either way.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.pipeline import pipeline
from runner import dvc, lineage

SUMMARY_KEY = "retrain-summary"


def changed_data(before: dict[str, str] | None, now: dict[str, str]) -> dict[str, list[str | None]]:
    """{path: [version before, version now]} of the tracked data that differs (None: absent)."""
    before = before or {}
    return {path: [before.get(path), now.get(path)]
            for path in sorted(set(before) | set(now)) if before.get(path) != now.get(path)}


def unrecorded_changes(project: Path, tracked: dict[str, str]) -> list[str]:
    """Tracked paths whose files differ from their `.dvc` record (edited without `dvc add`)."""
    return [rel for rel, md5 in tracked.items()
            if (Path(project) / rel).exists() and dvc.md5_path(Path(project) / rel) != md5]


def summarise(changes: dict, previous: dict | None, result: dict) -> str:
    """One paragraph: what data changed, which stages ran and which were cache hits, and the model."""
    ran = [s["stage"] for s in result["stages"] if s["status"] == "ran"]
    hits = [s["stage"] for s in result["stages"] if s["status"] != "ran"]
    if previous is None:
        data = "first recorded run"
    elif changes:
        data = "data changed since run " + previous["pipeline_run"] + ": " + "; ".join(
            f"{path} {str(old)[:12]} -> {str(new)[:12]}" for path, (old, new) in changes.items())
    else:
        data = "no tracked data changed since run " + previous["pipeline_run"]
    if not ran:
        stages = f"nothing to retrain: all {len(hits)} stages were cache hits"
    else:
        stages = f"re-ran {', '.join(ran)}" + (f"; cache hits: {', '.join(hits)}" if hits else "")
    text = f"{data}. {stages}."
    registered = result.get("registered")
    if registered:
        if registered.get("new_version"):
            text += (f" Registered {registered['model']} version {registered['version']} as "
                     f"{registered['alias']}: {registered['reason']}.")
        else:
            text += f" The model is unchanged ({registered['model']} version {registered['version']})."
    return text


def retrain_run_name() -> str:
    """`<project>: retrain`, from the flow run's parameters (the pipeline inside adds target and digest tags)."""
    from prefect.runtime import flow_run

    return f"{Path(flow_run.parameters.get('project') or '.').resolve().name}: retrain"


@flow(name="tlpipe-retrain", flow_run_name=retrain_run_name)
def retrain(project: str = ".", pull: bool = True, registered_model: str | None = None,
            agents: dict[str, str] | None = None) -> dict:
    """Pulls the DVC-tracked data (when a remote is set and `pull`), compares its versions with the
    last run's, runs the pipeline and publishes a summary (Prefect artifact `retrain-summary`).
    `agents` sends stages to work pools (see flows/pipeline.py: pipeline)."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    project_path = Path(project).resolve()
    if pull and (fetched := dvc.pull_tracked(project_path)):
        logger.info("dvc pull brought %d files of tracked data", fetched)
    tracked = dvc.tracked_data(project_path)
    for rel in unrecorded_changes(project_path, tracked):
        logger.warning("%s differs from %s.dvc: the run uses the files as they are; `dvc add %s` records them",
                       rel, rel, rel)
    previous = lineage.load_local(project_path)
    changes = changed_data(previous.get("data") if previous else None, tracked)
    logger.info("tracked data: %s", ", ".join(f"{k}@{v[:12]}" for k, v in tracked.items()) or "none")
    result = pipeline.fn(project=str(project_path), show_progress=False, registered_model=registered_model,
                         agents=agents)
    text = summarise(changes, previous, result)
    logger.info(text)
    create_markdown_artifact(key=SUMMARY_KEY, markdown=f"# Retraining\n\n{text}\n", description=text[:500])
    return {**result, "data_changes": changes, "summary": text,
            "ran": [s["stage"] for s in result["stages"] if s["status"] == "ran"]}
