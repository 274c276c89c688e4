"""The real flow on a tiny configuration: Prefect test harness, a real DVC repo, a real MLflow store."""

import json
from pathlib import Path

import pytest
from dvc.repo import Repo
from mlflow.tracking import MlflowClient

from flows.console import run_flow
from flows.pipeline import pipeline
from runner import dvc, tracking
from runner.snapshot import preflight
from runner.spec import load_pipeline
from project import config, paramfiles
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run(project, **kwargs) -> dict:
    return run_flow(pipeline, project=str(project), show_progress=False, **kwargs)


def statuses(result) -> dict:
    return {s["stage"]: s["status"] for s in result["stages"]}


def children_of(run_id: str) -> dict:
    runs = tracking.find_runs(f"tags.mlflow.parentRunId = '{run_id}'")
    return {r.data.tags[tracking.TAG_STAGE]: r for r in runs}


@pytest.fixture(scope="module")
def project_run(tmp_path_factory, prefect_harness):
    """One first run shared by the tests below (they check different facets of it, then re-run)."""
    import os

    root = tmp_path_factory.mktemp("pipeline")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    project = make_project(root / "proj")
    return project, run(project)


def test_first_run_versions_every_output(project_run):
    project, result = project_run
    assert statuses(result) == {stage: "ran" for stage in config.STAGES}
    lock = dvc.read_lock(project)["stages"]
    specs = {spec.name: spec for spec in load_pipeline(project)}
    for stage in result["stages"]:
        spec = specs[stage["stage"]]
        recorded = {o["path"]: o["md5"] for o in lock[spec.name]["outs"] + lock[spec.name].get("metrics", [])}
        assert recorded == dvc.with_record(project, spec, stage["outs"]), spec.name  # dvc.lock: exactly what ran
        record = json.loads((project / spec.record).read_text())  # ... with the record a clone finds it by
        assert record["cache_key"] == stage["cache_key"] and record["outs"] == stage["outs"]
    with Repo(str(project)) as repo:
        assert repo.status() == {}  # `dvc status` is clean


def disk_bytes(*folders: Path) -> int:
    """Blocks on disk under the folders, a file with several names counted once (as one `du` over them)."""
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            stat = path.lstat()
            if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def test_every_output_is_one_copy_with_its_dvc_cache_object(project_run):
    """The project's link types (.dvc/config: reflink,hardlink,symlink): data/ and the DVC cache hold
    each output once, and what the cache holds is read-only."""
    import stat

    project, _ = project_run
    data, cache = project / "data", project / ".dvc" / "cache"
    assert disk_bytes(data, cache) <= 1.1 * disk_bytes(data)
    kept = project / "data" / "prune" / "kept_indices.npy"
    assert kept.stat().st_nlink == 2 and stat.S_IMODE(kept.stat().st_mode) & 0o222 == 0
    assert kept.samefile(dvc.cache_object(project, dvc.md5_path(kept)))


def test_first_run_outputs(project_run):
    project, result = project_run
    evaluation = result["stages"][-1]["metrics"]
    assert 0.0 <= evaluation["accuracy"] <= 1.0 and 0.0 <= evaluation["macro_f1"] <= 1.0
    assert set(evaluation["transfer"]) == {"teacher", "student", "scratch"}
    assert set(evaluation["transfer"]["student"]) == {"1shot", "3shot"}
    assert evaluation["transfer"]["student"]["1shot"]["n"] == 2
    assert evaluation["cost"]["end_to_end"]["images_seen"] > 0
    for name in ("confusion.png", "probe.csv", "report.md", "report.html"):
        assert (project / "data" / "evaluate" / name).stat().st_size > 0
    assert set(evaluation["finetuned"]) == {"student", "teacher"}  # finetune.compare fits the teacher too
    assert evaluation["deployed_backbone"] == "student"
    assert {"logme", "h_score", "tmi", "leep", "nce"} <= set(evaluation["transferability"]["teacher"])
    assert {"logme", "h_score", "tmi"} <= set(evaluation["transferability"]["student"])
    size = evaluation["efficiency"]
    assert size["student"]["parameters"] < size["teacher"]["parameters"] and size["student"]["macs"] > 0
    assert size["teacher"]["parameters_ratio"] == 1.0 and size["student"]["throughput_ips"] > 0
    assert 0 < evaluation["retention"]["finetuned"]
    report = (project / "data" / "evaluate" / "report.md").read_text()
    assert "Transferability before fine-tuning" in report and "Size and speed" in report
    selection = json.loads((project / "data" / "prune" / "selection.json").read_text())
    assert len(selection["kept"]) == len(selection["kept_names"]) == round(selection["num_classes"] * 0.5)
    metrics = json.loads((project / "data" / "metrics" / "evaluate.json").read_text())
    assert metrics["accuracy"] == evaluation["accuracy"]


