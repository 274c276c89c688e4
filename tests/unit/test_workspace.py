"""Where stage records and store entries live, and which entries the runner trusts."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from runner import dvc
from runner.spec import StageSpec
from runner.workspace import Records, StoreWorkspace, cache_location, store_root
from tlpipe.io import cached_file, read_json, write_json

PRUNE = StageSpec("prune", "python -m tasks.prune", ("data/prepared/source",), {}, ("data/prune", "data/metrics/prune.json"))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def declared(request):
    """Every project has its dvc.yaml: the workspaces find the stages' output folders there."""
    if "tmp_path" in request.fixturenames:
        shutil.copy(REPO / "dvc.yaml", request.getfixturevalue("tmp_path") / "dvc.yaml")


def make_entry(workspace: StoreWorkspace, stage="prune", key="k1") -> dict:
    entry = workspace.entry(stage, key)
    (entry / "out").mkdir(parents=True)
    (entry / "out" / "selection.json").write_text('{"kept": [1, 2]}')
    (entry / "metrics.json").write_text('{"kept_classes": 2}')
    outs = {f"data/{stage}": dvc.md5_path(entry / "out"), f"data/metrics/{stage}.json": dvc.md5_path(entry / "metrics.json")}
    record = {"stage": stage, "cache_key": key, "outs": outs, "metrics": {"kept_classes": 2}}
    write_json(entry / "manifest.json", record)
    return record


def test_locations_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    monkeypatch.delenv("TLPIPE_CACHE_DIR", raising=False)
    assert store_root(tmp_path) == (tmp_path / ".tlpipe" / "store").resolve()
    assert cache_location(tmp_path) == (tmp_path / ".tlpipe" / "cache").resolve()
    monkeypatch.setenv("TLPIPE_STORE_DIR", str(tmp_path / "shared"))
    assert store_root(tmp_path / "elsewhere") == (tmp_path / "shared").resolve()
    monkeypatch.setenv("TLPIPE_CACHE_DIR", str(tmp_path / "shared-cache"))
    assert cache_location(tmp_path / "p") == tmp_path / "shared-cache"
    monkeypatch.setenv("TLPIPE_CACHE_DIR", (tmp_path / "a b").as_uri())  # a mounted folder written as a URL
    assert cache_location(tmp_path / "p") == tmp_path / "a b"
    monkeypatch.setenv("TLPIPE_CACHE_DIR", "s3://bucket/tlpipe-cache")
    assert cache_location(tmp_path / "p") == "s3://bucket/tlpipe-cache"


@pytest.mark.parametrize("location", ["folder", "memory://tlpipe-test/records"])
def test_records_round_trip_in_a_folder_and_an_fsspec_url(tmp_path, location):
    records = Records(tmp_path / "records" if location == "folder" else location)
    assert records.get("prune", "k1") is None
    records.put("prune", "k1", {"outs": {"data/prune": "a" * 32 + ".dir"}, "metrics": {"x": 1.5}})
    assert records.get("prune", "k1") == {"outs": {"data/prune": "a" * 32 + ".dir"}, "metrics": {"x": 1.5}}
    assert records.get("prune", "k2") is None and records.get("pretrain", "k1") is None


