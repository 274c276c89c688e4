"""Faults, with real processes and signals: a `tlpipe run` killed (SIGKILL) or stopped (SIGTERM) in the
middle of a stage leaves no process behind, and the next run removes what was half-written, closes the
killed run's MLflow runs and completes with `dvc status` clean."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dvc.repo import Repo
from mlflow.tracking import MlflowClient

from runner import core, snapshot, tracking
from runner.events import Observer
from runner.recorder import Recorder
from runner.spec import load_pipeline
from runner.workspace import ProjectWorkspace
from tests.integration.conftest import TINY, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
SLOW = {**TINY, "surrogate": {**TINY["surrogate"], "epochs": 40}, "pretrain": {**TINY["pretrain"], "epochs": 40}}


def children(pid: int) -> set[int]:
    """Every live descendant of a process (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        kids = {p for p, pp in parents.items() if pp == parent}
        todo.extend(kids - found)
        found |= kids
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "(zombie)" not in _state(pid)}


def _state(pid: int) -> str:
    try:
        return "(zombie)" if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else ""
    except OSError:
        return "(zombie)"


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    return make_project(tmp_path / "proj", SLOW)


def start(project: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as err:
        return subprocess.Popen([TLPIPE, "run", "--project", str(project)], stdout=subprocess.DEVNULL, stderr=err)


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def runs(status: str) -> list:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # the project's store, set by the fixture
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"attributes.status = '{status}'")


@pytest.mark.parametrize("signum, stage", [(signal.SIGKILL, "pretrain"), (signal.SIGTERM, "surrogate")])
def test_a_killed_run_leaves_nothing_behind_and_the_next_run_completes(project, tmp_path, signum, stage):
    log = tmp_path / "run.err"
    process = start(project, log)
    wait_for(log, f"{stage} epochs 3/", process)
    descendants = children(process.pid)
    assert descendants  # the temporary Prefect server, at least
    os.kill(process.pid, signum)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while alive(descendants) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(descendants), "a process of the killed run is still running"
    temporaries = sorted(p.name for p in (project / "data").glob("*.tmp-*"))
    if signum == signal.SIGTERM:  # stopped like Ctrl-C: it cleans up after itself at once
        assert temporaries == []
        assert {r.data.tags["tlpipe.stage"] for r in runs("KILLED") if "tlpipe.stage" in r.data.tags} == {stage}
    else:
        assert temporaries and temporaries[0].startswith(f"{stage}.tmp-")  # left by SIGKILL ...
        assert len(runs("RUNNING")) == 2  # ... with the parent run and the stage's run open

    again = subprocess.run([TLPIPE, "run", "--project", str(project)], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert list((project / "data").glob("*.tmp-*")) == []  # ... and removed by the next run
    assert runs("RUNNING") == []
    killed = runs("KILLED")
    assert len(killed) == 2 and {r.data.tags.get("tlpipe.stage") for r in killed} == {stage, None}
    with Repo(str(project)) as repo:
        assert repo.status() == {}


class Refuses(Observer):
    """An observer that fails as its stage starts (a tracking server gone, a full disk)."""

    def stage_started(self, run) -> None:
        raise OSError("no space left on device")


def test_an_observer_failing_at_stage_start_ends_the_stage_cleanly(tmp_path, monkeypatch):
    """The MLflow run the Recorder opened before the failing observer ends FAILED, no temporary output
    is left in data/, no record is written, and the observer's error reaches the caller."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    project = make_project(tmp_path / "proj")
    spec = load_pipeline(project)[0]
    taken, _ = snapshot.resolve(project)
    workspace = ProjectWorkspace(project)
    tracking.configure(project)
    with pytest.raises(OSError, match="no space left"):
        core.run_stage(spec, taken.stage(spec.name), workspace, device="cpu", observers=[Recorder(None), Refuses()])
    [failed] = runs("FAILED")
    assert failed.data.tags["tlpipe.stage"] == spec.name and not runs("RUNNING")
    assert not [p for p in (project / "data").rglob("*") if ".tmp-" in p.name]
    assert not (project / ".tlpipe" / "cache").exists() or not any((project / ".tlpipe" / "cache").rglob("*.json"))
