"""A stage trained by several processes through PyTorch's launcher, from `tlpipe run`: two processes on
one host and two hosts of one process each (two clones on 127.0.0.1) train the same teacher; a run of
two processes killed mid-epoch resumes to the uninterrupted outputs."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import TINY, make_project
from tests.integration.test_resume import checkpoint_position, output_hash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
TWO = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3, "batch_size": 16, "nproc": 2}}
TWO_HOSTS = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3, "batch_size": 16, "nnodes": 2}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until_pretrain(project: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([TLPIPE, "run", "--project", str(project), "--until", "pretrain"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)


def completes(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def test_two_processes_and_two_hosts_train_the_same_teacher(env):
    one_host = make_project(env / "one", TWO)
    completes(until_pretrain(one_host))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="tags.`tlpipe.stage` = 'pretrain'")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]

    endpoint = f"127.0.0.1:{free_port()}"
    hosts = [make_project(env / f"host{rank}", TWO_HOSTS) for rank in (0, 1)]
    processes = [until_pretrain(host, {"TLPIPE_RDZV_ENDPOINT": endpoint, "TLPIPE_NODE_RANK": str(rank),
                                       "PREFECT_HOME": str(env / f"prefect{rank}"),
                                       "MLFLOW_TRACKING_URI": f"sqlite:///{env / f'mlflow{rank}.db'}"})
                 for rank, host in enumerate(hosts)]
    for process in processes:
        completes(process)
    # every host ends with the outputs, and they are those of two processes on one host
    assert output_hash(hosts[0], "pretrain") == output_hash(hosts[1], "pretrain") == output_hash(one_host, "pretrain")


def test_two_processes_killed_mid_epoch_resume_to_the_uninterrupted_outputs(env, monkeypatch):
    monkeypatch.setenv("TLPIPE_CHECKPOINT_MINUTES", "0")
    reference = make_project(env / "reference", TWO)
    completes(until_pretrain(reference))
    project = make_project(env / "project", TWO)
    process = until_pretrain(project, start_new_session=True)
    deadline = time.monotonic() + 900
    while (position := checkpoint_position(project, "pretrain")) is None or position < (2, 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(1)  # the launcher and its workers die with the run (they are in its process group)
    completes(until_pretrain(project))
    assert output_hash(project, "pretrain") == output_hash(reference, "pretrain")
