"""Where an artifact came from: the lineage document of a pipeline run, stored three ways, and the
lookup of any reference to it.

Each `tlpipe run` writes one document (every stage: ran or cached and which run produced it, cache
key, params, input and output DVC hashes, metrics, upstream stages; the git commit, the Prefect flow
run, the MLflow parent run, the registered model version) to `.tlpipe/lineage/<run>.json`, to the
MLflow parent run as `lineage.json`, and to Prefect as the markdown artifact `lineage` with the JSON
inside. A reference resolves through MLflow first; when MLflow cannot be reached, the local copy
and then Prefect answer, with a warning, so lineage stays readable with one backend down.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from tlpipe.io import read_json, staged_outputs, write_json

from runner.dvc import read_lock
from runner.events import RAN, Observer, Outcome, StageRun
from runner.spec import is_within, producer_of

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
FLOW_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MODEL_REF = re.compile(r"^(?P<name>[^/@]+)(/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
ARTIFACT_KEY = "lineage"


class Collector(Observer):
    """Gathers the outcome of every stage of a pipeline run, in order, for its lineage document.
    A stage that a worker of an agent pool ran (`ran_on`) counts as ran, by that agent's run."""

    def __init__(self):
        self.stages: list[dict] = []
        self.agents: dict[str, str] = {}

    def ran_on(self, stage: str, pool: str) -> None:
        self.agents[stage] = pool

    def _add(self, run: StageRun, outcome: Outcome) -> None:
        summary = outcome.summary()
        if run.spec.name in self.agents:
            summary.update(status=RAN, agent=self.agents[run.spec.name])
        self.stages.append(summary)

    stage_finished = stage_cached = stage_restored = _add


def document(*, parent_id: str, flow_run_id: str, git: str, stages: list[dict], params: dict,
             registered: dict | None, data: dict[str, str] | None = None, git_dirty: bool = False) -> dict:
    """The lineage document of one pipeline run from the flow's per-stage results; `data` holds the
    versions of the `dvc add`ed data in the project ({path: md5}) when the run started."""
    producer = {}
    entries = []
    for s in stages:
        for rel in s["outs"]:
            producer[rel] = s["stage"]
        entries.append({
            "stage": s["stage"], "status": s["status"], "cache_key": s["cache_key"],
            "produced_by_run": s["mlflow_run_id"], "params": params.get(s["stage"], {}),
            "inputs": s.get("deps", {}), "outputs": s["outs"],
            "metrics": {k: v for k, v in s["metrics"].items() if isinstance(v, (int, float, str))},
            "upstream": sorted({p for d in s.get("deps", {}) if (p := producer_of(d, producer))} - {s["stage"]},
                               key=[x["stage"] for x in stages].index),
        })
    return {"pipeline_run": parent_id, "flow_run": flow_run_id, "git_commit": git, "git_dirty": git_dirty,
            "registered_model": registered,
            "data": dict(data or {}), "stages": entries}


def local_dir(project: Path) -> Path:
    return Path(project) / ".tlpipe" / "lineage"


def save_local(project: Path, doc: dict) -> Path:
    path = local_dir(project) / f"{doc['pipeline_run']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_outputs(path) as (temp,):
        write_json(temp, doc)
    return path


def to_markdown(doc: dict) -> str:
    """The document for people (a table) and for machines (the JSON, fenced), in one markdown text."""
    lines = [f"# Lineage of pipeline run {doc['pipeline_run']}", "",
             f"Prefect flow run `{doc['flow_run']}`, git commit `{doc['git_commit']}`"
             f"{' (with uncommitted changes)' if doc.get('git_dirty') else ''}.", "",
             "| stage | status | produced by run | cache key | upstream |", "|---|---|---|---|---|"]
    for s in doc["stages"]:
        lines.append(f"| {s['stage']} | {s['status']} | {s['produced_by_run']} | {s['cache_key'][:16]} | "
                     f"{', '.join(s['upstream']) or 'raw data'} |")
    return "\n".join(lines + ["", "```json", json.dumps(doc, indent=1, sort_keys=True), "```", ""])


def from_markdown(text: str) -> dict:
    """The document back out of `to_markdown`'s text."""
    found = re.search(r"```json\n(.*?)\n```", text, flags=re.S)
    if not found:
        raise ValueError("no lineage JSON in the markdown artifact")
    return json.loads(found.group(1))