def test_first_run_is_tracked_in_mlflow(project_run):
    project, result = project_run
    client = MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[tracking.TAG_FLOW_RUN] == result["flow_run_id"]
    assert parent.data.params["prune.ratio"] == "0.5"
    assert "accuracy" in parent.data.metrics
    children = children_of(parent.info.run_id)
    assert sorted(children) == sorted(config.STAGES)
    for stage in result["stages"]:
        tags = children[stage["stage"]].data.tags
        assert tags[tracking.TAG_CACHED] == "false"
        assert tags[tracking.TAG_CACHE_KEY] == stage["cache_key"]
        assert len(tags[tracking.TAG_GIT]) >= 40
    pretrain = client.get_run(children["pretrain"].info.run_id)
    digests = {d.dataset.digest for d in pretrain.inputs.dataset_inputs}
    # inputs carry their DVC hashes; pretrain reads only the source part of the prepared data
    assert dvc.md5_path(project / "data" / "prepared" / "source") in digests
    assert len(client.get_metric_history(pretrain.info.run_id, "train_loss")) == 2  # one point per epoch
    def artifacts(stage):
        return {a.path for a in client.list_artifacts(children[stage].info.run_id, stage)}

    assert {"prune/classes.csv", "prune/selection.json", "prune/votes.png"} <= artifacts("prune")
    assert {"evaluate/confusion.png", "evaluate/report.md", "evaluate/report.html", "evaluate/probe.csv"} <= artifacts("evaluate")
    finetune = children["finetune"].info.run_id
    models = client.search_logged_models(experiment_ids=[parent.info.experiment_id])
    assert any(m.source_run_id == finetune for m in models)


def test_first_run_registers_the_model_with_its_lineage(project_run):
    project, result = project_run
    registered = result["registered"]
    assert registered["model"] == "tlpipe-digits" and registered["new_version"]
    assert registered["alias"] == "champion" and "first version" in registered["reason"]
    version = MlflowClient().get_model_version(registered["model"], registered["version"])
    stages = {s["stage"]: s for s in result["stages"]}
    assert version.run_id == stages["finetune"]["mlflow_run_id"]
    assert version.tags[tracking.TAG_PIPELINE_RUN] == result["mlflow_run_id"]
    assert version.tags[tracking.TAG_FLOW_RUN] == result["flow_run_id"]
    for stage in config.STAGES:
        assert version.tags[f"tlpipe.key.{stage}"] == stages[stage]["cache_key"]
    assert version.tags["tlpipe.out.data/finetune"] == stages["finetune"]["outs"]["data/finetune"]
    assert float(version.tags["test_accuracy"]) == stages["evaluate"]["metrics"]["accuracy"]
    import mlflow.pytorch
    import torch

    model = mlflow.pytorch.load_model(f"models:/{registered['model']}/{registered['version']}")
    pixels = torch.zeros((2, 1, 32, 32), dtype=torch.uint8)
    assert tuple(model(pixels).shape) == (2, 10)  # the registered model takes raw pixels


def test_first_run_publishes_the_report_as_a_prefect_artifact(project_run):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluation-report"])))
            return found

    artifacts = asyncio.run(latest())
    assert artifacts and "Transferability before fine-tuning" in artifacts[-1].data


def test_second_run_is_all_cache_hits_and_points_at_the_producers(project_run):
    project, first = project_run
    second = run(project)
    assert statuses(second) == {stage: "cached" for stage in config.STAGES}
    assert second["registered"]["version"] == first["registered"]["version"]
    assert not second["registered"]["new_version"]  # the same model is not registered twice
    children = children_of(second["mlflow_run_id"])
    producers = {s["stage"]: s["mlflow_run_id"] for s in first["stages"]}
    for stage, child in children.items():
        assert child.data.tags[tracking.TAG_CACHED] == "true"
        assert child.data.tags[tracking.TAG_PRODUCED_BY] == producers[stage]


