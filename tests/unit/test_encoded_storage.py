"""Encoded storage: prepared splits that hold image files' bytes, read by every stage as the pixels it
would read from raw storage."""

import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlpipe.data import decoded, encoding, external, images, recipes, shards, splits, storage
from tlpipe.training.checkpoints import Checkpoint
from tlpipe.training.loops import train_classifier
from tlpipe.training.models import Classifier, build_backbone
from tlpipe.training.runtime import Loader, iter_batches

CPU = torch.device("cpu")


def jpeg_folder(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 47), seed: int = 0) -> Path:
    """Class folders of JPEG files (quality 90): a colour field per class with grain."""
    rng = np.random.default_rng(seed)
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            base = np.array([60 * k + 40, 200 - 50 * k, 120])
            pixels = np.clip(base + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg", "JPEG", quality=90)
    return root


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stored_bytes(ds) -> list[bytes]:
    column = decoded.EncodedColumn([f["filename"] for f in ds.cache_files], storage.IMAGE)
    return [column[i] for i in range(len(column))]


def test_auto_storage_keeps_raw_pixels_up_to_64_px_and_encodes_above():
    assert storage.Layout.chosen("auto", channels=1, image_size=32).storage == "raw"
    assert storage.Layout.chosen("auto", channels=3, image_size=64).storage == "raw"
    assert storage.Layout.chosen("auto", channels=3, image_size=224).storage == "encoded"
    assert storage.Layout.chosen("raw", channels=3, image_size=224).storage == "raw"
    with pytest.raises(ValueError, match="storage='jpeg'"):
        storage.Layout.chosen("jpeg", channels=3, image_size=224)
    with pytest.raises(ValueError, match="quality=0"):
        storage.Layout.chosen("encoded", channels=3, image_size=224, quality=0)


def test_a_folder_of_small_enough_jpegs_is_stored_byte_for_byte_in_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROWS_PER_UNIT", 7)  # several units from a small folder
    folder = jpeg_folder(tmp_path / "pets", {"cat": 11, "dog": 9, "emu": 5})
    source = shards.Outside(str(folder), "train", "image", "label", image_size=40, channels=3, storage="encoded")
    one = shards.prepare_source(source, tmp_path / "one", val_fraction=0.2, seed=0, workers=1)
    two = shards.prepare_source(source, tmp_path / "two", val_fraction=0.2, seed=0, workers=2)
    assert one == two and md5s(tmp_path / "one") == md5s(tmp_path / "two")
    written = storage.load_prepared(tmp_path / "one")
    assert storage.layout_of(written["train"]) == storage.Layout("encoded", 3, 40)
    files = {p.read_bytes() for p in folder.rglob("*.jpg")}
    kept = stored_bytes(written["train"]) + stored_bytes(written["val"])
    assert len(kept) == 25 and set(kept) == files  # every file's own bytes, each once (40 <= 46, the stored side)
    folder_bytes = sum(len(b) for b in files)
    prepared_bytes = sum(p.stat().st_size for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert prepared_bytes <= 1.3 * folder_bytes + 16_000  # the files, the labels and the metadata files


def test_encoded_rows_read_as_the_pil_pixels_in_evaluations_geometry(tmp_path):
    folder = jpeg_folder(tmp_path / "pets", {"cat": 4, "dog": 4}, size=(120, 90))
    layout = storage.Layout("encoded", 3, 48, quality=85)
    ds = external.load_image_dataset(str(folder), layout=layout)
    stored = stored_bytes(ds) if ds.cache_files else [ds.data.table.column("image")[i].as_py()["bytes"] for i in range(len(ds))]
    with Image.open(io.BytesIO(stored[0])) as image:
        assert min(image.size) == encoding.stored_side(48) == 55 and image.format == "JPEG"  # resized once, re-encoded
    pixels, labels = storage.to_arrays(ds)
    assert pixels.shape == (8, 3, 48, 48) and pixels.dtype == np.uint8 and list(labels) == [0] * 4 + [1] * 4
    for row in (0, 5):
        with Image.open(io.BytesIO(stored[row])) as image:
            pil = torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())
        assert np.array_equal(pixels[row], recipes.centre_view(48)(pil).numpy())
    grey = external.load_image_dataset(str(folder), layout=storage.Layout("encoded", 1, 48))
    assert storage.to_arrays(grey)[0].shape == (8, 1, 48, 48)


def test_an_encoded_target_saves_byte_identical_and_reads_back(tmp_path):
    layout = storage.Layout("encoded", 1, 80)
    split = splits.split_target(storage.load_digits_dataset(layout=layout), shots_per_class=2, test_fraction=0.3, seed=0)
    storage.save_prepared(split, tmp_path / "a")
    storage.save_prepared(splits.split_target(storage.load_digits_dataset(layout=layout), shots_per_class=2,
                                              test_fraction=0.3, seed=0), tmp_path / "b")
    assert md5s(tmp_path / "a") == md5s(tmp_path / "b")
    back = storage.load_prepared(tmp_path / "a")
    assert storage.layout_of(back["test"]) == layout
    pixels, labels = storage.to_arrays(back["train"])
    assert pixels.shape == (20, 1, 80, 80) and sorted(labels) == sorted(list(range(10)) * 2)
    at_91 = storage.to_arrays(splits.split_target(storage.load_digits_dataset(image_size=91), shots_per_class=2,
                                                  test_fraction=0.3, seed=0)["train"])[0]
    crop = recipes.centre_view(80)(torch.from_numpy(at_91)).numpy()  # stored at 91 px, read as its centre 80
    assert np.abs(pixels.astype(int) - crop.astype(int)).mean() < 2  # JPEG q90 of the same digits (measured 0.44, max 4 levels)


def test_an_encoded_set_reads_by_index_pickles_and_hashes_its_geometry(tmp_path):
    glyphs = shards.Glyphs("ascii", 3, 0, 72, 0.5, storage="encoded")
    shards.prepare_source(glyphs, tmp_path / "s", val_fraction=0.0, seed=0, workers=1)
    split = storage.load_prepared(tmp_path / "s")["train"]
    read, labels = images.read(split)
    assert read.shape == (282, 1, 72, 72) and list(labels[:4]) == [0, 0, 0, 1]
    view = read.select([5, 2, 9])
    assert np.array_equal(view[:], read[[5, 2, 9]])
    assert np.array_equal(pickle.loads(pickle.dumps(view))[:], view[:])  # as a loader worker reads it
    raw = shards.Glyphs("ascii", 3, 0, 82, 0.5, storage="raw")  # rendered at the side encoded glyphs are stored at
    shards.prepare_source(raw, tmp_path / "r", val_fraction=0.0, seed=0, workers=1)
    raw_read = images.read(storage.load_prepared(tmp_path / "r")["train"])[0]
    crop = recipes.centre_view(72)(torch.from_numpy(raw_read[:])).numpy()
    assert np.abs(read[:].astype(int) - crop.astype(int)).mean() < 2  # the same glyphs as JPEG q90 (measured 0.64)
    assert images.digest(read) != images.digest(raw_read) and images.digest(view) != images.digest(read)
    assert images.digest(read) == images.digest(images.read(storage.load_prepared(tmp_path / "s")["train"])[0])


def test_a_corrupt_jpeg_in_an_encoded_source_is_named_and_nothing_is_left(tmp_path):
    folder = jpeg_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    (folder / "dog" / "1.jpg").write_bytes((folder / "dog" / "1.jpg").read_bytes()[:40])  # truncated
    source = shards.Outside(str(folder), "train", "image", "label", image_size=96, channels=3, storage="encoded")
    with pytest.raises(ValueError, match=r"dog/1.jpg does not decode"):
        shards.prepare_source(source, tmp_path / "out", val_fraction=0.0, seed=0, workers=1)
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(ValueError, match=r"dog/1.jpg does not decode"):
        external.load_image_dataset(str(folder), layout=storage.Layout("encoded", 3, 96))


def encoded_split(tmp_path, n_per_class: int = 12):
    folder = jpeg_folder(tmp_path / "photos", {"a": n_per_class, "b": n_per_class, "c": n_per_class}, size=(30, 26))
    source = shards.Outside(str(folder), "train", "image", "label", image_size=24, channels=3, storage="encoded")
    shards.prepare_source(source, tmp_path / "prepared", val_fraction=0.0, seed=0, workers=1)
    return images.read(storage.load_prepared(tmp_path / "prepared")["train"])


@pytest.mark.parametrize("augment", [None, recipes.crop_flip(24)])
def test_batches_of_encoded_images_are_the_same_for_any_number_of_loader_workers(tmp_path, augment):
    read, labels = encoded_split(tmp_path)

    def epoch(workers: int, generator: torch.Generator, loader=None) -> list:
        return [(x.clone(), y.clone()) for x, y in iter_batches(read, labels, batch_size=9, device=CPU, workers=workers,
                                                                 generator=generator, augment=augment, loader=loader)]

    def same(a: list, b: list) -> bool:
        return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))

    runs = [epoch(workers, torch.Generator().manual_seed(4)) for workers in (0, 2)]
    assert len(runs[0]) == 4 and same(*runs)
    kept, alone = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with Loader() as loader:  # the same workers for two epochs
        assert same(epoch(2, kept, loader), epoch(0, alone)) and same(epoch(2, kept, loader), epoch(0, alone))
    generator = torch.Generator().manual_seed(4)
    first, second = epoch(0, generator), epoch(0, generator)
    sums = [torch.cat([x for x, _ in run]).sum(0) for run in (first, second)]  # every image once an epoch
    assert not torch.equal(first[0][1], second[0][1])  # in another order
    if augment is None:  # the centre view
        assert torch.allclose(*sums, atol=1e-4)
    else:  # each epoch draws its own crops
        assert not torch.allclose(*sums, atol=1e-1)


