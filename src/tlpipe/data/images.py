"""Image sets read by index, never whole: the rows of a prepared split read from its Arrow files
(memory-mapped, with the pages read let go as it goes), a selection of them kept as an index array
(no copy), and several sets read as one.

`Images` and `Concatenated` stand in for the uint8 array [N, C, H, W] they describe wherever the
training code reads images: `len`, `shape`, and `images[index]` (an int array or a slice) reads those
rows only. Functions here take either kind, or a plain array.
"""

from __future__ import annotations

import hashlib
import mmap

import numpy as np
import pyarrow as pa

from tlpipe.data.arrow import file_rows, map_arrow_files

__all__ = ["Images", "Concatenated", "read", "subset", "digest"]


class _ImageSet:
    """What an image set shares with the uint8 array [N, *item_shape] it stands for."""

    item_shape: tuple[int, ...]
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.item_shape)


class Images(_ImageSet):
    """uint8 pixels [N, C, H, W] and int64 labels [N] of a prepared split, or of some of its rows (of an
    encoded split: decoded as they are read, `tlpipe.data.decoded.DecodedPixels`)."""

    def __init__(self, pixels: "_Pixels", labels: np.ndarray, rows: np.ndarray | None = None, fingerprint: str = "",
                 augmentation: tuple | None = None):
        self._pixels = pixels  # shared by every selection of the split
        self.augmentation = augmentation  # (uint8 transform, salt): see `augmented`
        self.item_shape = pixels.item_shape
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.fingerprint = fingerprint
        if len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} images")

    @classmethod
    def of(cls, ds) -> "Images":
        """The rows of a prepared `datasets.Dataset` (an indices mapping, as `select` leaves, is kept)."""
        from tlpipe.data.layout import IMAGE, LABEL, layout_of

        rows = None
        if ds._indices is not None:  # noqa: SLF001 (datasets has no public accessor for the mapping)
            rows = ds._indices.column(0).to_numpy()  # noqa: SLF001
        files = [f["filename"] for f in ds.cache_files]
        layout = layout_of(ds)
        if layout.encoded:  # decoded a row at a time, by whichever process reads it
            from tlpipe.data.decoded import DecodedPixels, EncodedColumn

            column = EncodedColumn(files, IMAGE) if files else EncodedColumn(column=IMAGE, table=ds.data.table)
            pixels = DecodedPixels(column, channels=layout.channels, size=layout.image_size)
        else:
            pixels = _Pixels(layout.item_shape, files=files) if files else _Pixels(layout.item_shape, table=ds.data.table)
        labels = pixels.column(LABEL)  # through its own mapping, which lets the pages go
        return cls(pixels, labels if rows is None else labels[rows], rows,
                   fingerprint=ds._fingerprint)  # noqa: SLF001 (a prepared split's is a hash of its content)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else self._pixels.num_rows

    @property
    def encoded(self) -> bool:
        """The split holds encoded images (decoded as read), not raw pixels."""
        return not isinstance(self._pixels, _Pixels)

    def select(self, positions) -> "Images":
        """A view of some rows (positions in this set, in the order given): nothing is read or copied."""
        positions = _positions(positions, len(self))
        rows = positions if self.rows is None else self.rows[positions]
        return Images(self._pixels, self.labels[positions], rows, self.fingerprint, self.augmentation)

    def augmented(self, transform, salt: int) -> "Images":
        """The same rows read through a random uint8 transform of each image (torchvision v2, e.g.
        `recipes.crop_flip`), its draws seeded from (`salt`, the row): the same pixels in any process
        and batch. An encoded split's images are transformed whole, as decoded (a crop of the stored
        photo, not of its centre view)."""
        return Images(self._pixels, self.labels, self.rows, self.fingerprint, (transform, int(salt)))

    def __getitem__(self, index) -> np.ndarray:
        positions = _positions(index, len(self))
        rows = positions if self.rows is None else self.rows[positions]
        if self.augmentation is None:
            return self._pixels.gather(rows)
        if isinstance(self._pixels, _Pixels):
            from tlpipe.data.decoded import augment_rows

            return augment_rows(self._pixels.gather(rows), rows, *self.augmentation)
        return self._pixels.gather(rows, self.augmentation)

    def digest(self) -> str:
        """A hash of the pixels and labels this set stands for, from the split's content hash and the rows."""
        hashed = hashlib.sha256(self.fingerprint.encode())
        hashed.update(getattr(self._pixels, "digest_salt", b""))  # how encoded bytes become these pixels
        hashed.update(b"all" if self.rows is None else self.rows.tobytes())
        return hashed.hexdigest()


class Concatenated(_ImageSet):
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

    def __getitem__(self, index) -> np.ndarray:
        return _gather(self.parts, self.offsets, _positions(index, len(self)), self.item_shape)

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


