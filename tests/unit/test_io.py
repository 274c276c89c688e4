import pytest

from tlpipe import io


def test_staged_outputs_replace_only_on_success(tmp_path):
    final_dir, final_file = tmp_path / "out", tmp_path / "metrics" / "m.json"
    final_dir.mkdir()
    (final_dir / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with io.staged_outputs(final_dir, final_file) as (tmp_dir, tmp_file):
            tmp_dir.mkdir()
            (tmp_dir / "new.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert (final_dir / "old.txt").read_text() == "old"  # untouched
    assert not final_file.exists()
    assert io.stale_temporaries(tmp_path) == []  # temporaries removed

    with io.staged_outputs(final_dir, final_file) as (tmp_dir, tmp_file):
        tmp_dir.mkdir()
        (tmp_dir / "new.txt").write_text("new")
        io.write_json(tmp_file, {"a": 1})
    assert sorted(p.name for p in final_dir.iterdir()) == ["new.txt"]
    assert io.read_json(final_file) == {"a": 1}
    assert io.stale_temporaries(tmp_path) == []


def test_staged_outputs_require_every_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not write its outputs"):
        with io.staged_outputs(tmp_path / "a", tmp_path / "b") as (a, b):
            a.write_text("only one")
    assert not (tmp_path / "a").exists()


def test_json_is_deterministic_and_plain(tmp_path):
    import numpy as np

    data = {"b": np.float32(0.5), "a": [np.int64(3), float("nan")], "c": np.arange(2)}
    io.write_json(tmp_path / "x.json", data)
    first = (tmp_path / "x.json").read_bytes()
    io.write_json(tmp_path / "x.json", dict(reversed(list(data.items()))))
    assert (tmp_path / "x.json").read_bytes() == first
    assert io.read_json(tmp_path / "x.json") == {"a": [3, None], "b": 0.5, "c": [0, 1]}


def test_locked_calls_on_wait_only_when_another_holder_has_the_lock(tmp_path):
    import threading

    from tlpipe.io import locked

    waits = []
    with locked(tmp_path / "l", on_wait=lambda: waits.append("first")):
        entered = threading.Event()

        def second():
            with locked(tmp_path / "l", on_wait=lambda: waits.append("second")):
                entered.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.3)  # blocked while the first holds the lock
    thread.join(5)
    assert entered.is_set() and waits == ["second"]


def test_yaml_reads_plain_data_like_safe_load_and_refuses_objects(tmp_path):
    import yaml

    text = "a: 1\nb: [x, 2.5, null]\nc: {d: true}\n"
    assert io.parse_yaml(text) == yaml.safe_load(text) == {"a": 1, "b": ["x", 2.5, None], "c": {"d": True}}
    (tmp_path / "f.yaml").write_text(text, encoding="utf-8")
    assert io.read_yaml(tmp_path / "f.yaml") == yaml.safe_load(text)
    (tmp_path / "empty.yaml").write_text("", encoding="utf-8")
    assert io.read_yaml(tmp_path / "empty.yaml") is None
    with pytest.raises(yaml.YAMLError):
        io.parse_yaml("!!python/object/apply:os.system ['true']")
