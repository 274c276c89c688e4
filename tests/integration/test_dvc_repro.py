"""`dvc repro` on a fresh clone runs the same stage code and reproduces the flow's outputs bit for bit."""

import subprocess

import pytest

from flows.console import run_flow
from flows.pipeline import pipeline
from runner import dvc
from tlpipe import io
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Records of a run (wall times) legitimately differ; everything else must be identical.
RUN_RECORDS = ("data/metrics/", "data/evaluate")


def test_dvc_repro_matches_the_flow(tmp_path, prefect_harness, mlflow_store, venv_path):
    by_flow = make_project(tmp_path / "flow")
    result = run_flow(pipeline, project=str(by_flow), show_progress=False)
    flow_outs = {rel: md5 for stage in result["stages"] for rel, md5 in stage["outs"].items()}

    by_dvc = make_project(tmp_path / "repro")
    done = subprocess.run(["dvc", "repro", "--quiet"], cwd=by_dvc, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lock = dvc.read_lock(by_dvc)["stages"]
    dvc_outs = {o["path"]: o["md5"] for stage in lock.values() for o in stage["outs"]}

    # every stage's record besides: its timings and MLflow run differ from run to run, its key does not
    records = {f"data/records/{stage['stage']}.json" for stage in result["stages"]}
    assert set(dvc_outs) == set(flow_outs) | records
    for stage in result["stages"]:
        assert dvc.read_version(by_dvc, dvc_outs[f"data/records/{stage['stage']}.json"]) is not None
        assert io.read_json(by_dvc / "data" / "records" / f"{stage['stage']}.json")["cache_key"] == stage["cache_key"]
    compared = {rel for rel in flow_outs if not rel.startswith(RUN_RECORDS)}
    assert compared >= {"data/prepared", "data/surrogate", "data/prune", "data/pretrain", "data/distill", "data/finetune"}
    assert {rel: dvc_outs[rel] for rel in compared} == {rel: flow_outs[rel] for rel in compared}
