"""Image sets read by index, never whole: the rows of a prepared split read from its memory-mapped
Arrow table (`datasets` maps the files), a selection of them kept as an index array (no copy), and
several sets read as one.

`Images` and `Concatenated` stand in for the uint8 array [N, C, H, W] they describe wherever the
training code reads images: `len`, `shape`, and `images[index]` (an int array or a slice) reads those
rows only. Functions here take either kind, or a plain array.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

__all__ = ["Images", "Concatenated", "read", "subset", "digest"]


class Images:
    """uint8 pixels [N, C, H, W] and int64 labels [N] of a prepared split, or of some of its rows."""

    def __init__(self, data, item_shape: tuple[int, ...], labels: np.ndarray, rows: np.ndarray | None = None,
                 fingerprint: str = ""):
        self._data = data  # a datasets Table: a memory-mapped one pickles as its files, not its bytes
        self.item_shape = tuple(item_shape)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fingerprint = fingerprint
        if len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} images")

    @classmethod
    def of(cls, ds) -> "Images":
        """The rows of a prepared `datasets.Dataset` (an indices mapping, as `select` leaves, is kept)."""
        from tlpipe.data import LABEL, PIXELS

        rows = None
        if ds._indices is not None:  # noqa: SLF001 (datasets has no public accessor for the mapping)
            rows = ds._indices.column(0).to_numpy()  # noqa: SLF001
        labels = ds.data.table.column(LABEL).to_numpy()
        return cls(ds.data, ds.features[PIXELS].shape, labels if rows is None else labels[rows], rows,
                   fingerprint=ds._fingerprint)  # noqa: SLF001 (a prepared split's is a hash of its content)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self._data.num_rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    dtype = np.dtype(np.uint8)

    def select(self, positions) -> "Images":
        """A view of some rows (positions in this set, in the order given): nothing is read or copied."""
        positions = _positions(positions, len(self))
        rows = positions if self.rows is None else self.rows[positions]
        return Images(self._data, self.item_shape, self.labels[positions], rows, self.fingerprint)

    def __getitem__(self, index) -> np.ndarray:
        column = self._data.table.column("pixels")
        if isinstance(index, slice) and self.rows is None and index.step in (None, 1):
            start, stop, _ = index.indices(len(self))  # a contiguous run: a zero-copy slice of the mapped table
            return _pixels(column.slice(start, max(stop - start, 0)), self.item_shape)
        positions = _positions(index, len(self))
        rows = positions if self.rows is None else self.rows[positions]
        return _pixels(column.take(pa.array(rows, type=pa.int64())), self.item_shape)

    def digest(self) -> str:
        """A hash of the pixels and labels this set stands for, from the split's content hash and the rows."""
        hashed = hashlib.sha256(self.fingerprint.encode())
        hashed.update(b"all" if self.rows is None else self.rows.tobytes())
        return hashed.hexdigest()


class Concatenated:
    """Several image sets (arrays, `Images`) read as one, in order."""

    def __init__(self, parts: list):
        self.parts = [part for part in parts]
        shapes = {tuple(part.shape[1:]) for part in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"image sets of different shapes cannot be concatenated: {sorted(shapes)}")
        self.item_shape = shapes.pop()
        self.offsets = np.cumsum([0, *(len(part) for part in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)

    dtype = np.dtype(np.uint8)

    def __getitem__(self, index) -> np.ndarray:
        positions = _positions(index, len(self))
        part_of = np.searchsorted(self.offsets, positions, side="right") - 1
        out = np.empty((len(positions), *self.item_shape), dtype=np.uint8)
        for i in np.unique(part_of):
            where = part_of == i
            out[where] = self.parts[i][positions[where] - self.offsets[i]]
        return out

    def digest(self) -> str:
        return hashlib.sha256("".join(digest(part) for part in self.parts).encode()).hexdigest()


def read(ds) -> tuple[Images, np.ndarray]:
    """(images, labels) of a prepared split, as `data.to_arrays` gives them, but read by index."""
    images = Images.of(ds)
    return images, images.labels


def subset(images, rows):
    """Some rows of an image set: a view of an `Images`, a copy of an array."""
    return images.select(rows) if isinstance(images, Images) else images[np.asarray(rows, dtype=np.int64)]


def digest(images) -> str:
    """A hash of an image set's pixels (of an array: its bytes; else from what it is made of)."""
    if isinstance(images, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    return images.digest()


def _positions(index, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(*index.indices(n), dtype=np.int64)
    positions = np.asarray(index, dtype=np.int64).reshape(-1)
    return np.where(positions < 0, positions + n, positions)


def _pixels(column: pa.ChunkedArray, item_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 [n, *item_shape] of an Array3D column (nested fixed-size lists, one level per axis)."""
    if len(column) == 0:
        return np.zeros((0, *item_shape), dtype=np.uint8)
    values = column.combine_chunks() if column.num_chunks > 1 else column.chunk(0)
    if isinstance(values, pa.ExtensionArray):
        values = values.storage
    for _ in item_shape:
        values = values.flatten()  # keeps a slice's offset
    # writable: a copy of the rows (a batch), never a view of the mapped file that torch would warn about
    return values.to_numpy(zero_copy_only=False, writable=True).reshape(len(column), *item_shape)
