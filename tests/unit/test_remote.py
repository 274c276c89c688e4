"""The DVC remote on a real DVC repository in a temporary folder with a local-directory dvc."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runner import dvc

DVC = str(Path(sys.executable).with_name("dvc"))


def dvc_cli(project: Path, *args: str) -> None:
    subprocess.run([DVC, *args], cwd=project, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc_cli(root, "init", "-q")
    (root / "data" / "raw" / "target" / "a").mkdir(parents=True)
    (root / "data" / "raw" / "target" / "a" / "1.txt").write_text("one")
    (root / "data" / "raw" / "target" / "2.txt").write_text("two")
    dvc_cli(root, "add", "data/raw/target")
    return root


def with_remote(project: Path) -> Path:
    dvc_cli(project, "remote", "add", "-d", "shared", str(project.parent / "remote"))
    return project.parent / "remote"


def test_without_a_remote_nothing_is_pushed_or_fetched(project):
    md5 = dvc.tracked_data(project)["data/raw/target"]
    assert dvc.default_remote(project) is None
    assert dvc.push_outputs(project, [md5]) == 0
    assert dvc.fetch_outputs(project, [md5]) is False
    assert dvc.pull_tracked(project) == 0


def test_a_folder_goes_to_the_remote_and_comes_back_into_an_empty_cache(project):
    store = with_remote(project)
    md5 = dvc.tracked_data(project)["data/raw/target"]
    assert dvc.push_outputs(project, [md5]) == 3  # the listing and both files
    assert dvc.push_outputs(project, [md5]) == 0  # already there
    assert len([p for p in store.rglob("*") if p.is_file()]) == 3
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "raw" / "target")
    assert not dvc.cached_locally(project, md5)
    assert dvc.restore_output(project, "data/raw/target", md5)  # fetched, then restored
    assert dvc.cached_locally(project, md5)
    assert (project / "data" / "raw" / "target" / "a" / "1.txt").read_text() == "one"


def test_a_version_no_one_pushed_is_not_restored(project):
    with_remote(project)
    assert not dvc.restore_output(project, "data/other", "0" * 32 + ".dir")
    assert not (project / "data" / "other").exists()


def test_tracked_data_reads_dvc_files_and_skips_hidden_folders(project):
    (project / ".venv" / "lib").mkdir(parents=True)
    (project / ".venv" / "lib" / "x.dvc").write_text("outs:\n- path: y\n  md5: 1\n")
    tracked = dvc.tracked_data(project)
    assert list(tracked) == ["data/raw/target"]
    assert tracked["data/raw/target"] == dvc.md5_path(project / "data" / "raw" / "target")


def test_pull_tracked_brings_the_recorded_version(project):
    with_remote(project)
    dvc_cli(project, "push", "-q")
    shutil.rmtree(project / ".dvc" / "cache")
    shutil.rmtree(project / "data" / "raw" / "target")
    assert dvc.pull_tracked(project) == 3  # objects: the listing and both files
    assert (project / "data" / "raw" / "target" / "2.txt").read_text() == "two"