def test_an_augmented_set_crops_the_decoded_photo_and_leaves_the_callers_generator(tmp_path):
    read, _ = encoded_split(tmp_path)
    transform = recipes.crop_flip(24)
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    batch = read.augmented(transform, salt=5)[[3, 1]]
    assert torch.equal(torch.rand(3), before)  # the caller's stream is untouched
    with Image.open(io.BytesIO(stored_bytes(storage.load_prepared(tmp_path / "prepared")["train"])[3])) as image:
        photo = torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())  # 30x26, kept as it is
    expected = decoded.augment(photo, transform, 5, 3)
    assert batch.shape == (2, 3, 24, 24) and np.array_equal(batch[0], expected.numpy())
    assert np.array_equal(read.augmented(transform, 5).select([1, 3])[:][::-1], batch)  # a row's draws follow it
    assert read.encoded
    with pytest.raises(ValueError, match="augmentation gave"):
        read.augmented(recipes.crop_flip(16), 0)[[0]]


def test_raw_pixels_augment_too_and_arrays_are_refused(tmp_path):
    glyphs = shards.Glyphs("ascii", 2, 0, 16, 0.5, storage="raw")
    shards.prepare_source(glyphs, tmp_path / "r", val_fraction=0.0, seed=0, workers=1)
    read, labels = images.read(storage.load_prepared(tmp_path / "r")["train"])
    assert not read.encoded
    augmented = read.augmented(recipes.crop_flip(16), 3)
    assert augmented[[0, 1]].shape == (2, 1, 16, 16) and np.array_equal(augmented[[0, 1]], augmented[[0, 1]])
    assert recipes.training_augmentation("auto", 16, encoded=False) is None
    assert recipes.training_augmentation("auto", 16, encoded=True) is not None
    with pytest.raises(ValueError, match="not an array"):
        next(iter_batches(read[:], labels, batch_size=4, device=CPU, augment=recipes.crop_flip(16)))


