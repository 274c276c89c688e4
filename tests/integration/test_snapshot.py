"""One params snapshot per run: stages see the snapshot and never a params file, and two overlapping
`tlpipe run`s in one project each train with, record and trace exactly their own values."""

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from runner import core, snapshot
from runner.events import Observer
from runner.spec import load_pipeline
from runner.workspace import ProjectWorkspace
from tlpipe import io
from project import paramfiles
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
_WATCH: dict = {"folder": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    """Records every file opened under the watched folder (audit hooks cannot be removed: it stays idle)."""
    folder = _WATCH["folder"]
    if folder is not None and event == "open" and isinstance(args[0], (str, Path)):
        if Path(args[0]).resolve().is_relative_to(folder):
            _WATCH["opened"].append(str(args[0]))


sys.addaudithook(_audit)


class WatchParams(Observer):
    """Watches params/ while a stage computes, and only then."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()

    def stage_started(self, run) -> None:
        _WATCH["folder"] = self.folder

    def _stop(self, run, *_) -> None:
        _WATCH["folder"] = None

    stage_finished = stage_failed = stage_interrupted = _stop


def test_stages_see_the_snapshot_and_never_read_a_params_file(tmp_path):
    project = make_project(tmp_path / "proj")
    stages = load_pipeline(project)
    taken, _ = snapshot.resolve(project, ["prune.ratio=0.75", "finetune.epochs=1"])
    (project / "params" / "prune.yaml").write_text("ratio: [not valid for any stage\n")  # a stage reading it fails
    workspace, watch = ProjectWorkspace(project), WatchParams(project / "params")
    for spec in stages:
        outcome = core.run_stage(spec, taken.stage(spec.name), workspace, device="cpu", observers=[watch])
        assert outcome.status == "ran"
    assert _WATCH["opened"] == []  # the audit hook saw no stage open a params file
    assert io.read_json(project / "data" / "prune" / "selection.json")["ratio"] == 0.75  # the snapshot's value
    history = (project / "data" / "finetune" / "history.csv").read_text().splitlines()
    assert len(history) == 2  # a header and the one epoch of the snapshot


def test_the_audit_hook_sees_a_stage_that_reads_a_params_file(tmp_path):
    """The check above could not pass by accident: reading the file inside a stage is caught."""
    params = tmp_path / "params"
    params.mkdir()
    (params / "prune.yaml").write_text("ratio: 0.5\n")
    watch = WatchParams(params)
    watch.stage_started(None)
    try:
        paramfiles.read_yaml(params / "prune.yaml")
    finally:
        watch.stage_finished(None, None)
    assert _WATCH["opened"] == [str(params / "prune.yaml")]
    _WATCH["opened"].clear()


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.05)


def test_overlapping_runs_keep_their_own_params(tmp_path):
    """Both runs are started while the project lock is held, so both are past their own start (where
    the overrides used to be written) before either runs; which one then goes first is up to the OS."""
    project = make_project(tmp_path / "proj")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs, logs = {}, {}
    before = paramfiles.load_stage_params(project, "pretrain")["epochs"]
    handle = os.open(project, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(handle, fcntl.LOCK_EX)  # what a run holds: the flock on the project folder
    try:
        for epochs in (1, 3):
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path / f"prefect-{epochs}")}
            command = [TLPIPE, "run", "--project", str(project), "--until", "pretrain", "-s", f"pretrain.epochs={epochs}"]
            logs[epochs] = tmp_path / f"run-{epochs}.err"
            with open(logs[epochs], "w") as err:
                runs[epochs] = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
            wait_for(logs[epochs], "another pipeline run holds", runs[epochs])
        assert paramfiles.load_stage_params(project, "pretrain")["epochs"] == before not in runs  # nothing written yet
    finally:
        os.close(handle)
    outputs = {epochs: process.communicate(timeout=900)[0] for epochs, process in runs.items()}
    for epochs, process in runs.items():
        assert process.returncode == 0, logs[epochs].read_text()[-3000:]

    client = MlflowClient(uri)
    started = {}
    for epochs, stdout in outputs.items():
        parent = client.get_run(re.search(r"MLflow run: ([0-9a-f]{32})", stdout).group(1))
        started[epochs] = parent.info.start_time
        assert parent.data.params["pretrain.epochs"] == str(epochs)
        (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                      "and tags.`tlpipe.stage` = 'pretrain'")
        assert child.data.params["epochs"] == str(epochs) and child.data.tags["tlpipe.cached"] == "false"
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == epochs  # trained with its own
        doc = json.loads((project / ".tlpipe" / "lineage" / f"{parent.info.run_id}.json").read_text())
        by_stage = {s["stage"]: s for s in doc["stages"]}
        assert by_stage["pretrain"]["params"]["epochs"] == epochs and by_stage["pretrain"]["status"] == "ran"
    second = max(started, key=started.get)
    assert paramfiles.load_stage_params(project, "pretrain")["epochs"] == second  # the files end with the second run's
