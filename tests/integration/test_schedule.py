"""Scheduled retraining against a real Prefect server: `tlpipe serve` runs the deployment of
prefect.yaml on a short interval; new target data added with DVC makes the next run re-run only the
stages that data reaches, and a run with nothing new is all cache hits and says so."""

import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from runner.dvc import read_lock, with_record
from runner.spec import load_pipeline
from tests.integration.conftest import TINY, git, make_project
from tests.integration.servers import BIN, prefect_server, stop_leader, tool_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TARGET = "data/raw/target"


def write_digits(folder: Path, per_class: int, start: int = 0) -> None:
    """An imagefolder (one subfolder per class) of scikit-learn's digits, images start..start+per_class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        images = digits.images[digits.target == label][start:start + per_class]
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images, start=start):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / str(label) / f"{i}.png")


def dvc(project: Path, *args: str) -> None:
    subprocess.run([str(BIN / "dvc"), *args], cwd=project, check=True, capture_output=True)


def completed_runs(api: str, since: datetime | None = None, pool: str | None = None) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]))))
    failed = [r for r in runs if not r.state.is_completed()]
    assert not failed, f"scheduled run {failed[0].name} ended {failed[0].state.name}: {failed[0].state.message}"
    runs = [r for r in runs if (since is None or r.start_time > since) and r.work_pool_name == pool]
    return sorted(runs, key=lambda r: r.start_time)


def wait_for_run(api: str, since: datetime | None, process: subprocess.Popen, log: Path, timeout: float = 600,
                 pool: str | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tlpipe serve exited:\n{log.read_text()[-4000:]}"
        runs = completed_runs(api, since, pool)
        if runs:
            return runs[0]
        time.sleep(2)
    raise AssertionError(f"no scheduled run completed within {timeout} s:\n{log.read_text()[-4000:]}")


def run_document(project: Path, flow_run_id) -> dict:
    docs = [json.loads(p.read_text()) for p in (project / ".tlpipe" / "lineage").glob("*.json")]
    (doc,) = [d for d in docs if d["flow_run"] == str(flow_run_id)]
    return doc


def summary_of(api: str, flow_run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["retrain-summary"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return artifact.data


def statuses(doc: dict) -> dict:
    return {s["stage"]: s["status"] for s in doc["stages"]}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect")) as url:
        yield url


def test_scheduled_retraining_reruns_only_what_new_data_reaches(tmp_path, api):
    project = make_project(tmp_path / "proj", {**TINY, "prepare": {**TINY["prepare"], "target": {
        "name": TARGET, "shots_per_class": 3, "test_fraction": 0.3}}})
    (project / "prefect.yaml").write_text((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    write_digits(project / TARGET, per_class=12)
    dvc(project, "add", TARGET)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "target data")
    env = tool_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"),
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    log = tmp_path / "serve.log"
    started = datetime.now(timezone.utc)  # the server is shared with the other tests of this module
    with open(log, "w") as out:
        serve = subprocess.Popen([str(BIN / "tlpipe"), "serve", "--deployment", "nightly", "--interval", "10",
                                  "--project", str(project)], cwd=project, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = wait_for_run(api, started, serve, log)
        assert set(statuses(run_document(project, first.id)).values()) == {"ran"}
        assert "first recorded run" in summary_of(api, first.id)

        write_digits(project / TARGET, per_class=4, start=12)  # new target images arrive
        dvc(project, "add", TARGET)
        added = datetime.now(timezone.utc)
        changed = wait_for_run(api, added, serve, log)
        doc = run_document(project, changed.id)
        assert doc["data"][TARGET] != run_document(project, first.id)["data"][TARGET]
        status = statuses(doc)
        # The source side does not see the target: its stages are hits; everything the target reaches runs.
        assert status["surrogate"] == "cached"
        assert {status[s] for s in ("prepare", "prune", "distill", "finetune", "evaluate")} == {"ran"}
        summary = summary_of(api, changed.id)
        assert f"data changed since run {run_document(project, first.id)['pipeline_run']}" in summary
        assert TARGET in summary and "re-ran prepare" in summary

        quiet = wait_for_run(api, changed.end_time, serve, log)
        assert set(statuses(run_document(project, quiet.id)).values()) == {"cached"}
        summary = summary_of(api, quiet.id)
        assert "no tracked data changed" in summary and "nothing to retrain" in summary
        assert "model is unchanged" in summary
    finally:
        stop_leader(serve)


def test_deployments_run_on_a_process_worker_of_the_cpu_pool(tmp_path, api):
    import shutil

    repo = Path(__file__).resolve().parents[2]
    project = make_project(tmp_path / "proj")
    shutil.copy(repo / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(repo / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    env = tool_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"),
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = subprocess.run([str(BIN / "tlpipe"), "deploy", "--deployment", "nightly", "--gpus", "1",
                           "--project", str(project)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tlpipe-retrain/nightly" in done.stdout
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "cpu"], cwd=tmp_path, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = datetime.now(timezone.utc)
        subprocess.run([str(BIN / "prefect"), "deployment", "run", "tlpipe-retrain/nightly"], env=env, check=True,
                       capture_output=True, timeout=120)
        run = wait_for_run(api, started, worker, log, pool="cpu")
        doc = run_document(project, run.id)  # ran inside the project the deployment names
        assert set(statuses(doc).values()) == {"ran"} and doc["registered_model"]["alias"] == "champion"
    finally:
        stop_leader(worker)


def test_training_stages_run_on_workers_of_the_gpu_pool(tmp_path, api, monkeypatch):
    """`agents` sends the stages marked `meta.accelerator: gpu` to the gpu pool's worker (here on the
    CPU: the device the pool gets is a parameter); `prepare` runs in the orchestrating flow."""
    import shutil

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.console import run_flow
    from flows.pipeline import pipeline
    from runner import tracking

    repo = Path(__file__).resolve().parents[2]
    project = make_project(tmp_path / "proj")
    shutil.copy(repo / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(repo / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = tool_env(PREFECT_API_URL=api, PREFECT_HOME=str(tmp_path / "prefect-home"), MLFLOW_TRACKING_URI=store,
                   CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([str(BIN / "tlpipe"), "deploy", "--deployment", "stage-gpu", "--gpus", "0",
                           "--project", str(project)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "gpu"], cwd=tmp_path, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    try:
        result = run_flow(pipeline, api_url=api, project=str(project), until="pretrain", show_progress=False,
                          agents={"gpu": "cpu"})
    finally:
        stop_leader(worker)
    by_stage = {s["stage"]: s for s in result["stages"]}
    assert {name: (s["status"], s.get("agent")) for name, s in by_stage.items()} == {
        "prepare": ("ran", None), "surrogate": ("ran", "gpu"), "prune": ("ran", "gpu"), "pretrain": ("ran", "gpu")}
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        agent_runs = {r.name: r for r in client.read_flow_runs() if r.work_pool_name == "gpu"}
    assert set(agent_runs) == {"surrogate", "prune", "pretrain"}
    assert all(r.state.is_completed() for r in agent_runs.values())
    for name in ("surrogate", "prune", "pretrain"):  # the agent's MLflow run is a child of the pipeline run
        run = tracking.client().get_run(by_stage[name]["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]
        assert run.data.tags[tracking.TAG_CACHED] == "false"
    lock = read_lock(project)["stages"]  # the agents' outputs, with their records, are committed to DVC
    specs = {spec.name: spec for spec in load_pipeline(project)}
    for name in ("surrogate", "prune", "pretrain"):
        recorded = {o["path"]: o["md5"] for o in lock[name]["outs"] + lock[name].get("metrics", [])}
        assert specs[name].record in recorded
        assert recorded == with_record(project, specs[name], by_stage[name]["outs"])