def test_lineage_of_every_kind_of_reference(project_run):
    from runner import lineage

    project, first = project_run
    cached = run(project)  # all hits: its document must point at the runs that produced each output
    stages = {s["stage"]: s for s in first["stages"]}
    pretrain_child = children_of(first["mlflow_run_id"])["pretrain"].info.run_id
    client = MlflowClient()
    client.set_registered_model_alias("tlpipe-digits", "champion", first["registered"]["version"])
    refs = {
        first["mlflow_run_id"]: (first["mlflow_run_id"], None),
        pretrain_child: (first["mlflow_run_id"], "pretrain"),
        first["flow_run_id"]: (first["mlflow_run_id"], None),
        cached["flow_run_id"]: (cached["mlflow_run_id"], None),
        f"tlpipe-digits/{first['registered']['version']}": (first["mlflow_run_id"], "finetune"),
        "tlpipe-digits@champion": (first["mlflow_run_id"], "finetune"),
        "data/finetune/model": (first["mlflow_run_id"], "finetune"),  # made by the first run, reused since
    }
    for ref, (parent, focus) in refs.items():
        doc, found_focus, warnings = lineage.resolve(ref, project)
        assert (doc["pipeline_run"], found_focus, warnings) == (parent, focus, []), ref
    doc, _, _ = lineage.resolve(cached["flow_run_id"], project)
    by_stage = {s["stage"]: s for s in doc["stages"]}
    assert {s["status"] for s in doc["stages"]} == {"cached"}
    for name, s in by_stage.items():
        assert s["produced_by_run"] == stages[name]["mlflow_run_id"] and s["cache_key"] == stages[name]["cache_key"]
    assert by_stage["pretrain"]["upstream"] == ["prepare", "prune"]
    assert by_stage["pretrain"]["inputs"]["data/prepared/source"] == dvc.md5_path(project / "data" / "prepared" / "source")
    assert by_stage["prune"]["inputs"]["data/prepared"] == stages["prepare"]["outs"]["data/prepared"]
    assert by_stage["prune"]["params"]["ratio"] == 0.5
    assert len(doc["git_commit"]) >= 40 and doc["registered_model"]["model"] == "tlpipe-digits"
    text = lineage.render(doc, focus="pretrain")
    assert "* pretrain: cached (produced by run" in text and "upstream: raw data" in text
    with pytest.raises(ValueError, match="not an output path"):
        lineage.resolve("no such thing", project)


