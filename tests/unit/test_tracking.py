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
