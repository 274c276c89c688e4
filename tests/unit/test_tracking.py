"""The MLflow side, on a real sqlite store: a copied or moved project uses its own artifact folder."""

import os
import shutil
import subprocess
import sys

from mlflow.tracking import MlflowClient

from runner import tracking

FIRST_RUN = """
import sys
from pathlib import Path
from runner import tracking
project = Path(sys.argv[1])
tracking.configure(project)
run_id = tracking.start_pipeline_run(project, run_name="first", tags={}, params={"a": 1})
tracking.client().log_artifact(run_id, str(project / "report.md"))
print(run_id)
"""


def test_a_copied_project_reads_and_writes_its_own_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    (original / "report.md").write_text("first")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, "-c", FIRST_RUN, str(original)], env=env, capture_output=True, text=True,
                          check=True)  # the first project's run, in a process of its own
    run_id = done.stdout.split()[-1]
    shutil.copytree(original, copy)

    client = MlflowClient(tracking.configure(copy))
    assert client.get_experiment_by_name(tracking.EXPERIMENT).artifact_location == (copy / "mlartifacts").as_uri()
    assert client.get_run(run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    (copy / "report.md").write_text("second")
    client.log_artifact(run_id, str(copy / "report.md"), "later")
    assert list((copy / "mlartifacts").rglob("later/report.md"))
    assert not list((original / "mlartifacts").rglob("later"))  # the original project is untouched
    assert tracking.relocate_artifacts(copy / "mlflow.db") == []  # once relocated, nothing more to do
    assert tracking.relocate_artifacts(original / "mlflow.db") == []  # the original was never moved


def _git(folder, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    return subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True, text=True).stdout.strip()


def test_source_tags_hold_a_plain_commit_id_and_a_separate_dirty_flag(tmp_path, monkeypatch):
    import getpass

    (tmp_path / "params.yaml").write_text("a: 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "first")
    monkeypatch.setattr(sys, "argv", ["/venv/bin/tlpipe", "run", "-s", "prune.ratio=0.5"])
    tags = tracking.source_tags(tmp_path)
    assert tags[tracking.TAG_GIT] == _git(tmp_path, "rev-parse", "HEAD") and len(tags[tracking.TAG_GIT]) == 40
    assert tags[tracking.TAG_DIRTY] == "false"
    assert tags[tracking.TAG_SOURCE] == "tlpipe run -s prune.ratio=0.5" and tags[tracking.TAG_SOURCE_TYPE] == "LOCAL"
    assert tags[tracking.TAG_USER] == getpass.getuser()
    (tmp_path / "params.yaml").write_text("a: 2\n")
    assert tracking.source_tags(tmp_path)[tracking.TAG_DIRTY] == "true"
    assert tracking.source_tags(tmp_path)[tracking.TAG_GIT] == tags[tracking.TAG_GIT]
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert tracking.TAG_GIT not in tracking.source_tags(tmp_path / "outside")  # no repository: nothing made up


def test_the_command_of_a_stage_under_dvc_repro(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/project/tasks/prune.py"])
    monkeypatch.setattr(sys, "orig_argv", ["/venv/bin/python", "-m", "tasks.prune"])
    assert tracking.command_line() == "python -m tasks.prune"


def test_a_lost_insert_race_is_tried_again_and_other_errors_are_not():
    import mlflow
    import pytest

    calls = []

    def racing():
        calls.append(1)
        if len(calls) == 1:  # the message MLflow's SQL store gives when another process inserted the row first
            raise mlflow.exceptions.MlflowException("(psycopg2.errors.UniqueViolation) duplicate key ... "
                                                    "(Background on this error at: https://sqlalche.me/e/20/gkpj)")
        return "logged"

    assert tracking.retry_insert_race(racing) == "logged" and len(calls) == 2

    def refused():
        calls.append(1)
        raise mlflow.exceptions.MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    calls.clear()
    with pytest.raises(mlflow.exceptions.MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        tracking.retry_insert_race(refused)
    assert len(calls) == 1
