"""Prepared datasets: built-in glyphs and digits, loading other datasets, splits, saving."""

import hashlib
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from tlpipe.data import external, splits, storage

REPO_ROOT = Path(__file__).resolve().parents[2]

datasets.disable_progress_bars()


def _toy(counts, image_size=8, channels=1):
    """A prepared dataset with counts[c] rows of class c; every pixel of row i equals i % 256."""
    labels = np.repeat(np.arange(len(counts)), counts)
    pixels = np.broadcast_to(
        (np.arange(len(labels)) % 256).astype(np.uint8)[:, None, None, None],
        (len(labels), channels, image_size, image_size),
    )
    features = storage.prepared_features(
        [f"c{c}" for c in range(len(counts))], channels=channels, image_size=image_size
    )
    return datasets.Dataset.from_dict({"pixels": pixels, "label": labels}, features=features)


def _rows(ds):
    pixels, _ = storage.to_arrays(ds)
    return set(pixels[:, 0, 0, 0].tolist())


def _md5s(folder):
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*")) if p.is_file()
    }  # fmt: skip


@pytest.fixture(scope="module")
def glyph_ds():
    return storage.render_glyphs(charset="ascii", images_per_class=3, seed=0)


def test_glyphs_prepared_format(glyph_ds):
    features = glyph_ds.features
    assert features["pixels"] == datasets.Array3D(shape=(1, 32, 32), dtype="uint8")
    assert features["label"].names == storage.glyph_charset("ascii")
    assert features["font"] == datasets.Value("string")
    pixels, labels = storage.to_arrays(glyph_ds)
    assert pixels.shape == (94 * 3, 1, 32, 32) and pixels.dtype == np.uint8
    assert np.array_equal(labels, np.repeat(np.arange(94), 3))  # class by class


def test_glyphs_are_seeded_and_reproducible(glyph_ds):
    again = storage.render_glyphs(charset="ascii", images_per_class=3, seed=0)
    other = storage.render_glyphs(charset="ascii", images_per_class=3, seed=1)
    assert storage.to_arrays(again)[0].tobytes() == storage.to_arrays(glyph_ds)[0].tobytes()
    assert again["font"][:] == glyph_ds["font"][:]
    assert storage.to_arrays(other)[0].tobytes() != storage.to_arrays(glyph_ds)[0].tobytes()


def test_glyphs_white_on_black(glyph_ds):
    pixels = storage.to_arrays(glyph_ds)[0][:, 0].astype(float)
    assert pixels[:, 0].mean() < 20 and pixels[:, :, 0].mean() < 20  # border
    assert np.median(pixels.max(axis=(1, 2))) > 128


