"""Every pruning method and every pretraining mode through the real stage code on tiny data.

prepare and surrogate run once through the flow (Prefect test harness, DVC, MLflow sqlite); then each
prune method and pretrain mode runs through the stage runner (`runner.core.run_stage`), as every path does.
"""

import numpy as np
import pytest

from flows.console import run_flow
from flows.pipeline import pipeline
from runner import core
from runner.snapshot import preflight
from runner.spec import load_pipeline, stage_dir
from runner.workspace import ProjectWorkspace, store_root
from tlpipe import io, registry
from tlpipe.data import storage
from project import config, paramfiles
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCORES = {"runs": 2, "epochs": 1, "batch_size": 64, "lr": 0.006}


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_harness):
    import os

    root = tmp_path_factory.mktemp("methods")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    project = make_project(root / "proj")
    run_flow(pipeline, project=str(project), until="surrogate", show_progress=False)
    return project


def run_stage(project, stage: str, also: tuple = (), **changes) -> dict:
    """Runs one stage with `changes` to its params (and `also`, overrides of other stages)."""
    spec = next(s for s in load_pipeline(project) if s.name == stage)
    base = paramfiles.load_all_params(project)
    params, _ = paramfiles.apply_overrides(base, [*also, *(f"{stage}.{k}={v}" for k, v in changes.items())])
    preflight(project, [spec], params)
    return core.run_stage(spec, params[stage], ProjectWorkspace(project), device="cpu", refresh=True).summary()


@pytest.mark.parametrize("method", registry.CLASS_METHODS)
def test_class_methods_keep_whole_classes(project, method):
    manifest = run_stage(project, "prune", method=method, ratio=0.5, scores=SCORES)
    out = stage_dir(project, "prune")
    selection = io.read_json(out / "selection.json")
    kept = io.read_array(out / "kept_indices.npy")
    labels = np.asarray(storage.load_prepared(stage_dir(project, "prepare") / "source")["train"]["label"])
    assert selection["level"] == "class" and selection["method"] == method
    assert len(selection["kept"]) == round(selection["num_classes"] * 0.5)
    assert np.array_equal(kept, np.flatnonzero(np.isin(labels, selection["kept"])))  # every image of a kept class
    assert manifest["metrics"]["kept_train_images"] == len(kept)
    assert (out / "votes.png").stat().st_size > 0 and (out / "classes.csv").stat().st_size > 0


@pytest.mark.parametrize("method", registry.SAMPLE_METHODS)
def test_sample_methods_keep_the_asked_share_of_images(project, method):
    manifest = run_stage(project, "prune", method=method, ratio=0.75, scores=SCORES)
    out = stage_dir(project, "prune")
    kept = io.read_array(out / "kept_indices.npy")
    total, classes = manifest["metrics"]["source_train_images"], manifest["metrics"]["source_classes"]
    if method == "moderate":  # kept per class: round(n_c * 0.25) of each class
        assert abs(len(kept) - total * 0.25) <= classes / 2
    else:
        assert len(kept) == round(total * 0.25)
    assert np.all(np.diff(kept) > 0)  # ascending, no repeats
    assert io.read_json(out / "selection.json")["level"] == "sample"


def test_feature_mapping_on_kmeans_groups_of_a_self_supervised_surrogate(project):
    run_stage(project, "surrogate", also=("prune.method=fm",), mode="simclr", epochs=1)
    assert not (stage_dir(project, "surrogate") / "model").exists()  # no classifier without labels
    run_stage(project, "prune", also=("surrogate.mode=simclr",), method="fm", groups="kmeans", num_clusters=8, ratio=0.5)
    first = io.read_array(stage_dir(project, "prune") / "kept_indices.npy")
    run_stage(project, "prune", also=("surrogate.mode=simclr",), method="fm", groups="kmeans", num_clusters=8, ratio=0.5)
    assert np.array_equal(first, io.read_array(stage_dir(project, "prune") / "kept_indices.npy"))  # deterministic
    with pytest.raises(config.ParamsError, match="trains no classifier"):
        run_stage(project, "prune", also=("surrogate.mode=simclr",), method="lm")
    run_stage(project, "surrogate")  # back to the supervised surrogate for the other tests


@pytest.mark.parametrize("mode", ["supervised", "simclr", "byol"])
def test_pretrain_modes_write_a_backbone(project, mode):
    run_stage(project, "prune", method="lm", ratio=0.5)
    manifest = run_stage(project, "pretrain", mode=mode, epochs=1)
    out = stage_dir(project, "pretrain")
    assert (out / "backbone" / "config.json").is_file()
    assert (out / "model").exists() == (mode == "supervised")
    assert manifest["metrics"]["images_seen"] > 0 and manifest["metrics"]["source_fraction"] < 1.0


@pytest.mark.parametrize("method", ["el2n", "grand"])
def test_sample_scores_are_computed_once_per_seed_for_every_ratio(project, method):
    scores_dir = store_root(project) / "prune_scores"
    before = set(scores_dir.glob("*.npy")) if scores_dir.exists() else set()
    kept = {}
    for ratio in (0.5, 0.8):
        run_stage(project, "prune", method=method, ratio=ratio, seed=7, scores=SCORES)
        kept[ratio] = io.read_array(stage_dir(project, "prune") / "kept_indices.npy")
    assert len(set(scores_dir.glob("*.npy")) - before) == 1  # one score file served both ratios
    assert set(kept[0.8]) <= set(kept[0.5])  # the same ranking, cut at two places


def test_edited_scoring_code_computes_the_scores_again(project, edit_code):
    scores_dir = store_root(project) / "prune_scores"
    run_stage(project, "prune", method="el2n", ratio=0.5, seed=3, scores=SCORES)
    before = set(scores_dir.glob("*.npy"))
    run_stage(project, "prune", method="el2n", ratio=0.6, seed=3, scores=SCORES)
    assert set(scores_dir.glob("*.npy")) == before  # reused: same data, params and code
    edit_code("tlpipe.pruning.early")
    run_stage(project, "prune", method="el2n", ratio=0.6, seed=3, scores=SCORES)
    assert len(set(scores_dir.glob("*.npy")) - before) == 1  # the scoring code changed: computed again


def test_a_scratch_workspace_computes_and_records_nothing(project):
    """The benchmarks' mode of the runner: the stage computes its outputs in place, and no record,
    cache entry or checkpoint folder is left for a later run to reuse."""
    from runner.workspace import ScratchWorkspace

    spec = next(s for s in load_pipeline(project) if s.name == "prune")
    params, _ = paramfiles.apply_overrides(paramfiles.load_all_params(project), ["prune.method=random", "prune.ratio=0.5"])
    state = lambda root: sorted(str(p.relative_to(project)) for p in root.rglob("*")) if root.exists() else []  # noqa: E731
    records, tlpipe = project / "data" / "records", project / ".tlpipe"
    before = {path: path.read_bytes() for path in records.glob("*.json")}, state(tlpipe)
    for _ in range(2):  # computed both times: nothing found the first run
        outcome = core.run_stage(spec, params["prune"], ScratchWorkspace(project), device="cpu", refresh=False)
        assert outcome.status == "ran" and outcome.produced_by is None
    assert io.read_json(stage_dir(project, "prune") / "selection.json")["method"] == "random"
    assert ({path: path.read_bytes() for path in records.glob("*.json")}, state(tlpipe)) == before
