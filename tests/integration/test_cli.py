"""The `tlpipe` command: bad input is refused before any compute, with exit code 2 and nothing written."""

import os
import subprocess
import sys
from pathlib import Path

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
        (["-s", "distill.method=krr_st", "-s", "distill.teachers=[pretrain, other]"],
         "method=krr_st distils the source with one teacher, but teachers gives 2"),
        (["-s", "distill.method=krr_st", "-s", "distill.krr_st.synthetic=no/where"],
         "params/distill.yaml: krr_st.synthetic: 'no/where' holds no synthetic set"),
        (["-s", "distill.teachers={select: osborn, from: [pretrain], size: 2}"],
         "teachers.size=2 must be between 1 and the 1 candidates of teachers.from"),
        (["--until", "deploy"], "unknown stage 'deploy'"),
        (["--preset", "nope"], "preset 'nope': no such file"),
        (["--preset", "vit-s16-224", "-s", "pretrain.model.hidden_sizes=[100]"], "arch=vit takes one stage"),
        (["--refresh", "everything"], "unknown stage 'everything'"),
        (["-s", "finetune.method=fixmatch", "-s", "finetune.fixmatch.threshold=1.5"],
         "fixmatch.threshold=1.5 is out of range; allowed (0, 1]"),
        (["-s", "finetune.method=lora", "-s", "finetune.lora.dropout=1"], "lora.dropout=1.0 is out of range; allowed [0, 1)"),
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
    from project import paramfiles

    rest = "groups: classes\nnum_clusters: 10\nscores:\n  runs: 1  # score runs\n  epochs: 1\n  batch_size: 8\n  lr: 0.1\n"
    (project / "params" / "prune.yaml").write_text("# how much to prune\nmethod: lm  # or random\nratio: 0.5\nseed: 0\n" + rest)
    params, touched = paramfiles.apply_overrides(paramfiles.load_all_params(project), ["prune.ratio=0.3", "prune.scores.runs=2"])
    write_overrides(project, params, touched)
    text = (project / "params" / "prune.yaml").read_text()
    assert text == ("# how much to prune\nmethod: lm  # or random\nratio: 0.3\nseed: 0\n"
                    + rest.replace("runs: 1", "runs: 2"))
    assert paramfiles.load_stage_params(project, "prune")["ratio"] == 0.3


@pytest.mark.parametrize("value, message", [("bogus", "TLPIPE_DEVICE: device='bogus' is not one of"),
                                            ("cuda:99", "TLPIPE_DEVICE: device='cuda:99' is unavailable")])
def test_a_bad_device_variable_exits_2_naming_it(project, monkeypatch, value, message):
    monkeypatch.setenv("TLPIPE_DEVICE", value)
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert snapshot(project) == before


