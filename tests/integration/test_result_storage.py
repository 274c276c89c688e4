"""Where stage records live: a folder, a file:// URL of one, or any fsspec URL through a saved block."""

import pytest
from prefect import flow, task

from flows.pipeline import cache_dir, result_storage

pytestmark = pytest.mark.integration


def test_folders_and_file_urls_are_paths(tmp_path, monkeypatch):
    monkeypatch.delenv("TLPIPE_CACHE_DIR", raising=False)
    assert cache_dir(tmp_path) == (tmp_path / ".tlpipe" / "cache").resolve()
    monkeypatch.setenv("TLPIPE_CACHE_DIR", str(tmp_path / "shared"))
    assert cache_dir(tmp_path / "p") == tmp_path / "shared"
    monkeypatch.setenv("TLPIPE_CACHE_DIR", (tmp_path / "a b").as_uri())
    assert cache_dir(tmp_path / "p") == tmp_path / "a b"


def test_an_fsspec_url_keeps_task_records_in_a_saved_block(prefect_harness, tmp_path, monkeypatch):
    from prefect.filesystems import RemoteFileSystem

    monkeypatch.setenv("TLPIPE_CACHE_DIR", "memory://tlpipe-test/cache")  # in-process, as s3:// would be shared
    storage = result_storage(tmp_path)
    assert isinstance(storage, RemoteFileSystem) and storage._block_document_id is not None
    assert RemoteFileSystem.load(storage._block_document_name).basepath == "memory://tlpipe-test/cache"
    calls = []

    @task(cache_key_fn=lambda *_: "fixed-key", persist_result=True, result_serializer="json")
    def compute() -> dict:
        calls.append(1)
        return {"answer": 42}

    @flow
    def twice() -> list:
        configured = compute.with_options(result_storage=storage)
        return [configured(return_state=True) for _ in range(2)]

    first, second = twice()
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == {"answer": 42} and calls == [1]
    assert storage.read_path("fixed-key")  # the record is in the remote file system
