"""`tlpipe sweep` on a tiny grid: a real Prefect server, Prefect's Dask task runner on a local cluster,
the content-addressed store, and a real MLflow sqlite store."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.server import TemporaryServer
from runner import tracking
from runner.workspace import store_root
from tests.integration.conftest import make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TLPIPE = str(Path(sys.executable).with_name("tlpipe"))
GRID = {"methods": ["lm", "random"], "ratios": [0.5], "seeds": [0, 1], "full_source": True, "set": {},
        "cluster": {"address": None, "n_workers": 2, "threads_per_worker": 1}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port for this module; stopped at the end."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    started = TemporaryServer()
    try:
        yield started.wait(120)
    finally:
        started.stop()


def write_sweep(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return path


def sweep(project: Path, sweep_file: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([TLPIPE, "sweep", "--project", str(project), "--file", str(sweep_file)],
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, server):
    root = tmp_path_factory.mktemp("sweep")
    project = make_project(root / "proj")
    env = {**os.environ, "PREFECT_API_URL": server, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "TLPIPE_DEVICE": "cpu"}
    sweep_file = write_sweep(root / "sweep.yaml")
    first = sweep(project, sweep_file, env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = sweep(project, sweep_file, env)
    assert second.returncode == 0, second.stderr[-3000:]
    return project, env, first, second


def results(project: Path) -> list[pd.DataFrame]:
    """Every sweep's results table, oldest first."""
    return [pd.read_parquet(folder / "results.parquet") for folder in sorted((project / "data" / "sweeps").iterdir())]


def test_every_point_runs_once_and_the_table_is_tidy(swept):
    project, _, first, _ = swept
    table = results(project)[0]
    assert len(table) == 2 * 1 * 2 + 2  # methods x ratios x seeds + the full source per seed
    assert set(table["method"]) == {"lm", "random", "full"}
    assert {"probe_1shot", "probe_3shot", "pretrain_time_s", "pretrain_wall_s", "images_seen", "kept_classes",
            "logme", "h_score", "tmi", "leep", "nce", "finetune_accuracy"} <= set(table.columns)
    assert (table["pretrain_time_s"] < table["pretrain_wall_s"]).all()  # the stage adds validation, loading, saving
    assert table["finetune_accuracy"].between(0, 1).all() and table["logme"].notna().all()
    assert table["probe_1shot"].between(0, 1).all()
    full = table[table.method == "full"]
    pruned = table[table.method != "full"]
    assert (full["kept_fraction"] == 1.0).all() and (pruned["kept_fraction"] < 1.0).all()
    assert (pruned["images_seen"].to_numpy() < full["images_seen"].max()).all()
    assert (table[["prune_status", "pretrain_status", "probe_status"]] == "ran").all().all()
    folder = sorted((project / "data" / "sweeps").iterdir())[0]
    ranks = pd.read_csv(folder / "rank_correlation.csv")
    assert set(ranks["score"]) == {"logme", "h_score", "tmi", "leep", "nce"} and (ranks["points"] == len(table)).all()
    assert set(ranks["target"]) == {"finetune_accuracy", "probe_1shot", "probe_3shot"}
    for name in ("results.csv", "summary.csv", "probe_1shot_vs_ratio.png", "cost_vs_ratio.png"):
        assert (folder / name).stat().st_size > 0, name
    assert "pruning sweep" in first.stdout


def test_shared_stages_ran_once_and_nothing_touched_the_pipeline_outputs(swept):
    project, *_ = swept
    root = store_root(project)
    for stage in ("prepare", "surrogate"):
        assert len([p for p in (root / stage).iterdir() if p.is_dir()]) == 1, stage
    assert len([p for p in (root / "pretrain").iterdir() if p.is_dir()]) == 6
    assert not (project / "dvc.lock").exists()  # only the default pipeline run writes dvc.lock
    assert not (project / "data" / "prepared").exists()


def test_second_sweep_is_all_cache_hits(swept):
    project, *_ = swept
    first, second = results(project)
    assert (second[["prune_status", "pretrain_status", "probe_status"]] == "cached").all().all()
    pd.testing.assert_series_equal(first["probe_1shot"], second["probe_1shot"])


def test_a_point_probe_is_a_memo_of_the_probe_code(swept, edit_code):
    """The probe of a swept point, read back; with the probe's code edited, computed again (same numbers)."""
    from flows.sweep import _probe
    from runner.workspace import StoreWorkspace
    from project import paramfiles

    project, *_ = swept
    root = store_root(project)
    entries = {stage: next(p.name for p in (root / stage).iterdir() if p.is_dir()) for stage in ("prepare", "pretrain")}
    params = paramfiles.load_all_params(project)
    workspace = StoreWorkspace(project, entries)
    scores, status = _probe(workspace, params, "cpu")
    assert status == "cached"
    edit_code("tlpipe.evaluation.probe")
    again, status = _probe(workspace, params, "cpu")
    assert status == "ran" and again == scores


def test_sweep_is_recorded_in_mlflow_and_prefect(swept, server):
    project, env, *_ = swept
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    tracking.configure(project)
    parents = tracking.find_runs("attributes.run_name LIKE 'sweep-%'")
    assert len(parents) == 2
    artifacts = {a.path for a in MlflowClient().list_artifacts(parents[0].info.run_id, "sweep")}
    assert "sweep/results.parquet" in artifacts and "sweep/cost_vs_ratio.png" in artifacts
    children = tracking.find_runs(f"tags.mlflow.parentRunId = '{parents[-1].info.run_id}'")
    assert {r.data.tags[tracking.TAG_STAGE] for r in children} >= {"prepare", "surrogate", "prune", "pretrain"}
    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
        assert any(a.key == "pruning-sweep" for a in artifact)


@pytest.mark.parametrize("changes, message", [
    ({"methods": ["lm", "nonsense"]}, "unknown method 'nonsense'"),
    ({"ratios": [0.5, 1.0]}, "ratios"),
    ({"methods": []}, "methods"),
    ({"seeds": [0, 0]}, "twice"),
    ({"set": {"pretrain": {"epochs": 0}}}, "epochs"),
])
def test_bad_sweep_file_exits_2_before_compute(tmp_path, changes, message):
    project = make_project(tmp_path / "proj")
    done = sweep(project, write_sweep(tmp_path / "sweep.yaml", **changes), {**os.environ})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (project / ".tlpipe").exists() and not (project / "data" / "sweeps").exists()
