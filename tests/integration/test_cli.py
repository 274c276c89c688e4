"""The `tlpipe` command: bad input is refused before any compute, with exit code 2 and nothing written."""

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.integration.conftest import make_project

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj")


def snapshot(project):
    return {p.relative_to(project).as_posix(): p.read_bytes() for p in project.rglob("*")
            if p.is_file() and not p.relative_to(project).as_posix().startswith((".git/", ".dvc/tmp/"))}


@pytest.mark.parametrize(
    "args, message",
    [
        (["-s", "prune.ratio=1.0"], "params/prune.yaml (with -s overrides): ratio=1.0 is out of range; allowed [0.0, 1.0)"),
        (["-s", "prune.colour=red"], "unknown key colour"),
        (["-s", "finetune.epochs=many"], "epochs='many': expected an integer"),
        (["-s", "prepare.target.shots_per_class=500"], "shots_per_class=500"),
        (["-s", "prepare.target.name=./no/such/folder"], "no/such/folder"),
        (["-s", "prepare.source.name=./no/such/folder"], "no/such/folder"),
        (["--until", "deploy"], "unknown stage 'deploy'"),
        (["--refresh", "everything"], "unknown stage 'everything'"),
    ],
)
def test_bad_input_exits_2_before_anything_is_written(project, args, message):
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert snapshot(project) == before  # params untouched, no data, no lock file


def test_missing_column_is_named(project, tmp_path):
    import datasets
    import numpy as np

    folder = tmp_path / "mydata"
    datasets.Dataset.from_dict({"img": [np.zeros((8, 8), dtype=np.uint8)] * 4, "y": [0, 1, 0, 1]}).save_to_disk(folder)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"prepare.target.name={folder}",
                                      "-s", "prepare.target.image_column=picture"])
    assert result.exit_code == 2, result.output
    assert "picture" in result.output


def test_broken_params_file_is_named(project):
    (project / "params" / "distill.yaml").write_text("tau_s: [oops\n")
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2
    assert "params/distill.yaml" in result.output and "not valid YAML" in result.output


def test_overrides_are_written_keeping_comments(project):
    from runner.snapshot import write_overrides
    from tlpipe import config

    rest = "groups: classes\nnum_clusters: 10\nscores:\n  runs: 1  # score runs\n  epochs: 1\n  batch_size: 8\n  lr: 0.1\n"
    (project / "params" / "prune.yaml").write_text("# how much to prune\nmethod: lm  # or random\nratio: 0.5\nseed: 0\n" + rest)
    params, touched = config.apply_overrides(config.load_all_params(project), ["prune.ratio=0.3", "prune.scores.runs=2"])
    write_overrides(project, params, touched)
    text = (project / "params" / "prune.yaml").read_text()
    assert text == ("# how much to prune\nmethod: lm  # or random\nratio: 0.3\nseed: 0\n"
                    + rest.replace("runs: 1", "runs: 2"))
    assert config.load_stage_params(project, "prune")["ratio"] == 0.3


@pytest.mark.parametrize("value, message", [("bogus", "TLPIPE_DEVICE: device='bogus' is not one of"),
                                            ("cuda:99", "TLPIPE_DEVICE: device='cuda:99' is unavailable")])
def test_a_bad_device_variable_exits_2_naming_it(project, monkeypatch, value, message):
    monkeypatch.setenv("TLPIPE_DEVICE", value)
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert snapshot(project) == before