def render(doc: dict, *, focus: str | None = None) -> str:
    """Plain text for the terminal: a header, then per stage its status, producer, key, params, data, metrics."""
    model = doc.get("registered_model")
    dirty = " (dirty)" if doc.get("git_dirty") else ""
    out = [f"pipeline run {doc['pipeline_run']}   Prefect flow run {doc['flow_run']}   git {doc['git_commit'][:12]}{dirty}"]
    if model:
        out.append(f"registered model: models:/{model['model']}/{model['version']}")
    if doc.get("data"):
        out.append("data added with dvc: " + ", ".join(f"{k}@{v[:12]}" for k, v in doc["data"].items()))
    for s in doc["stages"]:
        mark = "*" if s["stage"] == focus else " "
        producer = "" if s["status"] == "ran" else f" (produced by run {s['produced_by_run']})"
        out += [f"{mark} {s['stage']}: {s['status']}{producer}   key {s['cache_key'][:16]}",
                f"    upstream: {', '.join(s['upstream']) or 'raw data'}",
                "    params: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in s["params"].items()),
                "    inputs: " + (", ".join(f"{k}@{v[:12]}" for k, v in s["inputs"].items() if not k.endswith(".py"))
                                  or "none"),
                "    outputs: " + ", ".join(f"{k}@{v[:12]}" for k, v in s["outputs"].items()),
                "    metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in s["metrics"].items())]
    return "\n".join(out)


def load_local(project: Path, **match) -> dict | None:
    """The newest local document whose top-level fields equal `match` (e.g. flow_run=...)."""
    docs = sorted(local_dir(project).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in docs:
        doc = read_json(path)
        if all(doc.get(k) == v for k, v in match.items()):
            return doc
    return None


def classify(ref: str, project: Path) -> str:
    """path | flow_run | mlflow_run | model; ValueError when `ref` is none of them."""
    if ref.startswith("data/") or (Path(project) / ref).exists():
        return "path"
    if FLOW_RUN_ID.match(ref):
        return "flow_run"
    if RUN_ID.match(ref):
        return "mlflow_run"
    if MODEL_REF.match(ref):
        return "model"
    raise ValueError(f"{ref!r} is not an output path under data/, an MLflow run id (32 hex), a Prefect flow-run "
                     "id (uuid) or a registered model (name/version or name@alias)")


def current_output(project: Path, ref: str) -> tuple[str, str]:
    """(stage output path, its md5 in dvc.lock) of the output that holds `ref`."""
    for entry in read_lock(project).get("stages", {}).values():
        for out in entry.get("outs", []) + entry.get("metrics", []):
            if is_within(ref, out["path"]):
                return out["path"], out["md5"]
    raise LookupError(f"{ref}: no stage output in dvc.lock holds it (run the pipeline first)")


def mlflow_reachable() -> tuple[bool, str]:
    """(reachable, tracking URI): a quick probe, so a dead server is reported at once, not after retries."""
    import mlflow
    import urllib.request

    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file(), uri
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=3)
            return True, uri
        except OSError:
            return False, uri
    return True, uri


@contextlib.contextmanager
def _not_found_as(message: str):
    """MLflow's "does not exist" (a run id, model version or alias nobody made) as a LookupError with
    `message`; other MLflow errors go on as they are."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise LookupError(message) from None


def _from_mlflow(kind: str, ref: str, project: Path) -> tuple[dict, str | None]:
    from runner import tracking

    mlf = tracking.client()
    focus = None
    if kind == "mlflow_run":
        with _not_found_as(f"{ref}: no MLflow run with this id in {tracking.configure(project)}"):
            run = mlf.get_run(ref)
        parent, focus = run.data.tags.get("mlflow.parentRunId", ref), run.data.tags.get(tracking.TAG_STAGE)
    elif kind == "flow_run":
        runs = [r for r in tracking.find_runs(f"tags.`{tracking.TAG_FLOW_RUN}` = '{ref}'")
                if "mlflow.parentRunId" not in r.data.tags]
        if not runs:
            raise LookupError(f"no pipeline run in MLflow for Prefect flow run {ref}")
        parent = runs[0].info.run_id
    elif kind == "model":
        m = MODEL_REF.match(ref)
        what = f"version {m['version']}" if m["version"] else f"alias {m['alias']!r}"
        with _not_found_as(f"{ref}: the registered model {m['name']!r} has no {what} ({_versions(mlf, m['name'])})"):
            version = (mlf.get_model_version(m["name"], m["version"]) if m["version"]
                       else mlf.get_model_version_by_alias(m["name"], m["alias"]))
        parent, focus = version.tags[tracking.TAG_PIPELINE_RUN], "finetune"
    else:
        rel, md5 = current_output(project, ref)
        runs = tracking.find_runs(f"tags.`tlpipe.out.{rel}` = '{md5}'")
        if not runs:
            raise LookupError(f"{ref}: no run in MLflow produced {rel} with md5 {md5}")
        parent, focus = runs[0].data.tags.get("mlflow.parentRunId", runs[0].info.run_id), runs[0].data.tags.get(tracking.TAG_STAGE)
    return _stored_document(mlf, parent), focus


def _versions(mlf, name: str) -> str:
    """What a registered model does have, for an error message."""
    from mlflow.exceptions import MlflowException

    try:
        model = mlf.get_registered_model(name)
    except MlflowException:
        return "no model of this name is registered"
    versions = sorted(int(v.version) for v in mlf.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"@{alias}" for alias in sorted(model.aliases or {}))
    return f"versions {', '.join(map(str, versions)) or 'none'}" + (f"; aliases {aliases}" if aliases else "")


def _stored_document(mlf, parent: str) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlf.download_artifacts(parent, "lineage.json", tmp)
        except Exception as exc:  # the run exists but finished without a document (it failed)
            raise LookupError(f"pipeline run {parent} has no lineage.json (did it finish?): {exc}") from None
        return read_json(Path(path))


def _from_local(kind: str, ref: str, project: Path) -> tuple[dict | None, str | None]:
    if kind == "flow_run":
        return load_local(project, flow_run=ref), None
    if kind == "mlflow_run":
        doc = load_local(project, pipeline_run=ref)
        if doc:
            return doc, None
        for path in sorted(local_dir(project).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            doc = read_json(path)
            for s in doc["stages"]:
                if s["produced_by_run"] == ref:
                    return doc, s["stage"]
        return None, None
    if kind == "model":
        m = MODEL_REF.match(ref)
        for path in sorted(local_dir(project).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
            doc = read_json(path)
            model = doc.get("registered_model") or {}
            if model.get("model") == m["name"] and m["version"] and str(model.get("version")) == m["version"]:
                return doc, "finetune"
        return None, None
    rel, md5 = current_output(project, ref)
    for path in sorted(local_dir(project).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        doc = read_json(path)
        for s in doc["stages"]:
            if s["outputs"].get(rel) == md5:
                return doc, s["stage"]
    return None, None


def _from_prefect(flow_run: str) -> dict | None:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))

    found = asyncio.run(read())
    return from_markdown(found[-1].data) if found else None


def resolve(ref: str, project: Path) -> tuple[dict, str | None, list[str]]:
    """(document, the stage `ref` points at or None, warnings). MLflow first; when it cannot be
    reached, the local copy, then Prefect (flow-run ids), each with a warning.

    Raises:
        ValueError: `ref` is not a reference of a known kind.
        LookupError: nothing answers for it.
    """
    kind = classify(ref, project)
    reachable, uri = mlflow_reachable()
    if reachable:
        doc, focus = _from_mlflow(kind, ref, project)
        return doc, focus, []
    warnings = [f"MLflow is not reachable at {uri}: lineage from the stored document (MLflow run links unchecked)"]
    doc, focus = _from_local(kind, ref, project)
    if doc is None and kind == "flow_run":
        try:
            doc = _from_prefect(ref)
            warnings.append("read from the Prefect artifact 'lineage' of the flow run")
        except Exception as exc:  # Prefect down as well
            warnings.append(f"Prefect could not be asked either: {type(exc).__name__}: {exc}")
    if doc is None:
        raise LookupError(f"{ref}: MLflow is not reachable at {uri} and no stored lineage document matches")
    return doc, focus, warnings
