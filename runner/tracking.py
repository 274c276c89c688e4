"""The one place that talks to MLflow: where the store is, the parent run of a pipeline run or
sweep, what a stage logs to its run (`StageTracker`), and the runs killed processes left open. The
observer that gives every stage its child run is `runner.recorder.Recorder`."""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

EXPERIMENT = "tlpipe"
TAG_STAGE = "tlpipe.stage"
TAG_CACHED = "tlpipe.cached"
TAG_CACHE_KEY = "tlpipe.cache_key"
TAG_PRODUCED_BY = "tlpipe.produced_by_run"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_GIT = "mlflow.source.git.commit"
TAG_DIRTY = "tlpipe.git.dirty"  # "true" when tracked files differed from the commit
TAG_USER, TAG_SOURCE, TAG_SOURCE_TYPE = "mlflow.user", "mlflow.source.name", "mlflow.source.type"
TAG_NOTE = "mlflow.note.content"  # a run's description, markdown in the UI
TAG_PIPELINE_RUN = "tlpipe.pipeline_run"
TAG_HOST, TAG_PID = "tlpipe.host", "tlpipe.pid"  # the process that keeps the run open
REPORT_SUFFIXES = {".csv", ".json", ".md", ".png", ".html"}  # logged as artifacts; models and data stay in DVC
MODEL_REQUIREMENTS = ("torch", "transformers", "safetensors", "numpy")


_CLIENTS: dict[str, MlflowClient] = {}


def client() -> MlflowClient:
    """One client per tracking URI (building one opens the store, which is not free)."""
    uri = mlflow.get_tracking_uri()
    if uri not in _CLIENTS:
        _CLIENTS[uri] = MlflowClient(uri)
    return _CLIENTS[uri]


_DEFAULTED: set[str] = set()  # project stores chosen here (MLflow then sets MLFLOW_TRACKING_URI to them)


def configure(project: Path) -> str:
    """Points MLflow at MLFLOW_TRACKING_URI, or at `mlflow.db` in the project; returns the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri or uri in _DEFAULTED:  # not the user's choice but another project's default
        uri = f"sqlite:///{Path(project).resolve() / 'mlflow.db'}"
        _DEFAULTED.add(uri)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        relocate_artifacts(Path(uri.removeprefix("sqlite:///")))
    return uri


# Where a local store names its artifact folder: the experiment, each run, logged model and model version.
_ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"), ("model_versions", "storage_location"))


def relocate_artifacts(database: Path) -> list[str]:
    """Points a local store at the artifact folder beside its database (`mlartifacts/`).

    MLflow keeps that folder as an absolute path, so a project copied or moved with its `mlflow.db`
    would go on reading and writing the original project's artifacts. Returns the old folders replaced.
    """
    import sqlite3

    if not database.is_file():
        return []
    new = (database.resolve().parent / "mlartifacts").as_uri()
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as con, con:
        try:
            found = con.execute("SELECT artifact_location FROM experiments WHERE artifact_location LIKE 'file:%'")
        except sqlite3.OperationalError:  # not an MLflow store yet
            return []
        olds = {loc[: loc.rindex("/mlartifacts") + len("/mlartifacts")] for (loc,) in found if "/mlartifacts" in loc}
        for old in sorted(olds - {new}):
            for table, column in _ARTIFACT_COLUMNS:
                with contextlib.suppress(sqlite3.OperationalError):  # a table this MLflow version lacks
                    con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (fixed names)
                                f"WHERE substr({column}, 1, ?) = ?", (new, len(old) + 1, len(old), old))
    return sorted(olds - {new})


# The MLflow UI shows an experiment of this kind as model training (runs, metrics, models), not as
# GenAI evaluations, which it guesses for experiments whose runs log data sets.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


INTEGRITY_ERROR = re.compile(r"sqlalche\.me/e/\d+/gkpj")  # any SQLAlchemy version


def retry_insert_race(call, attempts: int = 3):
    """`call()`, again when the store lost an insert race: MLflow's SQL store looks a data set up by
    (experiment, name, digest) and inserts it when absent, so two members logging the same data at
    once make one of them fail with the database's IntegrityError (seen on PostgreSQL under load);
    the next try finds the winner's row. The server passes the error on as text only, which ends in
    SQLAlchemy's link for IntegrityError (code gkpj)."""
    for attempt in range(1, attempts):
        try:
            return call()
        except mlflow.exceptions.MlflowException as exc:
            if not INTEGRITY_ERROR.search(str(exc)):
                raise
        time.sleep(0.1 * attempt)
    return call()  # the last try raises whatever it meets


