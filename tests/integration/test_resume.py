"""A stage killed mid-training resumes from its checkpoint: the rerun ends with the outputs of an
uninterrupted run and redoes less than an epoch."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from safetensors import safe_open

from tests.integration.conftest import TINY, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
FOUR_EPOCHS = {**TINY, "pretrain": {**TINY["pretrain"], "epochs": 4, "batch_size": 8}}
# (stage, params, a per-epoch metric): supervised and self-supervised pretrain, distillation with its queues
CASES = {
    "pretrain": ("pretrain", FOUR_EPOCHS, "train_loss"),
    "simclr": ("pretrain", {**TINY, "pretrain": {**FOUR_EPOCHS["pretrain"], "mode": "simclr"}}, "loss"),
    "distill": ("distill", {**TINY, "distill": {**TINY["distill"], "epochs": 4, "batch_size": 8}}, "loss"),
}


def run_until(project: Path, stage: str, **kwargs):
    return subprocess.Popen([TLPIPE, "run", "--project", str(project), "--until", stage],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def checkpoint_position(project: Path, stage: str) -> tuple[int, int] | None:
    """(epoch, batches done) of the stage's checkpoint, or None before the first."""
    for path in (project / ".tlpipe" / "checkpoints" / stage).glob("*/train/checkpoint.safetensors"):
        try:
            with safe_open(str(path), framework="pt") as f:
                document = json.loads(f.metadata()["document"])
        except Exception:  # replaced as it was opened: read the next one
            continue
        return document["epoch"], document["batch"]
    return None


def output_hash(project: Path, stage: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == f"data/{stage}")


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("TLPIPE_CHECKPOINT_MINUTES", "0")  # a checkpoint after every step
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_a_stage_killed_in_epoch_3_of_4_resumes_to_the_uninterrupted_outputs(env, monkeypatch, case):
    stage, params, metric = CASES[case]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env / 'reference.db'}")
    reference = make_project(env / "reference", params)
    done = run_until(reference, stage)
    assert done.wait(timeout=900) == 0, done.stderr.read()[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{env / 'mlflow.db'}")
    project = make_project(env / "project", params)
    process = run_until(project, stage, start_new_session=True)
    deadline = time.monotonic() + 900
    while (position := checkpoint_position(project, stage)) is None or position < (3, 2):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group, mid-epoch 3
    process.wait(timeout=60)
    killed_at = checkpoint_position(project, stage)
    assert killed_at[0] == 3, f"killed at {killed_at}, not in epoch 3 of 4"

    again = run_until(project, stage)
    _, said = again.communicate(timeout=900)
    assert again.returncode == 0, said[-3000:]
    # the console says where it took over, and does not print the saved epochs as if training them
    assert f"{stage} resumed at epoch 3 of 4 (epochs 1-2 from the checkpoint" in said, said[-3000:]
    assert not re.search(rf"^{stage} .*\b[12]/4 ", said, re.MULTILINE), said[-3000:]
    assert re.search(rf"^{stage} .*\b4/4 ", said, re.MULTILINE), said[-3000:]
    assert output_hash(project, stage) == output_hash(reference, stage)
    assert not list((project / ".tlpipe" / "checkpoints" / stage).glob("*/train"))  # removed when done

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    finished = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"attributes.status = 'FINISHED' and tags.`tlpipe.stage` = '{stage}'")
    assert len(finished) == 1
    metrics = finished[0].data.metrics
    # it took over at the last step saved before the kill: less than an epoch is done again
    assert (metrics["resumed_from_epoch"], metrics["resumed_from_batch"]) == killed_at
    history = client.get_metric_history(finished[0].info.run_id, metric)
    assert sorted(m.step for m in history) == [1, 2, 3, 4]  # the epochs before the kill are in the run too
    metrics_file = json.loads((project / "data" / "metrics" / f"{stage}.json").read_text())
    assert "resumed_from_epoch" not in metrics_file  # a fact of the attempt, not of the outputs
