"""Content hashes must equal DVC's own, so cache records and dvc.lock agree."""

import json

from dvc_data.hashfile.hash import file_md5

from tasks import versioning


def test_file_hash_matches_dvc(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 1000 + b"\r\n")
    assert versioning.md5_path(path) == file_md5(str(path))


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
    assert versioning.md5_path(tmp_path / "d") == expected


def test_outputs_match_detects_changes(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("1")
    recorded = {"o": versioning.md5_path(tmp_path / "o")}
    assert versioning.outputs_match(tmp_path, recorded)
    (tmp_path / "o" / "x").write_text("2")
    assert not versioning.outputs_match(tmp_path, recorded)
    assert not versioning.outputs_match(tmp_path, {"missing": "0" * 32})
