"""A throwaway clone of the project (git + DVC) with a tiny configuration, and Prefect's test harness."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.workspace import copy_project

REPO = Path(__file__).resolve().parents[2]
# Small enough for seconds per stage on a 2-core CPU, big enough that every code path runs.
TINY = {
    "prepare": {"source": {"images_per_class": 12}, "target": {"shots_per_class": 3}},
    "surrogate": {"model": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}, "epochs": 2, "batch_size": 64},
    "prune": {"ratio": 0.5},
    "pretrain": {"model": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}, "epochs": 2, "batch_size": 64},
    "distill": {"model": {"embedding_size": 4, "hidden_sizes": [4, 8], "depths": [1, 1]}, "epochs": 1,
                "batch_size": 64, "queue_size": 128},
    "finetune": {"epochs": 2, "batch_size": 16},
    "evaluate": {"probe_shots": [1, 3], "probe_draws": 2},
}


def git(project: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@localhost"}
    return subprocess.run(["git", *args], cwd=project, env=env, check=True, capture_output=True, text=True).stdout


def make_project(root: Path, overrides: dict = TINY) -> Path:
    """A copy of this project (declaration, params, code) with tiny params, committed to a new git repo."""
    copy_project(REPO, root, overrides)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "project")
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def venv_path(monkeypatch):
    """`python` on PATH is this interpreter, as for `dvc repro` inside the project's environment."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