def test_lineage_with_mlflow_down_reads_the_stored_document(project_run):
    import os
    import subprocess
    import sys
    from pathlib import Path

    project, first = project_run
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
           "PREFECT_API_URL": PREFECT_API_URL.value()}  # the test harness's server
    command = [str(Path(sys.executable).with_name("tlpipe")), "lineage", first["flow_run_id"], "--json",
               "--project", str(project)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["pipeline_run"] == first["mlflow_run_id"] and "not reachable" in doc["warnings"][0]
    assert "warning: MLflow is not reachable" in done.stderr
    assert [s["stage"] for s in doc["stages"]] == list(config.STAGES)
    (project / ".tlpipe" / "lineage" / f"{first['mlflow_run_id']}.json").unlink()  # the local copy gone too
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # from the Prefect markdown artifact of that flow run
    assert doc["pipeline_run"] == first["mlflow_run_id"] and "Prefect artifact" in doc["warnings"][1]


def test_changed_finetune_params_rerun_only_finetune_and_evaluate(project_run):
    project, _ = project_run
    champion = MlflowClient().get_model_version_by_alias("tlpipe-digits", "champion")
    result = run(project, overrides=["finetune.epochs=3"])
    assert paramfiles.load_stage_params(project, "finetune")["epochs"] == 3  # written back, as dvc exp run -S does
    assert [s for s, how in statuses(result).items() if how == "ran"] == ["finetune", "evaluate"]
    registered = result["registered"]  # a new model: promoted only if it beats the champion by the margin
    accuracy, best = result["stages"][-1]["metrics"]["accuracy"], float(champion.tags["test_accuracy"])
    assert registered["new_version"] and registered["version"] != champion.version
    assert registered["alias"] == ("champion" if accuracy >= best + 0.005 else "challenger"), registered["reason"]
    holder = MlflowClient().get_model_version_by_alias("tlpipe-digits", registered["alias"])
    assert holder.version == registered["version"] and holder.tags[f"tlpipe.{registered['alias']}_reason"]
    with Repo(str(project)) as repo:
        assert repo.status() == {}


def test_missing_or_altered_outputs_are_restored_not_trusted(project_run):
    project, _ = project_run
    import shutil

    shutil.rmtree(project / "data" / "pretrain")
    altered = project / "data" / "prune" / "selection.json"
    altered.unlink()  # read-only, one copy with the DVC cache's: an editor saves a new file in its place
    altered.write_text("{}")
    result = run(project)
    how = statuses(result)
    assert how["pretrain"] == "restored" and how["prune"] == "restored"
    assert set(how.values()) <= {"cached", "restored"}
    with Repo(str(project)) as repo:
        assert repo.status() == {}


def test_a_lost_dvc_cache_is_filled_again(project_run):
    import shutil

    project, _ = project_run
    shutil.rmtree(project / ".dvc" / "cache")
    result = run(project)
    assert set(statuses(result).values()) == {"cached"}  # the outputs are all in place
    with Repo(str(project)) as repo:
        assert repo.status() == {}  # and in the DVC cache again: restorable


def test_refresh_forces_a_stage(project_run):
    project, _ = project_run
    result = run(project, refresh=["evaluate"])
    assert statuses(result)["evaluate"] == "ran"
    assert statuses(result)["finetune"] == "cached"


def test_a_stage_run_again_changes_nothing_downstream(project_run):
    """Outputs (metrics files included) depend on the inputs alone: timings live in the records, MLflow
    and lineage, so a stage computed again leaves every later stage reused and no new model version."""
    project, first = project_run
    for stage in first["stages"]:
        recorded = json.loads((project / "data" / "metrics" / f"{stage['stage']}.json").read_text())
        assert not [k for k in recorded if k.endswith("_s")], stage["stage"]
    assert first["stages"][1]["metrics"]["wall_time_s"] > 0  # the run itself still reports them
    result = run(project, refresh=["surrogate"])
    assert statuses(result)["surrogate"] == "ran"
    assert {how for stage, how in statuses(result).items() if stage != "surrogate"} <= {"cached", "restored"}
    assert not result["registered"]["new_version"]


def test_until_stops_early(project_run):
    project, _ = project_run
    result = run(project, until="prune")
    assert list(statuses(result)) == ["prepare", "surrogate", "prune"]


def test_two_teachers_weighted_by_logme_with_cached_teacher_embeddings(project_run, tmp_path, edit_code):
    project, _ = project_run
    import shutil

    other = tmp_path / "other-teacher"
    shutil.copytree(project / "data" / "pretrain", other)  # a teacher from elsewhere: a saved pretrain output
    overrides = [f"distill.teachers=[pretrain, {other}]", "distill.augment=false", "distill.method=compress"]
    first = run(project, overrides=overrides)
    assert [s for s, how in statuses(first).items() if how == "ran"] == ["distill", "finetune", "evaluate"]
    teachers = json.loads((project / "data" / "distill" / "teachers.json").read_text())
    assert [t["teacher"] for t in teachers] == ["pretrain", str(other)]
    assert sum(t["weight"] for t in teachers) == pytest.approx(1.0)
    assert teachers[0]["logme"] == teachers[1]["logme"]  # the same weights: equal scores, equal weights
    assert {t["embeddings"] for t in teachers} <= {"ran", "cached"}
    stages = {s["stage"]: s for s in first["stages"]}
    assert stages["distill"]["metrics"]["teachers"] == 2 and not stages["distill"]["metrics"]["teacher_forward"]
    assert "distill teacher pretrain" in stages["evaluate"]["metrics"]["transferability"]
    second = run(project, refresh=["distill"])
    again = json.loads((project / "data" / "distill" / "teachers.json").read_text())
    assert {t["embeddings"] for t in again} == {"cached"}  # computed once, read back from the store
    assert statuses(second)["distill"] == "ran"
    edit_code("tlpipe.distillation.representation")  # where the teacher's embeddings are computed
    run(project, refresh=["distill"])
    edited = json.loads((project / "data" / "distill" / "teachers.json").read_text())
    # computed again for the first teacher; the second has the same weights, so the same memo
    assert [t["embeddings"] for t in edited] == ["ran", "cached"]
    assert [t["logme"] for t in edited] == [t["logme"] for t in again]  # the same code ran: the same numbers


def test_an_unknown_teacher_is_rejected_before_any_compute(project_run):
    project, _ = project_run
    params, _ = paramfiles.apply_overrides(paramfiles.load_all_params(project), ["distill.teachers=[pretrain, no/such/teacher]"])
    with pytest.raises(ValueError, match="no/such/teacher"):
        preflight(project, load_pipeline(project), params)
