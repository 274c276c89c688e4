"""Image sets read by index from prepared data on disk: the same pixels as the whole arrays, selections
without copies, and batches in the same order whatever reads them."""

import pickle

import datasets
import numpy as np
import pytest
import torch

from tlpipe.data import images, splits, storage
from tlpipe.training import loops, models, runtime

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared split saved to disk and loaded back memory-mapped, with its arrays for comparison."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(150, 3, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 30)
    folder = tmp_path_factory.mktemp("prepared") / "source"
    storage.save_prepared(datasets.DatasetDict(train=storage.build_dataset(pixels, labels, list("abcde"))), folder)
    return storage.load_prepared(folder)["train"], pixels, labels


def test_reads_the_same_pixels_as_the_whole_array(prepared):
    ds, pixels, labels = prepared
    read, read_labels = images.read(ds)
    assert read.shape == pixels.shape and read.ndim == 4 and len(read) == 150
    np.testing.assert_array_equal(read_labels, labels)
    np.testing.assert_array_equal(read[:], pixels)
    np.testing.assert_array_equal(read[10:20], pixels[10:20])
    np.testing.assert_array_equal(read[::7], pixels[::7])
    index = np.random.default_rng(1).permutation(150)[:37]
    np.testing.assert_array_equal(read[index], pixels[index])
    np.testing.assert_array_equal(read[np.array([-1])], pixels[[-1]])
    assert read[np.array([], dtype=np.int64)].shape == (0, 3, 8, 8)


def test_a_selection_is_a_view_of_rows_and_composes(prepared):
    ds, pixels, labels = prepared
    read = images.Images.of(ds)
    kept = np.array([5, 140, 7, 7, 60])
    view = read.select(kept)
    assert view._pixels is read._pixels  # the same mapped files: nothing was copied
    np.testing.assert_array_equal(view[:], pixels[kept])
    np.testing.assert_array_equal(view.labels, labels[kept])
    np.testing.assert_array_equal(view.select([4, 0])[:], pixels[kept[[4, 0]]])
    np.testing.assert_array_equal(images.subset(pixels, kept), pixels[kept])  # an array: a copy of the rows
    assert images.Images.of(ds.select(kept)).select([1])[:].tolist() == pixels[[140]].tolist()  # datasets' mapping


def test_the_pruned_split_keeps_views(prepared):
    ds, pixels, labels = prepared
    read = images.read(ds)
    kept = np.flatnonzero(labels != 2)[::3]
    (train, train_labels), (val, val_labels), classes = splits.pruned_split(read, read, kept)
    (want, want_labels), (want_val, want_val_labels), want_classes = splits.pruned_split((pixels, labels), (pixels, labels), kept)
    assert isinstance(train, images.Images) and isinstance(val, images.Images)
    np.testing.assert_array_equal(train[:], want)
    np.testing.assert_array_equal(val[:], want_val)
    np.testing.assert_array_equal(train_labels, want_labels)
    np.testing.assert_array_equal(val_labels, want_val_labels)
    np.testing.assert_array_equal(classes, want_classes)


def test_concatenated_sets_read_as_one(prepared):
    ds, pixels, _ = prepared
    small = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    both = images.Concatenated([small, images.Images.of(ds).select(np.arange(100, 110))])
    whole = np.concatenate([small, pixels[100:110]])
    assert both.shape == (14, 3, 8, 8)
    np.testing.assert_array_equal(both[:], whole)
    np.testing.assert_array_equal(both[np.array([13, 0, 5, 3])], whole[[13, 0, 5, 3]])
    with pytest.raises(ValueError, match="different shapes"):
        images.Concatenated([small, np.zeros((2, 1, 8, 8), dtype=np.uint8)])


def test_digests_follow_the_rows_not_the_object(prepared):
    ds, _, _ = prepared
    read = images.Images.of(ds)
    assert images.digest(read.select([1, 2])) == images.digest(images.Images.of(ds).select([1, 2]))
    assert images.digest(read.select([1, 2])) != images.digest(read.select([2, 1]))
    assert images.digest(read) != images.digest(read.select(np.arange(len(read))))  # the whole split vs its rows
    assert images.digest(np.ones(3)) == images.digest(np.ones(3))


