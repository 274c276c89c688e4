"""A teammate's clone reuses a pushed run through git and DVC alone: member A runs the pipeline, pushes
to a DVC remote (a local folder) and commits dvc.lock; member B clones A's repository with nothing
else shared (own Prefect home, own MLflow store, no .tlpipe/, no TLPIPE_CACHE_DIR) and finds every
stage reused, after `dvc pull` or straight from the remote."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from runner import dvc, tracking
from runner.spec import load_pipeline
from tests.integration.conftest import git, make_project
from tests.integration.servers import BIN, tool_env
from tlpipe.data import storage
from project import config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARED = ("TLPIPE_CACHE_DIR", "TLPIPE_STORE_DIR")  # what a team may share besides git and DVC: not here


def member_env(home: Path) -> dict[str, str]:
    (home / "prefect").mkdir(parents=True)
    env = tool_env(PREFECT_HOME=str(home / "prefect"))  # MLflow: the clone's own mlflow.db
    for name in SHARED:
        env.pop(name, None)
    return env


def sh(project: Path, env: dict, *command: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def tlpipe_run(project: Path, env: dict, *args: str) -> dict:
    """`tlpipe run` and the lineage document it stored (the newest)."""
    sh(project, env, str(BIN / "tlpipe"), "run", "--project", str(project), *args)
    newest = max((project / ".tlpipe" / "lineage").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(newest.read_text())


def statuses(doc: dict) -> dict:
    return {s["stage"]: s["status"] for s in doc["stages"]}


def outputs(doc: dict) -> dict:
    return {s["stage"]: s["outputs"] for s in doc["stages"]}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """A's run, pushed to the DVC remote, dvc.lock and .dvc/config committed."""
    root = tmp_path_factory.mktemp("clone")
    a = make_project(root / "a")
    env = member_env(root / "home-a")
    sh(a, env, str(BIN / "dvc"), "remote", "add", "-d", "team", str(root / "remote"))
    doc = tlpipe_run(a, env)
    assert statuses(doc) == {stage: "ran" for stage in config.STAGES}
    sh(a, env, str(BIN / "dvc"), "push")
    git(a, "add", "-A")
    git(a, "commit", "-qm", "pipeline run")
    return root, a, doc


def load_champion(project: Path):
    import mlflow.pytorch

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        return mlflow.pytorch.load_model("models:/tlpipe-digits@champion")
    finally:
        mlflow.set_tracking_uri(before)


def clone(root: Path, source: Path, name: str) -> tuple[Path, dict]:
    target = root / name
    git(root, "clone", "-q", str(source), str(target))
    assert not (target / ".tlpipe").exists() and not (target / "data" / "prune").exists()
    return target, member_env(root / f"home-{name}")


def test_a_clone_that_pulls_reuses_every_stage_and_shows_them_in_its_mlflow(pushed):
    root, a, first = pushed
    b, env = clone(root, a, "b")
    sh(b, env, str(BIN / "dvc"), "pull")
    assert "up to date" in sh(b, env, str(BIN / "dvc"), "status").stdout
    doc = tlpipe_run(b, env)
    assert statuses(doc) == {stage: "cached" for stage in config.STAGES}
    assert outputs(doc) == outputs(first)
    for mine, theirs in zip(doc["stages"], first["stages"]):
        assert mine["cache_key"] == theirs["cache_key"] and mine["produced_by_run"] == theirs["produced_by_run"]
    client = MlflowClient(f"sqlite:///{b / 'mlflow.db'}")
    children = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.mlflow.parentRunId = '{doc['pipeline_run']}'")
    assert {c.data.tags["tlpipe.stage"]: c.data.tags["tlpipe.cached"] for c in children} == {
        stage: "true" for stage in config.STAGES}
    assert {c.data.tags[tracking.TAG_PRODUCED_BY] for c in children} == {s["produced_by_run"] for s in first["stages"]}
    # A's model is not in B's store: B's registry holds the same model, rebuilt from the pulled outputs.
    assert str(doc["registered_model"]["version"]) == "1" and doc["registered_model"]["new_version"]
    model = load_champion(b)
    images = storage.to_arrays(storage.load_prepared(b / "data" / "prepared" / "target")["test"].select(range(4)))[0]
    assert model(torch.as_tensor(images)).shape == (4, 10)

    # B changes one param: only the stages it reaches run, and B's dvc.lock records them.
    changed = tlpipe_run(b, env, "-s", "finetune.epochs=3")
    assert [s for s, how in statuses(changed).items() if how == "ran"] == ["finetune", "evaluate"]
    assert {s: o for s, o in outputs(changed).items() if s not in ("finetune", "evaluate")} == {
        s: o for s, o in outputs(first).items() if s not in ("finetune", "evaluate")}
    assert outputs(changed)["finetune"] != outputs(first)["finetune"]
    assert "up to date" in sh(b, env, str(BIN / "dvc"), "status").stdout


def test_a_clone_that_did_not_pull_restores_every_stage_from_the_remote(pushed):
    root, a, first = pushed
    c, env = clone(root, a, "c")
    doc = tlpipe_run(c, env)
    assert statuses(doc) == {stage: "restored" for stage in config.STAGES}
    assert outputs(doc) == outputs(first)
    for spec in load_pipeline(c):
        assert dvc.outputs_match(c, dvc.with_record(c, spec, outputs(first)[spec.name]))
    assert "up to date" in sh(c, env, str(BIN / "dvc"), "status").stdout