def test_store_trusts_only_intact_entries(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    workspace = StoreWorkspace(tmp_path)
    record = make_entry(workspace)
    found, how = StoreWorkspace(tmp_path).lookup(PRUNE, "k1")
    assert found == record and how == "cached"
    (workspace.entry("prune", "k1") / "out" / "selection.json").write_text('{"kept": [1]}')  # altered afterwards
    assert StoreWorkspace(tmp_path).lookup(PRUNE, "k1") is None
    assert StoreWorkspace(tmp_path).lookup(PRUNE, "never-written") is None


def test_store_resolves_upstream_outputs_and_their_parts_inside_entries(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    record = make_entry(StoreWorkspace(tmp_path), stage="prepare", key="p1")
    workspace = StoreWorkspace(tmp_path, {"prepare": "p1"})
    entry = workspace.entry("prepare", "p1")
    assert workspace.known == record["outs"]
    assert workspace.upstream("prepare") == entry / "out"
    assert workspace.locate("data/prepared/source") == entry / "out" / "source"
    assert workspace.locate("data/metrics/prepare.json") == entry / "metrics.json"
    assert workspace.locate("tasks/prune.py") == workspace.project / "tasks" / "prune.py"  # code: the project's


def test_a_store_entry_is_claimed_by_one_process_at_a_time(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    workspace, order = StoreWorkspace(tmp_path), []

    def claim(name):
        with workspace.claim(PRUNE, "k1"):
            order.append(f"{name} in")
            time.sleep(0.2)
            order.append(f"{name} out")

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[1].endswith("out") and order[3].endswith("out")  # never both inside


def test_a_memo_computes_once_even_when_asked_concurrently(tmp_path):
    calls, results = [], []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return {"probe_1shot": 0.5}

    path = tmp_path / "probe" / "abc.json"
    threads = [threading.Thread(target=lambda: results.append(cached_file(path, compute, write_json, read_json)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(how for _, how in results) == ["cached", "cached", "ran"]


def test_a_failed_memo_leaves_no_record(tmp_path):
    def broken():
        raise RuntimeError("boom")

    path = tmp_path / "probe" / "abc.json"
    with pytest.raises(RuntimeError):
        cached_file(path, broken, write_json, read_json)
    assert cached_file(path, lambda: {"ok": 1}, write_json, read_json) == ({"ok": 1}, "ran")


KILLED_WRITER = """
import sys, time
from pathlib import Path
from runner.workspace import StoreWorkspace
from tests.unit.test_workspace import PRUNE
from tlpipe.io import cached_file, staged_outputs

workspace = StoreWorkspace(Path(sys.argv[1]))
if sys.argv[2] == "entry":
    with workspace.claim(PRUNE, "k1"), staged_outputs(*workspace.outputs(PRUNE, "k1")) as (out, metrics):
        out.mkdir()
        print("writing", flush=True)
        time.sleep(120)
else:
    def write(path, value):
        path.write_text("half")
        print("writing", flush=True)
        time.sleep(120)
    cached_file(workspace.store / "prune_scores" / "abc.npy", lambda: 7, write, None)
"""


@pytest.mark.parametrize("what", ["entry", "memo"])
def test_what_a_killed_writer_left_in_the_store_goes_when_it_is_next_claimed(tmp_path, monkeypatch, what):
    """A process killed (SIGKILL) while writing a store entry or a memo leaves temporaries; the next
    process to claim the entry (or the memo) removes them, and nothing half-written passes for done.
    The writer's pid is not trusted: a shared store is written from several machines."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    repo = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), what], cwd=repo,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    workspace = StoreWorkspace(tmp_path)
    folder = workspace.entry("prune", "k1") if what == "entry" else workspace.store / "prune_scores"
    assert [p.name for p in folder.iterdir() if ".tmp-" in p.name]  # what the killed writer left
    if what == "entry":
        with workspace.claim(PRUNE, "k1"):
            assert workspace.lookup(PRUNE, "k1") is None
    else:
        assert cached_file(folder / "abc.npy", lambda: 7, lambda p, v: p.write_text(str(v)), None) == (7, "ran")
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


PRUNE_RECORDED = StageSpec("prune", "python -m tasks.prune", (), {}, ("data/prune", "data/metrics/prune.json"),
                           record="data/records/prune.json")


def project_with_record(tmp_path, key="k1"):
    """A project whose prune outputs are in place, with the record of `key` in place, committed to the
    DVC cache and named by dvc.lock (as after a pipeline run, or a `dvc pull`)."""
    import shutil

    from runner.workspace import ProjectWorkspace
    import yaml

    from tlpipe.io import json_text

    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("")
    (tmp_path / "data" / "prune").mkdir(parents=True)
    (tmp_path / "data" / "prune" / "selection.json").write_text('{"kept": [1, 2]}')
    (tmp_path / "data" / "metrics").mkdir()
    (tmp_path / "data" / "metrics" / "prune.json").write_text('{"kept_classes": 2}')
    outs = {rel: dvc.md5_path(tmp_path / rel) for rel in PRUNE_RECORDED.outs}
    record = {"stage": "prune", "cache_key": key, "outs": outs, "metrics": {"kept_classes": 2, "wall_time_s": 1.5},
              "mlflow_run_id": "r1"}
    path = tmp_path / PRUNE_RECORDED.record
    path.parent.mkdir()
    path.write_text(json_text(record, sort_keys=False))
    md5 = dvc.md5_path(path)
    dvc.cache_object(tmp_path, md5).parent.mkdir(parents=True)
    shutil.copyfile(path, dvc.cache_object(tmp_path, md5))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prune": {
        "cmd": PRUNE_RECORDED.cmd, "outs": [{"path": rel, "md5": digest}
                                            for rel, digest in {**outs, PRUNE_RECORDED.record: md5}.items()]}}}))
    return ProjectWorkspace(tmp_path, Records(tmp_path / "no-records")), record


def test_a_project_finds_a_run_by_the_record_that_travels_with_its_outputs(tmp_path):
    workspace, record = project_with_record(tmp_path)
    assert workspace.lookup(PRUNE_RECORDED, "k1") == (record, "cached")  # no record in the cache folder
    assert workspace.lookup(PRUNE_RECORDED, "k2") is None  # another key: other code, params, data or env


@pytest.mark.parametrize("damage", ["missing", "garbled", "another key"])
def test_the_record_dvc_lock_names_is_read_from_the_dvc_cache(tmp_path, damage):
    """A clone that has not pulled (no record file), or a record file changed by hand: the version
    dvc.lock names counts, and is put back when the outputs are reused."""
    workspace, record = project_with_record(tmp_path)
    path = tmp_path / PRUNE_RECORDED.record
    if damage == "missing":
        path.unlink()
    else:
        path.write_text("{not json" if damage == "garbled" else '{"cache_key": "k2", "outs": {}}')
    assert workspace.lookup(PRUNE_RECORDED, "k1") == (record, "cached")
    assert read_json(path) == record


def test_a_record_neither_in_place_nor_in_the_dvc_cache_finds_nothing(tmp_path):
    import shutil

    workspace, _ = project_with_record(tmp_path)
    (tmp_path / PRUNE_RECORDED.record).unlink()
    shutil.rmtree(tmp_path / ".dvc" / "cache")  # and no remote
    assert workspace.lookup(PRUNE_RECORDED, "k1") is None


def test_saving_writes_the_record_file_and_the_cache_folder(tmp_path):
    from runner.workspace import ProjectWorkspace

    workspace = ProjectWorkspace(tmp_path, Records(tmp_path / "records"))
    record = {"stage": "prune", "cache_key": "k3", "outs": {}, "metrics": {"b": 1, "a": 2}}
    workspace.save(PRUNE_RECORDED, "k3", record)
    assert read_json(tmp_path / "data" / "records" / "prune.json") == record == workspace.records.get("prune", "k3")
    assert list(read_json(tmp_path / "data" / "records" / "prune.json")["metrics"]) == ["b", "a"]  # order kept