class Crash(Exception):
    pass


class Failing:
    """An image set that reads through another and fails on its `fail_at`-th read (of any view of it)."""

    def __init__(self, inner, fail_at=None, counter=None):
        self.inner, self.fail_at = inner, fail_at
        self.counter = counter if counter is not None else [0]
        self.shape, self.dtype, self.ndim = inner.shape, inner.dtype, inner.ndim

    @property
    def reads(self):
        return self.counter[0]

    def __len__(self):
        return len(self.inner)

    def augmented(self, transform, salt):
        return Failing(self.inner.augmented(transform, salt), self.fail_at, self.counter)

    def __getitem__(self, index):
        self.counter[0] += 1
        if self.counter[0] == self.fail_at:
            raise Crash(f"read {self.counter[0]}")
        return self.inner[index]


@pytest.mark.parametrize("augment", [None, recipes.crop_flip(24)])
def test_a_crashed_classifier_on_encoded_images_resumes_to_the_uninterrupted_weights(tmp_path, augment):
    read, labels = encoded_split(tmp_path)

    def fit(data, checkpoint=None):
        torch.manual_seed(7)
        model = Classifier(build_backbone(in_channels=3, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1]), 3)
        metrics = train_classifier(model, data, labels, epochs=2, batch_size=8, lr=1e-2, weight_decay=0.01, seed=3,
                                   device=CPU, checkpoint=checkpoint, augment=augment)
        return model.state_dict(), metrics

    expected, expected_metrics = fit(Failing(read))
    with pytest.raises(Crash):  # in the second epoch, 4 batches an epoch
        fit(Failing(read, fail_at=7), Checkpoint(tmp_path / "ck", every_minutes=0.0))
    resumed = Failing(read)
    got, metrics = fit(resumed, Checkpoint(tmp_path / "ck", every_minutes=0.0))
    assert (metrics["resumed_from_epoch"], metrics["resumed_from_batch"]) == (2, 2)
    assert resumed.reads == 2  # only the batches after the checkpoint are decoded again
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert metrics["train_loss"] == expected_metrics["train_loss"]