def test_extended_glyphs_small_size():
    ds = storage.render_glyphs(charset="extended", images_per_class=1, seed=3, image_size=16)
    assert len(ds) == len(storage.glyph_charset("extended"))
    assert ds.features["label"].int2str(200) == storage.glyph_charset("extended")[200]
    assert storage.to_arrays(ds)[0].shape[1:] == (1, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"charset": "latin"}, "valid charsets: ascii, extended"),
        ({"images_per_class": 0}, "images_per_class"),
        ({"seed": -1}, "seed"),
        ({"degrade_fraction": 1.5}, "degrade_fraction"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_render_glyphs_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        storage.render_glyphs(**{"charset": "ascii", "images_per_class": 2, "seed": 0, **kwargs})


@pytest.mark.parametrize("image_size", [8, 32])
def test_digits(image_size):
    ds = storage.load_digits_dataset(image_size=image_size)
    pixels, labels = storage.to_arrays(ds)
    assert pixels.shape == (1797, 1, image_size, image_size)
    assert ds.features["label"].names == [str(d) for d in range(10)]
    assert set(labels.tolist()) == set(range(10))
    assert pixels.max() == 255 and pixels[:, :, :, 0].mean() < 20  # ink is white; left edge empty


def test_digits_at_8px_are_the_raw_levels():
    from sklearn.datasets import load_digits

    pixels = storage.to_arrays(storage.load_digits_dataset(image_size=8))[0][:, 0]
    assert np.array_equal(pixels, np.rint(load_digits().images * 255 / 16).astype(np.uint8))


def _write_pngs(root, classes=("cat", "dog"), per_class=3, size=20):
    """imagefolder layout; class k's images are flat gray at 40 + 100 * k, in RGB."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size + i), (40 + 100 * k,) * 3).save(root / name / f"{i}.png")


def _pil_dataset(labels):
    images = [Image.new("L", (12, 12), 10 * i) for i in range(len(labels))]
    features = datasets.Features({"img": datasets.Image(), "digit": datasets.Value("int64")})
    if isinstance(labels[0], str):
        features["digit"] = datasets.Value("string")
    return datasets.Dataset.from_dict({"img": images, "digit": labels}, features=features)


def test_load_imagefolder(tmp_path):
    _write_pngs(tmp_path / "pets")
    ds = external.load_image_dataset(str(tmp_path / "pets"), image_size=16)
    pixels, labels = storage.to_arrays(ds)
    assert ds.features["label"].names == ["cat", "dog"]
    assert pixels.shape == (6, 1, 16, 16)
    for label, value in ((0, 40), (1, 140)):
        assert np.all(pixels[labels == label] == value)


def test_load_imagefolder_rgb(tmp_path):
    _write_pngs(tmp_path / "pets", per_class=1)
    pixels, _ = storage.to_arrays(external.load_image_dataset(str(tmp_path / "pets"), channels=3))
    assert pixels.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("as_dict", [True, False])
def test_load_save_to_disk_folder_keeps_classlabel(tmp_path, as_dict):
    raw = _pil_dataset([1, 0, 1, 2]).cast_column(
        "digit", datasets.ClassLabel(names=["x", "y", "z"])
    )
    saved = datasets.DatasetDict(train=raw, test=raw.select([0])) if as_dict else raw
    saved.save_to_disk(str(tmp_path / "saved"))
    ds = external.load_image_dataset(
        str(tmp_path / "saved"), split="test" if as_dict else "train", image_column="img",
        label_column="digit", image_size=8,
    )  # fmt: skip
    assert ds.features["label"].names == ["x", "y", "z"]
    assert storage.to_arrays(ds)[1].tolist() == ([1] if as_dict else [1, 0, 1, 2])


@pytest.mark.parametrize(
    ("labels", "names", "ids"),
    [
        ([7, 3, 7, 11], ["3", "7", "11"], [1, 0, 1, 2]),
        (["b", "a", "b", "c"], ["a", "b", "c"], [1, 0, 1, 2]),
    ],
)
@pytest.mark.parametrize("as_folder", [False, True])
def test_load_parquet_with_custom_columns(tmp_path, labels, names, ids, as_folder):
    (tmp_path / "pq").mkdir()
    _pil_dataset(labels).to_parquet(str(tmp_path / "pq" / "part.parquet"))
    name = tmp_path / "pq" if as_folder else tmp_path / "pq" / "part.parquet"
    ds = external.load_image_dataset(str(name), image_column="img", label_column="digit", image_size=8)
    pixels, got = storage.to_arrays(ds)
    assert ds.features["label"].names == names and got.tolist() == ids
    assert pixels[:, 0, 0, 0].tolist() == [0, 10, 20, 30]


@pytest.fixture
def saved_dir(tmp_path):
    datasets.DatasetDict(train=_pil_dataset([0, 1])).save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_column": "picture"}, r"image_column='picture' not in .*columns: img, digit"),
        ({"label_column": "y"}, r"label_column='y' not in .*columns: img, digit"),
        ({"split": "validation"}, r"split='validation' not in .*available: train"),
        ({"channels": 2}, r"channels=2 .*valid: 1 \(grayscale\), 3 \(RGB\)"),
        ({"image_size": 7}, r"image_size=7 .*>= 8"),
    ],
)
def test_load_image_dataset_errors(saved_dir, kwargs, match):
    args = {"image_column": "img", "label_column": "digit", **kwargs}
    with pytest.raises(ValueError, match=match):
        external.load_image_dataset(saved_dir, **args)


@pytest.mark.parametrize(
    "name", ["./no/such/dir", "/no/such/dir", "~/no-such-dir-tlpipe", "data.parquet"]
)
def test_missing_path_is_reported_as_a_path(name):
    with pytest.raises(ValueError, match="does not exist"):
        external.load_image_dataset(name)


def test_partially_existing_path_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    with pytest.raises(ValueError, match="dataset path 'local/missing' does not exist"):
        external.load_image_dataset("local/missing")


def test_unknown_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ValueError, match="not a local path and could not be loaded from the Hugging Face hub"
    ):
        external.load_image_dataset("tlpipe-nobody/no-such-dataset")


@pytest.mark.parametrize(
    ("counts", "val_fraction"), [([10, 10, 10], 0.2), ([3, 7, 40], 0.1), ([2, 5], 0.5)]
)
def test_split_source_is_stratified(counts, val_fraction):
    ds = _toy(counts)
    split = splits.split_source(ds, val_fraction=val_fraction, seed=0)
    train_labels, val_labels = storage.to_arrays(split["train"])[1], storage.to_arrays(split["val"])[1]
    for c, n in enumerate(counts):
        n_val = (val_labels == c).sum()
        assert 1 <= n_val <= max(1, round(val_fraction * n))
        assert n_val + (train_labels == c).sum() == n
    assert _rows(split["train"]).isdisjoint(_rows(split["val"]))
    again = splits.split_source(ds, val_fraction=val_fraction, seed=0)
    other = splits.split_source(ds, val_fraction=val_fraction, seed=1)
    assert _rows(again["val"]) == _rows(split["val"]) != _rows(other["val"])


def test_split_source_without_val():
    split = splits.split_source(_toy([4, 4]), val_fraction=0.0, seed=0)
    assert (len(split["train"]), len(split["val"])) == (8, 0)
    with pytest.raises(ValueError, match="val_fraction"):
        splits.split_source(_toy([4, 4]), val_fraction=1.0, seed=0)


@pytest.mark.parametrize(("shots", "test_fraction"), [(1, 0.3), (5, 0.2), (7, 0.25)])
def test_split_target_sizes(shots, test_fraction):
    counts = [10, 12, 30]
    split = splits.split_target(
        _toy(counts), shots_per_class=shots, test_fraction=test_fraction, seed=0
    )
    assert list(split) == ["train", "unlabeled", "test"]
    labels = {name: storage.to_arrays(part)[1] for name, part in split.items()}
    for c, n in enumerate(counts):
        n_test = (labels["test"] == c).sum()
        assert (labels["train"] == c).sum() == shots
        assert n_test == max(1, round(test_fraction * n))
        assert (labels["unlabeled"] == c).sum() == n - n_test - shots
    rows = [_rows(part) for part in split.values()]
    assert sum(map(len, rows)) == len(set().union(*rows)) == sum(counts)


def test_split_target_uses_given_test():
    test = _toy([2, 2])
    split = splits.split_target(_toy([5, 6]), shots_per_class=5, test_fraction=0.0, seed=0, test=test)
    assert split["test"] is test
    assert (len(split["train"]), len(split["unlabeled"])) == (10, 1)


@pytest.mark.parametrize(
    ("shots", "test_fraction", "match"),
    [
        (8, 0.3, "shots_per_class=8 but class 'c1'"),
        (0, 0.3, "shots_per_class=0 must be >= 1"),
        (1, 0.0, r"test_fraction=0.0 must be in \(0, 1\)"),
        (1, 1.0, r"test_fraction=1.0 must be in \(0, 1\)"),
    ],
)
def test_split_target_errors(shots, test_fraction, match):
    with pytest.raises(ValueError, match=match):
        splits.split_target(
            _toy([20, 10]), shots_per_class=shots, test_fraction=test_fraction, seed=0
        )


def test_split_target_names_the_smallest_pool():
    # 10 images, 3 held out for test: 7 are left for shots.
    with pytest.raises(ValueError) as error:
        splits.split_target(_toy([20, 10]), shots_per_class=50, test_fraction=0.3, seed=0)
    expected = "shots_per_class=50 but class 'c1' has only 7 images in the train pool (max 7)"
    assert str(error.value) == expected


def test_to_arrays_types():
    ds = _toy([2, 3], image_size=9, channels=3)
    pixels, labels = storage.to_arrays(ds.select([4, 0]))
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 3, 9, 9)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]
    empty_pixels, empty_labels = storage.to_arrays(ds.select([]))
    assert empty_pixels.shape == (0, 3, 9, 9) and empty_labels.shape == (0,)


def test_save_and_load_round_trip(tmp_path, glyph_ds):
    split = splits.split_source(glyph_ds, val_fraction=0.34, seed=0)
    storage.save_prepared(split, tmp_path / "prepared")
    loaded = storage.load_prepared(tmp_path / "prepared")
    for name in ("train", "val"):
        assert loaded[name].features == glyph_ds.features
        for got, want in zip(
            storage.to_arrays(loaded[name]), storage.to_arrays(split[name]), strict=True
        ):
            assert np.array_equal(got, want)
    assert loaded["train"]["font"][:] == split["train"]["font"][:]
    storage.save_prepared(datasets.DatasetDict(only=_toy([1]).select([])), tmp_path / "prepared")
    replaced = storage.load_prepared(tmp_path / "prepared")  # an empty split survives the round trip
    assert list(replaced) == ["only"] and storage.to_arrays(replaced["only"])[0].shape == (0, 1, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no leftovers


def test_load_prepared_missing(tmp_path):
    with pytest.raises(ValueError, match="no prepared dataset"):
        storage.load_prepared(tmp_path / "nothing")


def test_save_ignores_history_fingerprints(tmp_path):
    ds = _toy([3, 3])
    for i, fingerprint in enumerate(["aaaa", "bbbb"]):
        renamed = ds.flatten_indices(keep_in_memory=True, new_fingerprint=fingerprint)
        storage.save_prepared(datasets.DatasetDict(train=renamed), tmp_path / f"out{i}")
    assert _md5s(tmp_path / "out0") == _md5s(tmp_path / "out1")


def test_splits_are_tables_of_their_own():
    # An indices mapping would make saving resolve every row on its own (slow for Array3D).
    ds = _toy([4, 5])
    split = splits.split_source(ds, val_fraction=0.5, seed=3)
    assert all(part._indices is None for part in split.values())
    rows = sorted(int(p[0, 0, 0]) for p in storage.to_arrays(split["val"])[0])  # pixel value = source row
    want = ds.select(rows)
    for got, expected in zip(storage.to_arrays(split["val"]), storage.to_arrays(want), strict=True):
        assert np.array_equal(got, expected)


def test_saved_bytes_follow_class_names(tmp_path):
    ds = _toy([2, 2])
    renamed = ds.cast_column("label", datasets.ClassLabel(names=["x", "y"]))
    storage.save_prepared(datasets.DatasetDict(train=ds), tmp_path / "a")
    storage.save_prepared(datasets.DatasetDict(train=renamed), tmp_path / "b")
    assert _md5s(tmp_path / "a")["train/state.json"] != _md5s(tmp_path / "b")["train/state.json"]
    assert storage.load_prepared(tmp_path / "b")["train"].features["label"].names == ["x", "y"]


def build_and_save(path):
    """The prepare stage in small; run here and in a second interpreter."""
    glyphs = storage.render_glyphs(charset="ascii", images_per_class=4, seed=0, image_size=16)
    source = splits.split_source(glyphs, val_fraction=0.25, seed=0)
    target = splits.split_target(source["train"], shots_per_class=1, test_fraction=0.5, seed=0)
    storage.save_prepared(datasets.DatasetDict({**source, **target}), path)


@pytest.mark.slow  # a second interpreter imports torch and datasets (~4 s)
def test_saves_are_byte_identical_across_processes(tmp_path):
    # The content hash of a dataset version must not depend on the process that wrote it.
    code = (
        "import sys; from tests.unit.test_data import build_and_save; build_and_save(sys.argv[1])"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "other")], cwd=REPO_ROOT)
    build_and_save(tmp_path / "here")
    assert other.wait(timeout=120) == 0
    here = _md5s(tmp_path / "here")
    assert len(here) == 13 and here == _md5s(tmp_path / "other")  # dataset_dict.json + 4 splits x 3
