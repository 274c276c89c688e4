"""Content hashes must equal DVC's own, so stage records and dvc.lock agree; the stage graph of dvc.yaml."""

import json

import pytest

from dvc_data.hashfile.hash import file_md5

from runner import dvc, spec


def test_file_hash_matches_dvc(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 1000 + b"\r\n")
    assert dvc.md5_path(path) == file_md5(str(path))


def test_dir_hash_matches_dvc_listing_rule(tmp_path):
    import hashlib

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("b")
    (tmp_path / "d" / "sub" / "a.txt").write_text("a")
    listing = sorted(
        [{"md5": hashlib.md5(b"b").hexdigest(), "relpath": "b.txt"},
         {"md5": hashlib.md5(b"a").hexdigest(), "relpath": "sub/a.txt"}],
        key=lambda e: e["relpath"],
    )
    expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"
    assert dvc.md5_path(tmp_path / "d") == expected


def test_outputs_match_detects_changes(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("1")
    recorded = {"o": dvc.md5_path(tmp_path / "o")}
    assert dvc.outputs_match(tmp_path, recorded)
    (tmp_path / "o" / "x").write_text("2")
    assert not dvc.outputs_match(tmp_path, recorded)
    assert not dvc.outputs_match(tmp_path, {"missing": "0" * 32})


def test_a_dependency_inside_an_output_belongs_to_its_producer():
    producers = {"data/prepared": "prepare", "data/metrics/prepare.json": "prepare", "data/prune": "prune"}
    assert spec.producer_of("data/prepared", producers) == "prepare"
    assert spec.producer_of("data/prepared/source", producers) == "prepare"
    assert spec.producer_of("data/prepared_other", producers) is None
    assert spec.producer_of("tasks/prune.py", producers) is None


def test_run_order_and_selection_follow_dependencies_on_parts_of_outputs(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  train:\n    cmd: t\n    deps: [data/prepared/source]\n    outs: [data/train]\n"
        "  prepare:\n    cmd: p\n    outs: [data/prepared]\n"
        "  other:\n    cmd: o\n    outs: [data/other]\n")
    stages = spec.load_pipeline(tmp_path)
    assert [s.name for s in stages] == ["prepare", "train", "other"]  # train waits for prepare only
    assert [s.name for s in spec.select_stages(stages, "train")] == ["prepare", "train"]


@pytest.mark.parametrize("cache_type", ["copy", "reflink,hardlink,symlink"])
def test_outputs_stay_readable_while_a_background_commit_stores_them(tmp_path, cache_type):
    """The next stage reads an output while its commit runs: the files must never vanish meanwhile,
    whether the commit copies them into the cache or links them there."""
    import subprocess
    import sys
    import threading
    from pathlib import Path

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "config", "cache.type", cache_type], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text("stages:\n  make:\n    cmd: 'true'\n    outs: [out]\n    metrics: [m.json]\n")
    (tmp_path / "out").mkdir()
    watched = [tmp_path / "m.json", tmp_path / "out" / "0.bin"]
    missing, done = [], threading.Event()

    def read_all():
        while not done.is_set():
            missing.extend(p.name for p in watched if not p.exists())

    for round_ in range(3):  # each round changes the outputs, so each commit stores new versions
        for i in range(100):  # new files renamed into place, as the stages write (a linked output is the cache's)
            new = tmp_path / "out" / f".{i}.new"
            new.write_bytes(bytes([round_]) * 4096 + bytes([i]))
            new.replace(tmp_path / "out" / f"{i}.bin")
        (tmp_path / "m.new").write_text(f'{{"round": {round_}}}')
        (tmp_path / "m.new").replace(tmp_path / "m.json")
        reader = threading.Thread(target=read_all)
        reader.start()
        try:
            with dvc.Commits(tmp_path) as commits:
                commits.submit("make", ["out", "m.json"])
        finally:
            done.set()
            reader.join()
            done.clear()
    assert not missing
    recorded = {o["path"]: o["md5"] for o in dvc.read_lock(tmp_path)["stages"]["make"]["outs"]}
    assert dvc.outputs_match(tmp_path, recorded)
    linked = (tmp_path / "out" / "0.bin").stat().st_nlink == 2
    assert linked == (cache_type != "copy")
