"""Where stage records and store entries live, and which entries the runner trusts."""

import threading
import time

import pytest

from runner import dvc
from runner.spec import StageSpec
from runner.workspace import Records, StoreWorkspace, cache_location, store_root
from tlpipe.io import cached_file, read_json, write_json

PRUNE = StageSpec("prune", "python -m tasks.prune", ("data/prepared/source",), {}, ("data/prune", "data/metrics/prune.json"))


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
