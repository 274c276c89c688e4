"""The registered model of a pipeline run, and champion/challenger promotion in the MLflow registry.

The fine-tuned model becomes a version of `tlpipe-<target>` (once: a version carrying the same stage
keys is reused) with its lineage in tags; it takes the `champion` alias only when its test accuracy
beats the champion's by `evaluate.promote_margin`, else it is the `challenger`. The reason is kept on
the version either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow
from prefect import get_run_logger

from runner import tracking

CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases


def data_name(spec: dict) -> str:
    """A data set's short name: `digits`, `cifar10` for `uoft-cs/cifar10`, the folder of a local path."""
    return Path(str(spec.get("name", "?")).rstrip("/")).name or "?"


def model_name(params: dict) -> str:
    """The registered model's default name: tlpipe-<target data set>."""
    target = data_name(params["prepare"]["target"])
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
    with registry_lock():
        version, created = register_model(name, finetune["model_uri"], run_id=finetune["mlflow_run_id"],
                                          tags=lineage_tags, identity=f"{finetune['cache_key']}:{evaluate['cache_key']}")
        registered = {"model": name, "version": version, "new_version": created}
        if created:
            registered.update(promote(name, version, evaluate["metrics"]["accuracy"], margin))
    report = (project / "data" / "evaluate" / "report.md").read_text(encoding="utf-8")
    create_markdown_artifact(key="evaluation-report", markdown=report, description=f"{name} version {version}")
    return registered


REGISTRY_LIMIT = "tlpipe-registry"


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Registration is search-then-create, and promotion read-then-move: two runs of one model ending
    together (two members of a team) would both register a version, or both take `champion`. With a
    Prefect server shared by the team (PREFECT_API_URL), its 1-slot global concurrency limit makes them
    take turns; its lease (60 s) frees the slot of a process killed while holding it. Runs in one
    project already take turns on the project lock."""
    if not os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=REGISTRY_LIMIT, limit=1))
    with concurrency(REGISTRY_LIMIT, occupy=1, timeout_seconds=600, lease_duration=60, strict=True):
        yield


def promote(name: str, version: str, accuracy: float, margin: float) -> dict:
    """Moves the `champion` alias to a new version only when its test accuracy beats the champion's
    by at least `margin`; otherwise the version becomes the `challenger`. Says why either way."""
    holder = alias_holder(name, CHAMPION)
    if holder is None:
        alias, reason = CHAMPION, f"first version of {name}"
    elif accuracy >= holder[1] + margin:
        alias, reason = CHAMPION, (f"test accuracy {accuracy:.4f} beats champion version {holder[0]} "
                                   f"({holder[1]:.4f}) by at least the margin {margin}")
    else:
        alias, reason = CHALLENGER, (f"test accuracy {accuracy:.4f} does not beat champion version {holder[0]} "
                                     f"({holder[1]:.4f}) by the margin {margin}")
    set_alias(name, alias, version, reason=reason)
    get_run_logger().info("%s version %s is the %s: %s", name, version, alias, reason)
    return {"alias": alias, "reason": reason}


def register_model(name: str, model_uri: str, *, run_id: str, tags: dict[str, str], identity: str) -> tuple[str, bool]:
    """(version, created): the model at `model_uri` as a version of the registered model `name`.

    `identity` (e.g. the cache keys of the stages that made the model) makes registration idempotent:
    a version that already carries it is returned instead of registering the same model twice.
    """
    mlf = tracking.client()
    try:
        mlf.create_registered_model(name, description="tlpipe target models; lineage in each version's tags")
    except mlflow.exceptions.MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    for version in mlf.search_model_versions(f"name = '{name}' and tags.`tlpipe.identity` = '{identity}'"):
        return version.version, False
    # A tracking server checks that a `models:/m-<id>` source belongs to the logged model it names.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    run_id = tracking.model_source_run(model_uri) or run_id  # a reused stage's model may be logged by its own run
    version = mlf.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                       tags={**tags, "tlpipe.identity": identity})
    return version.version, True


def alias_holder(name: str, alias: str) -> tuple[str, float] | None:
    """(version, its test accuracy tag) holding `alias` of the registered model, or None."""
    try:
        version = tracking.client().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return version.version, float(version.tags.get("test_accuracy", "nan"))


def set_alias(name: str, alias: str, version: str, *, reason: str) -> None:
    mlf = tracking.client()
    # both idempotent; the store inserts the alias row when absent, so two members at once may race
    tracking.retry_insert_race(lambda: mlf.set_registered_model_alias(name, alias, version))
    tracking.retry_insert_race(lambda: mlf.set_model_version_tag(name, version, f"tlpipe.{alias}_reason", reason))
