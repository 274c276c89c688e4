"""The source written in parts by worker processes: the same rows as the split made in memory, and the
same bytes whatever the number of processes."""

import hashlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from tlpipe.data import external, shards, splits, storage

datasets.disable_progress_bars()


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def same_rows(a: datasets.Dataset, b: datasets.Dataset) -> None:
    for x, y in zip(storage.to_arrays(a), storage.to_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_glyphs_in_parts_are_the_split_made_in_memory_whatever_the_processes(tmp_path):
    source = shards.Glyphs(charset="ascii", images_per_class=6, seed=3, image_size=16, degrade_fraction=0.5)
    one = shards.prepare_source(source, tmp_path / "one", val_fraction=0.2, seed=1, workers=1)
    two = shards.prepare_source(source, tmp_path / "two", val_fraction=0.2, seed=1, workers=2)
    assert one == two == {"train": 94 * 5, "val": 94}
    assert md5s(tmp_path / "one") == md5s(tmp_path / "two")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the parts are gone
    in_memory = splits.split_source(storage.render_glyphs(charset="ascii", images_per_class=6, seed=3, image_size=16),
                                    val_fraction=0.2, seed=1)
    written = storage.load_prepared(tmp_path / "one")
    for split in ("train", "val"):
        same_rows(written[split], in_memory[split])
        assert written[split]["font"] == in_memory[split]["font"]


def test_a_split_is_written_in_large_record_batches(tmp_path, monkeypatch):
    """The parts' small record batches are joined (readers map one view per batch); the rows stay."""
    import pyarrow as pa

    source = shards.Glyphs(charset="ascii", images_per_class=6, seed=3, image_size=16, degrade_fraction=0.0)
    shards.prepare_source(source, tmp_path / "small", val_fraction=0.2, seed=1, workers=1)
    monkeypatch.setattr(shards, "RECORD_BATCH_BYTES", 100 * 16 * 16)
    shards.prepare_source(source, tmp_path / "joined", val_fraction=0.2, seed=1, workers=1)
    (train,) = (tmp_path / "joined" / "train").glob("data-*.arrow")
    batches = list(pa.ipc.open_stream(pa.OSFile(str(train))))
    # 94 parts (one a character) of 5 train rows, joined until a batch holds 100 images' bytes
    assert 1 < len(batches) < 94 and all(b.nbytes >= shards.RECORD_BATCH_BYTES for b in batches[:-1])
    assert sum(b.num_rows for b in batches) == 94 * 5
    small, joined = storage.load_prepared(tmp_path / "small"), storage.load_prepared(tmp_path / "joined")
    for split in ("train", "val"):
        same_rows(small[split], joined[split])


def test_no_validation_split_writes_an_empty_one(tmp_path):
    source = shards.Glyphs(charset="ascii", images_per_class=2, seed=0, image_size=8, degrade_fraction=0.0)
    assert shards.prepare_source(source, tmp_path / "s", val_fraction=0.0, seed=0, workers=1) == {"train": 188, "val": 0}
    assert len(storage.load_prepared(tmp_path / "s")["val"]) == 0


def rgb_folder(root: Path, classes: dict[str, int], size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_an_rgb_folder_is_decoded_in_parts_at_64_px(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_UNIT", 7)  # several units from a small folder
    folder = rgb_folder(tmp_path / "pets", {"cat": 11, "dog": 9, "emu": 5})
    source = shards.Outside(str(folder), "train", "image", "label", image_size=64, channels=3)
    assert len(source.units()) == 4
    one = shards.prepare_source(source, tmp_path / "one", val_fraction=0.2, seed=0, workers=1)
    two = shards.prepare_source(source, tmp_path / "two", val_fraction=0.2, seed=0, workers=2)
    assert one == two and md5s(tmp_path / "one") == md5s(tmp_path / "two")
    written = storage.load_prepared(tmp_path / "one")
    assert written["train"].features["pixels"].shape == (3, 64, 64)
    assert written["train"].features["label"].names == ["cat", "dog", "emu"]
    in_memory = splits.split_source(external.load_image_dataset(str(folder), image_size=64, channels=3),
                                    val_fraction=0.2, seed=0)
    for split in ("train", "val"):
        same_rows(written[split], in_memory[split])


def test_an_image_that_does_not_decode_is_named_with_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_UNIT", 4)
    folder = rgb_folder(tmp_path / "pets", {"cat": 5, "dog": 5})
    (folder / "dog" / "3.png").write_bytes(b"not an image")
    source = shards.Outside(str(folder), "train", "image", "label", image_size=16, channels=3)
    with pytest.raises(ValueError, match=r"dog/3.png does not decode"):
        shards.prepare_source(source, tmp_path / "out", val_fraction=0.0, seed=0, workers=1)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*"))  # nothing half-written


def test_arguments_are_checked_before_any_work():
    with pytest.raises(ValueError, match="images_per_class=0"):
        shards.Glyphs(charset="ascii", images_per_class=0, seed=0, image_size=16, degrade_fraction=0.5)
    with pytest.raises(ValueError, match="channels=2"):
        shards.Outside("x", "train", "image", "label", image_size=16, channels=2)
