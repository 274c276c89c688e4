"""KRR-ST and teacher selection in the real flow: the synthetic set as a versioned output logged to
MLflow, reused by another project, and OSBORN / LogME choosing teachers (Prefect test harness, a real
DVC repo, a real MLflow store)."""

import hashlib
import json
import shutil

import pytest
from dvc.repo import Repo
from mlflow.tracking import MlflowClient

from flows.console import run_flow
from flows.pipeline import pipeline
from runner import dvc, tracking
from runner.snapshot import preflight
from runner.spec import load_pipeline
from project import paramfiles
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KRR = ["distill.method=krr_st", "distill.krr_st.synthetic_size=8", "distill.krr_st.steps=6",
       "distill.krr_st.batch_size=16", "distill.krr_st.pool_size=2", "distill.krr_st.online_steps=3",
       "distill.krr_st.epochs=3"]


def run(project, **kwargs) -> dict:
    return run_flow(pipeline, project=str(project), show_progress=False, **kwargs)


def statuses(result) -> dict:
    return {s["stage"]: s["status"] for s in result["stages"]}


def stage(result, name: str) -> dict:
    return next(s for s in result["stages"] if s["stage"] == name)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def krr_run(tmp_path_factory, prefect_harness):
    import os

    root = tmp_path_factory.mktemp("krr")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    project = make_project(root / "proj")
    return project, run(project, overrides=KRR)


def test_the_synthetic_set_is_an_output_versioned_with_the_student(krr_run):
    project, result = krr_run
    assert set(statuses(result).values()) == {"ran"}
    folder = project / "data" / "distill"
    meta = json.loads((folder / "synthetic" / "synthetic.json").read_text())
    assert meta["size"] == 8 and meta["steps"] == 6 and meta["teacher"] == "pretrain" and meta["image_shape"][0] == 1
    assert (folder / "synthetic.png").stat().st_size > 0 and (folder / "backbone" / "config.json").is_file()
    metrics = stage(result, "distill")["metrics"]
    assert metrics["method"] == "krr_st" and metrics["synthetic_size"] == 8 and not metrics["synthetic_reused"]
    assert metrics["real_images_seen"] == 6 * 16 and metrics["krr_loss"] > 0
    lock = dvc.read_lock(project)["stages"]["distill"]
    assert lock["params"]["params/distill.yaml"]["method"] == "krr_st"
    with Repo(str(project)) as repo:
        assert repo.status() == {}


def test_the_set_and_its_grid_are_logged_to_mlflow(krr_run):
    _, result = krr_run
    run_id = stage(result, "distill")["record"]["mlflow_run_id"] if "record" in stage(result, "distill") else None
    runs = tracking.find_runs(f"tags.{tracking.TAG_STAGE} = 'distill'")
    distill_run = next(r for r in runs if run_id in (None, r.info.run_id))
    artifacts = {a.path for a in MlflowClient().list_artifacts(distill_run.info.run_id, "distill")}
    assert "distill/synthetic.png" in artifacts
    kept = {a.path for a in MlflowClient().list_artifacts(distill_run.info.run_id, "distill/synthetic")}
    assert {"distill/synthetic/synthetic.safetensors", "distill/synthetic/synthetic.json"} <= kept
    history = MlflowClient().get_metric_history(distill_run.info.run_id, "krr_loss")
    assert len(history) >= 1 and distill_run.data.params["krr_st.synthetic_size"] == "8"


def test_a_teammate_reuses_the_set_and_gets_the_same_student(krr_run, tmp_path):
    project, _ = krr_run
    shared = tmp_path / "shared-set"
    shutil.copytree(project / "data" / "distill" / "synthetic", shared)
    before = digest(project / "data" / "distill" / "backbone" / "model.safetensors")
    reused = run(project, overrides=KRR + [f"distill.krr_st.synthetic={shared}"])
    metrics = stage(reused, "distill")["metrics"]
    assert statuses(reused)["distill"] == "ran" and metrics["synthetic_reused"]
    assert "krr_loss" not in metrics and metrics["synthetic_made_with"]["steps"] == 6
    # the output holds the set it learned from; the same set, seed and recipe: the first run's student, byte for byte
    assert digest(project / "data" / "distill" / "synthetic" / "synthetic.safetensors") == \
        digest(shared / "synthetic.safetensors")
    assert digest(project / "data" / "distill" / "backbone" / "model.safetensors") == before
    again = run(project, overrides=KRR + [f"distill.krr_st.synthetic={shared}"])
    assert statuses(again)["distill"] == "cached"
    (shared / "synthetic.json").write_text((shared / "synthetic.json").read_text().replace('"seed": 0', '"seed": 9'))
    changed = run(project, overrides=KRR + [f"distill.krr_st.synthetic={shared}"])
    assert statuses(changed)["distill"] == "ran"  # its content, not its path, is in the key


def test_a_missing_or_mismatched_set_is_refused_before_any_compute(krr_run, tmp_path):
    project, _ = krr_run
    params, _ = paramfiles.apply_overrides(paramfiles.load_all_params(project), KRR + ["distill.krr_st.synthetic=no/such/set"])
    with pytest.raises(ValueError, match=r"krr_st.synthetic: 'no/such/set' holds no synthetic set"):
        preflight(project, load_pipeline(project), params)
    other = tmp_path / "other"
    shutil.copytree(project / "data" / "distill" / "synthetic", other)
    meta = json.loads((other / "synthetic.json").read_text())
    (other / "synthetic.json").write_text(json.dumps({**meta, "image_shape": [3, 32, 32]}))
    params, _ = paramfiles.apply_overrides(paramfiles.load_all_params(project), KRR + [f"distill.krr_st.synthetic={other}"])
    with pytest.raises(ValueError, match=r"its images are \[3, 32, 32\]"):
        preflight(project, load_pipeline(project), params)


@pytest.mark.parametrize("select", ["osborn", "logme"])
def test_teachers_chosen_among_candidates(krr_run, tmp_path, select):
    project, _ = krr_run
    other = tmp_path / "other-teacher"
    shutil.copytree(project / "data" / "pretrain", other)
    result = run(project, overrides=[f"distill.teachers={{select: {select}, from: [pretrain, {other}], size: 1}}"])
    record = json.loads((project / "data" / "distill" / "selection.json").read_text())
    assert record["select"] == select and len(record["chosen"]) == 1
    assert set(record["candidates"]) == {"pretrain", str(other)}
    # two copies of one teacher score alike; the tie goes to the first name
    assert record["chosen"] == [min("pretrain", str(other))]
    teachers = json.loads((project / "data" / "distill" / "teachers.json").read_text())
    assert [t["teacher"] for t in teachers] == record["chosen"]
    metrics = stage(result, "distill")["metrics"]
    assert metrics["teachers_selected_by"] == select and metrics["teacher_candidates"] == 2 and metrics["teachers"] == 1
