"""An output and its DVC cache object as one copy on disk (runner/links.py), on files the tests write."""

import errno
import stat

import pytest

from runner import dvc, links

HARDLINK = ["reflink", "hardlink", "symlink"]  # the project's .dvc/config; reflink is refused on ext4/tmpfs


def read_only(path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o222 == 0


def test_a_new_output_becomes_its_cache_object_without_moving(tmp_path):
    out, obj = tmp_path / "data" / "a.bin", tmp_path / "cache" / "ab" / "cdef"
    out.parent.mkdir()
    out.write_bytes(b"x" * 5000)
    inode = out.stat().st_ino
    assert links.share({out: obj}, HARDLINK) == 1
    assert out.stat().st_ino == inode and out.samefile(obj) and out.stat().st_nlink == 2
    assert read_only(obj) and read_only(out)  # one inode: the output is protected as the object is
    assert links.share({out: obj}, HARDLINK) == 1 and out.stat().st_nlink == 2  # again: nothing changes


def test_an_output_whose_bytes_the_cache_holds_is_swapped_for_a_link(tmp_path):
    out, obj = tmp_path / "a.bin", tmp_path / "cache" / "obj"
    obj.parent.mkdir()
    obj.write_bytes(b"same bytes")
    out.write_bytes(b"same bytes")
    assert not out.samefile(obj)
    assert links.share({out: obj}, HARDLINK) == 1
    assert out.samefile(obj) and out.read_bytes() == b"same bytes"
    assert sorted(p.name for p in obj.parent.iterdir()) == ["obj"]  # no temporary left beside it


def test_copy_only_shares_nothing_and_restores_by_copy(tmp_path):
    out, obj = tmp_path / "a.bin", tmp_path / "obj"
    out.write_bytes(b"abc")
    assert links.share({out: obj}, ["copy"]) == 0 and not obj.exists()
    links.place(out, obj, ["copy"])
    assert obj.read_bytes() == b"abc" and not obj.samefile(out)
    restored = tmp_path / "restored"
    links.place(out, restored, HARDLINK)
    assert restored.samefile(out)


def test_a_link_type_the_file_system_refuses_falls_through_to_the_next(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"abc")

    def refused(a, b):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setitem(links.MAKERS, "reflink", refused)
    assert links.link(src, dst, HARDLINK) == "hardlink" and dst.samefile(src)


def test_other_errors_are_not_taken_for_an_unsupported_link(tmp_path):
    with pytest.raises(FileNotFoundError):
        links.link(tmp_path / "missing", tmp_path / "dst", ["hardlink"])


def test_the_project_config_names_link_types(tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    assert links.cache_types(repo) == ["reflink", "hardlink", "symlink"]
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    assert links.cache_types(tmp_path) == ["copy"]
    (tmp_path / ".dvc" / "config").write_text('[cache]\n    type = "hardlink"\n    dir = /elsewhere\n')
    assert links.cache_types(tmp_path) == ["copy"]  # DVC places the objects in a cache of its own


def test_linking_after_hashing_reads_each_file_once(tmp_path, monkeypatch):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text('[cache]\n    type = "reflink,hardlink,symlink"\n')
    out = tmp_path / "data" / "o"
    out.mkdir(parents=True)
    (out / "x").write_bytes(b"one")
    dvc.md5_path(out)  # as the runner hashes a stage's outputs
    hashed = []
    real = dvc._md5_file
    monkeypatch.setattr(dvc, "_md5_file", lambda path: hashed.append(path) or real(path))
    assert dvc.share_with_cache(tmp_path, ["data/o"]) == 1
    assert hashed == []
    monkeypatch.undo()
    assert (out / "x").samefile(dvc.cache_object(tmp_path, dvc.md5_path(out / "x")))
