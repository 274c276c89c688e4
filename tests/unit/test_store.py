import threading
import time

import pytest

from tasks import store, versioning
from tlpipe.io import write_json


def make_entry(project, stage="prune", key="k1"):
    found = store.entry(project, stage, key)
    found.out.mkdir(parents=True)
    (found.out / "selection.json").write_text('{"kept": [1, 2]}')
    found.metrics.write_text('{"kept_classes": 2}')
    outs = {"data/prune": versioning.md5_path(found.out), "data/metrics/prune.json": versioning.md5_path(found.metrics)}
    write_json(found.manifest_file, {"stage": stage, "outs": outs, "metrics": {"kept_classes": 2}})
    return found


def test_store_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    assert store.store_root(tmp_path) == (tmp_path / ".tlpipe" / "store").resolve()
    monkeypatch.setenv("TLPIPE_STORE_DIR", str(tmp_path / "shared"))
    assert store.store_root(tmp_path / "elsewhere") == (tmp_path / "shared").resolve()


def test_lookup_trusts_only_intact_entries(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    found = make_entry(tmp_path)
    assert store.lookup(found)["metrics"] == {"kept_classes": 2}
    (found.out / "selection.json").write_text('{"kept": [1]}')  # altered after it was written
    assert store.lookup(found) is None
    assert store.lookup(store.entry(tmp_path, "prune", "never-written")) is None


def test_workspace_links_upstream_entries_and_is_removed(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    found = make_entry(tmp_path)
    with store.workspace(tmp_path, {"prune": found}) as scratch:
        assert (scratch / "data" / "prune" / "selection.json").read_text() == '{"kept": [1, 2]}'
        assert (scratch / "data" / "metrics" / "prune.json").is_symlink()
    assert not scratch.exists()
    assert (found.out / "selection.json").exists()  # removing the workspace leaves the entry alone


def test_cached_json_computes_once_even_when_asked_concurrently(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return {"probe_1shot": 0.5}

    results = []
    threads = [threading.Thread(target=lambda: results.append(store.cached_json(tmp_path, "probe", "abc", compute)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(how for _, how in results) == [store.CACHED, store.CACHED, store.RAN]
    assert all(record == {"probe_1shot": 0.5} for record, _ in results)


def test_a_failed_computation_leaves_no_record(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.cached_json(tmp_path, "probe", "abc", broken)
    record, how = store.cached_json(tmp_path, "probe", "abc", lambda: {"ok": 1})
    assert how == store.RAN and record == {"ok": 1}


def test_stale_workspaces_of_dead_processes_are_removed(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    monkeypatch.delenv("TLPIPE_STORE_DIR", raising=False)
    work = store.store_root(tmp_path).parent / "work"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owners = {"killed": f"{socket.gethostname()} {dead.stdout.strip()}",  # its process has exited
              "other-host": f"elsewhere.invalid {dead.stdout.strip()}",  # shared storage: not ours to judge
              "no-owner": None}
    for name, owner in owners.items():
        (work / name / "data").mkdir(parents=True)
        if owner:
            (work / name / store.OWNER_FILE).write_text(owner)
    with store.workspace(tmp_path, {}) as live:  # this process: alive
        removed = store.remove_stale_workspaces(tmp_path)
        assert live.exists()
    assert [p.name for p in removed] == ["killed"]
    assert sorted(p.name for p in work.iterdir()) == ["no-owner", "other-host"]