def _gather(parts: list, starts: np.ndarray, positions: np.ndarray, item_shape: tuple[int, ...],
            out: np.ndarray | None = None) -> np.ndarray:
    """Rows `positions` of `parts` laid end to end (part i holds rows starts[i] to starts[i + 1]), into
    `out` when given."""
    out = np.empty((len(positions), *item_shape), dtype=np.uint8) if out is None else out
    part_of = np.searchsorted(starts, positions, side="right") - 1
    for i in np.unique(part_of):
        where = part_of == i
        out[where] = parts[i][positions[where] - starts[i]]
    return out


def _positions(index, n: int) -> np.ndarray:
    if isinstance(index, slice):
        return np.arange(*index.indices(n), dtype=np.int64)
    positions = np.asarray(index, dtype=np.int64).reshape(-1)
    return np.where(positions < 0, positions + n, positions)


class _Pixels:
    """The pixel column of a split as one zero-copy uint8 view [n, C, H, W] per Arrow record batch.

    Mapped from the split's files by this process itself, so that it can let go of the pages it has
    read: every `RELEASE_BYTES` of pages touched (of a split larger than that), the mapping is advised
    MADV_DONTNEED. The pages stay in the kernel's page cache (reading them again costs a minor fault),
    but they leave this process's resident set, which then does not grow with the source. Pickles as
    its file names (DataLoader workers map the files again).
    """

    RELEASE_BYTES = 32 << 20
    # What one read of a row may map: a fault maps the pages around the faulting one too (fault-around,
    # 64 KiB), and a large folio of the page cache whole (up to 2 MiB; a split just written is cached in
    # such folios), so scattered small rows map far more than their bytes. Rows are gathered a few at a
    # time, counting 2 MiB for every 2 MiB region they lie in: a surrogate epoch over a 1M-image split
    # just written held up to 512 MB of it while one batch of 256 rows was gathered.
    FAULT_AROUND = 2 << 20

    def __init__(self, item_shape: tuple[int, ...], files: list[str] | None = None, table: pa.Table | None = None):
        self.item_shape, self.files, self._table = tuple(item_shape), files, table
        self._views: list[np.ndarray] | None = None
        self.num_rows = sum(file_rows(f) for f in files) if files else table.num_rows

    def __getstate__(self) -> dict:
        return {"item_shape": self.item_shape, "files": self.files, "_table": None if self.files else self._table,
                "num_rows": self.num_rows, "_views": None, "_table_read": None}

    def _load(self) -> None:
        self._maps, mapped = map_arrow_files(self.files or [])
        table = self._table_read = mapped if self.files else self._table
        self._views = [_flat(chunk).reshape(len(chunk), *self.item_shape)
                       for chunk in table.column("pixels").chunks if len(chunk)]
        self._starts = np.cumsum([0, *(len(v) for v in self._views)])
        self._addresses = np.array([v.ctypes.data for v in self._views], dtype=np.int64)
        # a split no larger than what is let go at a time can stay mapped whole: nothing to gain by faulting it in again
        self._releases = sum(map(len, self._maps)) > self.RELEASE_BYTES
        self._touched = self.RELEASE_BYTES  # reading the batch headers mapped pages throughout: let them go
        self._release(0)

    def column(self, name: str) -> np.ndarray:
        """A copy of another column (e.g. the labels) of the same rows."""
        if self._views is None:
            self._load()
        values = np.array(self._table_read.column(name).to_numpy())
        self._touched = self.RELEASE_BYTES  # its values lie between the pixels of every record batch
        self._release(0)
        return values

    def gather(self, rows: np.ndarray) -> np.ndarray:
        if self._views is None:
            self._load()
        out = np.empty((len(rows), *self.item_shape), dtype=np.uint8)
        step = max(1, self.RELEASE_BYTES // self.FAULT_AROUND) if self._releases else max(len(rows), 1)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            _gather(self._views, self._starts, chunk, self.item_shape, out[start : start + step])
            self._release(self._regions(chunk) * self.FAULT_AROUND)
        return out

    def _regions(self, rows: np.ndarray) -> int:
        """How many FAULT_AROUND-aligned regions of the mapping the rows lie in."""
        part = np.searchsorted(self._starts, rows, side="right") - 1
        first = self._addresses[part] + (rows - self._starts[part]) * self._views[0][0].nbytes
        return len(np.unique(first // self.FAULT_AROUND))

    def _release(self, touched: int) -> None:
        self._touched += touched
        if self._touched >= self.RELEASE_BYTES and self._releases:
            for mapped in self._maps:
                mapped.madvise(mmap.MADV_DONTNEED)
            self._touched = 0


def _flat(chunk: pa.Array) -> np.ndarray:
    """The uint8 values of a chunk of an Array3D column (nested lists, one level per axis), zero-copy."""
    values = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
            or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()  # keeps a slice's offset
    return values.to_numpy(zero_copy_only=True)