def test_a_mapped_set_pickles_as_its_files_not_its_bytes(prepared):
    ds, pixels, _ = prepared
    read = images.Images.of(ds).select(np.arange(0, 150, 2))
    blob = pickle.dumps(read)
    assert len(blob) < pixels.nbytes // 4  # the rows array and a path, not the pixels
    np.testing.assert_array_equal(pickle.loads(blob)[:], pixels[::2])


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_in_the_same_order_from_arrays_and_mapped_sets(prepared, drop_last, workers):
    """Same seed, same batches: the order is the generator's, whatever reads the rows (the DataLoader's
    workers included); the last partial batch is kept or dropped as asked."""
    ds, pixels, labels = prepared
    read = images.Images.of(ds)
    device = torch.device("cpu")

    def batches(source, seed):
        return [(x.clone(), y.clone()) for x, y in runtime.iter_batches(
            source, labels, batch_size=32, device=device, generator=torch.Generator().manual_seed(seed),
            drop_last=drop_last, workers=workers)]

    from_array, from_mapped = batches(pixels, 3), batches(read, 3)
    assert [len(y) for _, y in from_mapped] == ([32] * 4 if drop_last else [32] * 4 + [22])
    for (xa, ya), (xb, yb) in zip(from_array, from_mapped, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(from_mapped, batches(read, 4)))  # another seed, another order


def test_training_from_a_mapped_set_gives_the_same_weights_as_from_arrays(prepared):
    ds, pixels, labels = prepared

    def train(source):
        runtime.seed_everything(0)
        model = models.Classifier(models.build_backbone(in_channels=3, embedding_size=4, hidden_sizes=[8], depths=[1]), 5)
        loops.train_classifier(model, source, labels, epochs=2, batch_size=32, lr=1e-2, weight_decay=0.0,
                               seed=0, device=torch.device("cpu"), val_images=source, val_labels=labels)
        return model.state_dict()

    from_array, from_mapped = train(pixels), train(images.Images.of(ds))
    assert all(torch.equal(from_array[k], from_mapped[k]) for k in from_array)


def test_an_epoch_resumes_after_the_batches_already_done(prepared):
    """The position within an epoch is the number of batches done: skipping them yields exactly the rest."""
    ds, _, labels = prepared
    read = images.Images.of(ds)

    def epoch(skip):
        generator = torch.Generator().manual_seed(5)
        return [y.clone() for _, y in runtime.iter_batches(read, labels, batch_size=32, device=torch.device("cpu"),
                                                          generator=generator, skip=skip)], generator

    whole, after_whole = epoch(0)
    rest, after_rest = epoch(3)
    assert len(rest) == len(whole) - 3 and all(torch.equal(a, b) for a, b in zip(whole[3:], rest))
    assert torch.equal(after_whole.get_state(), after_rest.get_state())  # the next epoch's order is unchanged


def test_read_rows_are_writable_copies(prepared):
    ds, _, _ = prepared
    read = images.Images.of(ds)
    assert read[0:4].flags.writeable and read[np.array([3, 1])].flags.writeable


def test_pages_read_leave_the_resident_set(prepared, monkeypatch):
    """Reading a mapped split lets go of its pages every RELEASE_BYTES touched: an epoch over a source
    larger than memory keeps this process's resident set flat (the pages stay in the page cache)."""
    ds, pixels, _ = prepared
    released = []
    monkeypatch.setattr(images._Pixels, "RELEASE_BYTES", 10 * 4096)  # the split is larger: it is let go
    read = images.Images.of(ds)
    original = images._Pixels._release

    def spy(self, touched):
        before = self._touched
        original(self, touched)
        if self._touched < before + touched:
            released.append(before + touched)

    monkeypatch.setattr(images._Pixels, "_release", spy)
    for start in range(0, 150, 8):
        np.testing.assert_array_equal(read[np.arange(start, min(start + 8, 150))], pixels[start:start + 8])
    assert len(released) >= 3  # released as it went, and every read after a release is still right
    for rows in (np.array([149, 0, 75, 3]), np.arange(150)[::-1]):  # scattered: gathered a few at a time
        np.testing.assert_array_equal(read[rows], pixels[rows])
