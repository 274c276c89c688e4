"""A stage trained by several processes through PyTorch's launcher, from `tlpipe run`: two processes on
one host and two hosts of one process each (two clones on 127.0.0.1) train the same teacher; a run of
two processes killed mid-epoch resumes to the uninterrupted outputs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import TINY, make_project
from tests.integration.servers import free_port
from tests.integration.test_resume import checkpoint_position, output_hash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
TWO = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3, "batch_size": 16, "nproc": 2}}
TWO_HOSTS = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 3, "batch_size": 16, "nnodes": 2}}



def until_pretrain(project: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([TLPIPE, "run", "--project", str(project), "--until", "pretrain"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)


def completes(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]


def ranks_alive() -> list[str]:
    """Command lines of live processes of a stage's launcher or ranks."""
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode()
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "runner.ranks" in text and state != "Z":
            alive.append(text)
    return alive


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


# Every process computes on one thread in both layouts. PyTorch's launcher already gives each of several
# processes on a host one thread; a host of one process would use all its cores, and oneDNN's sums
# in another order then drift over epochs (train_loss 3.7e-4 apart after 3 epochs on one Xeon model,
# where rtol 1e-4 had passed on another), so no tolerance would hold on every machine. With the same
# threads the two layouts
# do the same float operations in the same order (a sum of two ranks' gradients is the same either
# way round): their outputs must be identical, bit for bit.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def test_two_processes_and_two_hosts_train_the_same_teacher(env):
    one_host = make_project(env / "one", TWO)
    completes(until_pretrain(one_host, ONE_THREAD))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="tags.`tlpipe.stage` = 'pretrain'")
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]

    endpoint = f"127.0.0.1:{free_port()}"
    hosts = [make_project(env / f"host{rank}", TWO_HOSTS) for rank in (0, 1)]
    processes = [until_pretrain(host, {**ONE_THREAD, "TLPIPE_RDZV_ENDPOINT": endpoint, "TLPIPE_NODE_RANK": str(rank),
                                       "PREFECT_HOME": str(env / f"prefect{rank}"),
                                       "MLFLOW_TRACKING_URI": f"sqlite:///{env / f'mlflow{rank}.db'}"})
                 for rank, host in enumerate(hosts)]
    for process in processes:
        completes(process)
    # every host ends with the same outputs, which are those of two processes on one host
    assert output_hash(hosts[0], "pretrain") == output_hash(hosts[1], "pretrain")
    one, two = (pd.read_csv(p / "data" / "pretrain" / "history.csv") for p in (one_host, hosts[0]))
    pd.testing.assert_series_equal(two["train_loss"], one["train_loss"], check_exact=True)
    assert output_hash(hosts[0], "pretrain") == output_hash(one_host, "pretrain")


def test_two_processes_killed_mid_epoch_resume_to_the_uninterrupted_outputs(env, monkeypatch):
    monkeypatch.setenv("TLPIPE_CHECKPOINT_MINUTES", "0")
    longer = {**TWO, "pretrain": {**TWO["pretrain"], "epochs": 12}}  # seconds to catch it in, on a busy machine
    reference = make_project(env / "reference", longer)
    completes(until_pretrain(reference))
    project = make_project(env / "project", longer)
    process = until_pretrain(project, start_new_session=True)
    deadline = time.monotonic() + 900
    while (position := checkpoint_position(project, "pretrain")) is None or position < (2, 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while ranks_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ranks_alive(), "a training process outlived the killed run"
    killed_at = checkpoint_position(project, "pretrain")
    assert killed_at < (12, 0), f"killed at {killed_at}: too late to resume anything"
    completes(until_pretrain(project))
    assert output_hash(project, "pretrain") == output_hash(reference, "pretrain")