def experiment_id(mlf: MlflowClient) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = mlf.get_experiment_by_name(name)
    if found is None:
        try:
            return mlf.create_experiment(name, artifact_location=_local_artifact_location(), tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            found = mlf.get_experiment_by_name(name)
    for key, value in EXPERIMENT_KIND.items():
        if key not in found.tags:  # an experiment made before (or by another tool): say what it holds
            retry_insert_race(lambda: mlf.set_experiment_tag(found.experiment_id, key, value))  # noqa: B023 (called at once)
    return found.experiment_id


def _local_artifact_location() -> str | None:
    """Artifacts of a local sqlite store go beside the database, not into the current directory."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides (and proxies) where artifacts live
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def git_state(project: Path) -> tuple[str, bool | None]:
    """(HEAD commit id of the project's repository, whether tracked files differ from it);
    ("unknown", None) outside a git repository."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=project, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown", None
    return head, bool(dirty)


def command_line() -> str:
    """The command this process runs, as a person typed it: `tlpipe run -s prune.ratio=0.5`,
    `python -m tasks.prune` (under `dvc repro`)."""
    import shlex
    import sys

    if Path(sys.argv[0]).name == "tlpipe":
        return shlex.join(["tlpipe", *sys.argv[1:]])
    argv = getattr(sys, "orig_argv", sys.argv)
    return shlex.join([Path(argv[0]).name, *argv[1:]])


def user_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        return f"uid {os.getuid()}"


def source_tags(project: Path) -> dict[str, str]:
    """What MLflow's UI shows as a run's user, source and commit (it fills them only for runs it
    starts itself): the command, who ran it, the plain commit id and, apart, whether it was dirty."""
    head, dirty = git_state(project)
    tags = {TAG_USER: user_name(), TAG_SOURCE: command_line(), TAG_SOURCE_TYPE: "LOCAL"}
    if dirty is not None:
        tags.update({TAG_GIT: head, TAG_DIRTY: str(dirty).lower()})
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    """{'model': {'depths': [1]}} -> {'model.depths': [1]} (MLflow params are flat)."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def numeric(metrics: dict) -> dict[str, float]:
    """The finite scalar entries of a (nested) metrics dict, flattened."""
    return {
        k: float(v)
        for k, v in flatten(metrics).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def owner_tags() -> dict[str, str]:
    """Which process keeps a run open (see `close_abandoned_runs`)."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def close_abandoned_runs() -> list[str]:
    """Ends as KILLED the runs left RUNNING by processes of this machine that no longer run (killed
    with SIGKILL, or lost with their machine's power); returns their ids."""
    from tlpipe.io import process_alive

    mlf = client()
    found = mlf.search_runs([experiment_id(mlf)], max_results=1000, filter_string=(
        f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{socket.gethostname()}'"))
    closed = [r.info.run_id for r in found
              if r.data.tags.get(TAG_PID, "").isdigit() and not process_alive(int(r.data.tags[TAG_PID]))]
    for run_id in closed:
        mlf.set_terminated(run_id, "KILLED")
    return closed


def start_pipeline_run(project: Path, *, run_name: str, tags: dict[str, str], params: dict) -> str:
    """Creates the parent run of one pipeline run and returns its id."""
    mlf = client()
    run = mlf.create_run(experiment_id(mlf), run_name=run_name, tags={**tags, **owner_tags()})
    _log_params(mlf, run.info.run_id, params)
    return run.info.run_id


def end_run(run_id: str, *, error: BaseException | None = None, metrics: dict | None = None) -> None:
    """Ends a parent run: FINISHED, FAILED on an error, KILLED when interrupted (Ctrl-C, SIGTERM)."""
    mlf = client()
    for key, value in numeric(metrics or {}).items():
        mlf.log_metric(run_id, key, value)
    status = "FINISHED" if error is None else "FAILED" if isinstance(error, Exception) else "KILLED"
    mlf.set_terminated(run_id, status)


def _log_params(mlf: MlflowClient, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        mlf.log_batch(run_id, params=flat[i : i + 100])


class StageTracker:
    """What a stage logs to its MLflow run; the stage code never touches mlflow itself."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._client = client()
        self._stepped: set[str] = set()  # metrics with a per-step history

    def log_summary(self, metrics: dict) -> None:
        """The stage's final figures, leaving out those whose per-epoch history is already logged."""
        self.log_metrics({k: v for k, v in numeric(metrics).items() if k not in self._stepped})

    def log_params(self, params: dict) -> None:
        _log_params(self._client, self.run_id, params)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in numeric(metrics).items()]
        if step is not None:
            self._stepped.update(m.key for m in batch)
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, path: Path, digest: str, *, context: str, rows: int | None = None) -> None:
        """Records an input data set with its DVC content hash as the MLflow dataset digest."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # the local-file source type is registered twice in MLflow
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(path).resolve()))
        dataset = MetaDataset(source=source, name=name, digest=digest[:36])
        tags = [InputTag("mlflow.data.context", context), InputTag("dvc_md5", digest)]
        if rows is not None:
            tags.append(InputTag("rows", str(rows)))
        entry = DatasetInput(dataset._to_mlflow_entity(), tags)
        retry_insert_race(lambda: self._client.log_inputs(self.run_id, datasets=[entry]))

    def log_model(self, model, *, input_example, name: str = "model") -> str:
        """Logs a torch module (exported with torch.export) with explicit pip requirements; returns its URI."""
        import mlflow.pytorch

        requirements = [f"{pkg}=={metadata.version(pkg).split('+')[0]}" for pkg in MODEL_REQUIREMENTS]
        with mlflow.start_run(run_id=self.run_id):  # log_model needs the run active in this thread
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                input_example=input_example,
                pip_requirements=requirements,
                serialization_format="pt2",
            )
        self._client.update_run(self.run_id, status="RUNNING")  # leaving the block ended the run
        return info.model_uri


def model_source_run(model_uri: str) -> str | None:
    """The run that logged the model at `models:/m-<id>` in this tracking store; None when the store
    does not hold it (a teammate's run tracked elsewhere). Other URIs name no logged model: None."""
    if not model_uri.startswith("models:/m-"):
        return None
    try:
        return client().get_logged_model(model_uri.removeprefix("models:/")).source_run_id
    except mlflow.exceptions.MlflowException:
        return None


def log_sweep(run_id: str, folder: Path) -> None:
    """The sweep's results table, summary and plots as artifacts of its parent run."""
    client().log_artifacts(run_id, str(folder), "sweep")


def find_runs(filter_string: str) -> list:
    """Runs of the tlpipe experiment matching an MLflow filter string, newest first."""
    mlf = client()
    return mlf.search_runs([experiment_id(mlf)], filter_string=filter_string, order_by=["start_time DESC"])