def test_colour_glyphs_are_the_grey_glyphs_on_textured_backgrounds(tmp_path):
    colour = shards.Glyphs("ascii", 4, 0, 72, 0.0, storage="encoded", channels=3)
    assert colour.layout == storage.Layout("encoded", 3, 72)
    shards.prepare_source(colour, tmp_path / "a", val_fraction=0.0, seed=0, workers=1)
    shards.prepare_source(colour, tmp_path / "b", val_fraction=0.0, seed=0, workers=2)
    assert md5s(tmp_path / "a") == md5s(tmp_path / "b")
    read, labels = images.read(storage.load_prepared(tmp_path / "a")["train"])
    assert read.shape == (376, 3, 72, 72) and list(labels[:5]) == [0, 0, 0, 0, 1]
    pixels = read[:].astype(np.float32)
    assert (pixels.std(axis=(2, 3)) > 5).all()  # a texture, not a flat field
    assert np.abs(pixels[:, 0] - pixels[:, 1]).mean() > 10  # in colour
    grey = shards.Glyphs("ascii", 4, 0, 72, 0.0, storage="encoded")
    ink = grey.rows(0, 4)[0]
    shape = [np.asarray(Image.open(io.BytesIO(data))) > 128 for data in ink]  # where the grey glyph's ink is
    photos = [np.asarray(Image.open(io.BytesIO(data))).astype(np.float32) for data in colour.rows(0, 4)[0]]
    luma = [p @ np.array([0.299, 0.587, 0.114], dtype=np.float32) for p in photos]
    # the colour glyph's ink is where the grey one's is, its luma far from the background's
    assert all(abs(l[m].mean() - l[~m].mean()) > 40 for l, m in zip(luma, shape))


def test_the_digits_in_rgb_for_a_colour_source():
    raw = storage.load_digits_dataset(layout=storage.Layout("raw", 3, 32))
    assert raw.features["pixels"].shape == (3, 32, 32)
    pixels = storage.to_arrays(raw)[0]
    assert np.array_equal(pixels[:, 0], pixels[:, 2]) and np.array_equal(pixels[:, :1], storage.to_arrays(
        storage.load_digits_dataset(image_size=32))[0])