def imagefolder(root, classes: dict[str, int], size: int = 12):
    """An imagefolder of small grey PNGs: {class folder: number of images}."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def corrupt(root):
    (root / "b" / "broken.png").write_bytes(bytes(range(256)) * 4)  # random bytes named .png
    return root


@pytest.mark.parametrize("make, message", [
    (lambda root: corrupt(imagefolder(root, {"a": 8, "b": 8})),
     "params/prepare.yaml: target.name='{root}': image {root}/b/broken.png does not decode"),
    (lambda root: imagefolder(root, {"a": 8}), "has 1 class folder(s) (a); an imagefolder needs one per class"),
    (lambda root: (imagefolder(root, {"a": 8, "b": 8}) / "c").mkdir(), "class folder 'c' of"),
])
def test_bad_target_data_exits_2_naming_the_key(project, tmp_path, make, message):
    root = tmp_path / "target"
    make(root)
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"prepare.target.name={root}",
                                      "-s", "prepare.target.shots_per_class=2"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message.format(root=root) in text and text.count("error:") == 1
    assert snapshot(project) == before


def test_a_corrupt_image_of_an_encoded_target_is_found_in_the_preflight(project, tmp_path):
    root = corrupt(imagefolder(tmp_path / "target", {"a": 8, "b": 8}))
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"prepare.target.name={root}",
                                      "-s", "prepare.target.shots_per_class=2", "-s", "prepare.storage=encoded"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"params/prepare.yaml: target.name='{root}': image {root}/b/broken.png does not decode" in text
    assert text.count("error:") == 1 and snapshot(project) == before


def test_a_one_class_target_is_refused_before_any_compute(project, tmp_path):
    import datasets
    import numpy as np

    folder = tmp_path / "one-class.parquet"
    images = [np.zeros((8, 8), dtype=np.uint8)] * 6
    datasets.Dataset.from_dict({"image": images, "label": [0] * 6},
                               features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
                               ).to_parquet(str(folder))
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"prepare.target.name={folder}",
                                      "-s", "prepare.target.shots_per_class=2"])
    assert result.exit_code == 2, result.output
    assert "has 1 class (0); a target needs at least 2" in " ".join(result.output.split())
    assert snapshot(project) == before


def test_fixmatch_on_a_target_without_unlabeled_images_is_refused_before_any_compute(project, tmp_path):
    root = imagefolder(tmp_path / "target", {"a": 4, "b": 4})  # 2 test, 2 shots: nothing left unlabeled
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"prepare.target.name={root}",
                                      "-s", "prepare.target.shots_per_class=2", "-s", "prepare.target.test_fraction=0.5",
                                      "-s", "evaluate.probe_shots=[1]", "-s", "finetune.method=fixmatch"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "params/finetune.yaml: method=fixmatch trains on the target's unlabeled images, but its unlabeled split " \
           "is empty" in text and text.count("error:") == 1
    assert snapshot(project) == before


def test_lora_on_a_backbone_it_cannot_adapt_is_refused_before_any_compute(project, tmp_path):
    import transformers

    from tlpipe.training import models

    folder = tmp_path / "regnet"
    models.save_backbone(transformers.RegNetModel(transformers.RegNetConfig(
        num_channels=1, hidden_sizes=[8], depths=[1], embedding_size=8, groups_width=8)), folder)
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", f"distill.model.pretrained={folder}",
                                      "-s", "finetune.method=lora"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "params/finetune.yaml: method=lora on the student (params/distill.yaml model): lora: a regnet backbone " \
           "has no layer LoRA targets here" in text and text.count("error:") == 1
    assert snapshot(project) == before


def test_probe_shots_beyond_a_class_are_refused_before_any_compute(project):
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project), "-s", "evaluate.probe_shots=[1, 3, 500]"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "params/evaluate.yaml: probe_shots=[1, 3, 500]: class" in text and "must be at most" in text
    assert snapshot(project) == before  # params/evaluate.yaml keeps its value


@pytest.mark.parametrize("variable, value", [("MLFLOW_TRACKING_URI", "http://127.0.0.1:9"),
                                             ("PREFECT_API_URL", "http://127.0.0.1:9/api")])
def test_a_dead_server_is_one_line_and_exit_2(project, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)  # nothing listens on port 9
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"{variable}={value}: no answer" in text and f"unset {variable}" in text
    assert snapshot(project) == before


def test_a_broken_dvc_remote_is_one_line_and_exit_2(project):
    import subprocess
    import sys
    from pathlib import Path

    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "remote", "add", "-d", "broken", "gdrive://root/tlpipe"], cwd=project, check=True)
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2, result.output
    assert "DVC remote broken" in " ".join(result.output.split())
    assert snapshot(project) == before


def test_a_stage_removed_from_dvc_yaml_is_named(project):
    import yaml

    document = yaml.safe_load((project / "dvc.yaml").read_text())
    del document["stages"]["surrogate"]  # prune still reads data/surrogate
    (project / "dvc.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    (project / "data" / "surrogate").mkdir(parents=True)  # an old output folder left behind
    before = snapshot(project)
    result = CliRunner().invoke(app, ["run", "--project", str(project)])
    assert result.exit_code == 2, result.output
    assert "stage prune reads data/surrogate, the output of stage surrogate, but dvc.yaml has no stage surrogate" \
        in " ".join(result.output.split())
    assert snapshot(project) == before


def test_a_read_only_data_folder_is_refused_before_anything_is_written(project):
    """data/ read-only (a bind mount, as root writes through permissions; else the folder's mode):
    one line naming the folder, exit 2, and the -s value not written to params/."""
    data = project / "data"
    before = snapshot(project)
    command = [str(Path(sys.executable).with_name("tlpipe")), "run", "--project", str(project), "-s", "prune.ratio=0.25"]
    if os.geteuid() == 0:
        remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", remount, str(data), *command]
    else:
        data.chmod(0o555)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        data.chmod(0o755)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"data/ ({data}) is not writable" in lines[0], result.stderr
    assert "the outputs of prepare" in lines[0]
    assert snapshot(project) == before
