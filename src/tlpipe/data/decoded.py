"""Encoded images (JPEG, PNG, WebP bytes) decoded and augmented in DataLoader worker processes.

`EncodedColumn` reads the bytes of one row at a time from a split's Arrow files (memory-mapped by
each process itself, so it pickles as file names). `DecodedPixels` gives the rows of an encoded split
as the fixed-size uint8 pixels the training loops read (`tlpipe.data.images.Images` over it): every
image decoded and brought to evaluation's geometry, the same in any process. `EncodedImages` decodes a row with
`torchvision.io.decode_image` and applies the recipes of `tlpipe.data.recipes`; `EpochOrder` is the
sampler. The sampler hands out (epoch, row) pairs, and each image's random draws come from a seed of
(seed, epoch, row), so an epoch gives the same batches, in the same order, with the same
augmentations, for any number of workers, and a run resumed at batch k gives what batch k would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import hashlib
import mmap
import struct

import numpy as np
import pyarrow as pa
import torch
from torchvision.io import ImageReadMode, decode_image

from tlpipe.data.arrow import map_arrow_files

__all__ = ["EncodedColumn", "DecodedPixels", "EncodedImages", "EpochOrder", "image_seed", "loader", "decode"]


def image_seed(*words: int) -> int:
    """The seed of one image's augmentations, e.g. of (seed, epoch, row) (non-negative ints below
    2**64): a hash of the tuple, below 2**63 as manual_seed takes. Independent streams for every tuple;
    1 us a call (numpy's SeedSequence took 35, a twentieth of a decode)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(words)}Q", *words), digest_size=8, person=b"tlpipe-aug").digest()
    return int.from_bytes(digest, "little") >> 1


class EncodedColumn(Sequence):
    """The encoded bytes of an image column (a `datasets.Image` feature, or plain binary) of Arrow files.

    The pages read are let go (MADV_DONTNEED) every `RELEASE_BYTES` of bytes read, so that reading a
    split larger than memory does not grow this process's resident set (the page cache keeps them).
    """

    RELEASE_BYTES = 64 << 20

    def __init__(self, files: list[str] | None = None, column: str = "image", table: pa.Table | None = None):
        if (files is None) == (table is None):
            raise ValueError("give the split's Arrow files or a table, not both")
        self.files, self.column, self._table = files, column, table
        self._chunks: list[pa.Array] | None = None

    def __getstate__(self) -> dict:
        return {"files": self.files, "column": self.column, "_table": self._table if self.files is None else None,
                "_chunks": None}

    def _load(self) -> None:
        self._maps, mapped = map_arrow_files(self.files or [])  # the mappings live as long as the column
        table = mapped if self.files is not None else self._table
        if self.column not in table.column_names:
            raise ValueError(f"no column {self.column!r}; columns: {', '.join(table.column_names)}")
        values = table.column(self.column)
        chunks = [c.storage if isinstance(c, pa.ExtensionArray) else c for c in values.chunks]
        if chunks and pa.types.is_struct(chunks[0].type):  # datasets.Image: {bytes, path}
            chunks = [c.field("bytes") for c in chunks]
        self._chunks = [c for c in chunks if len(c)]
        self._starts = np.cumsum([0, *(len(c) for c in self._chunks)])
        self._table_read, self._read = table, 0

    def values(self, name: str) -> np.ndarray:
        """A copy of another column (e.g. the labels) of the same rows."""
        if self._chunks is None:
            self._load()
        return np.array(self._table_read.column(name).to_numpy())

    def __len__(self) -> int:
        if self._chunks is None:
            self._load()
        return int(self._starts[-1])

    def __getitem__(self, row: int) -> bytes:
        if self._chunks is None:
            self._load()
        if not 0 <= row < self._starts[-1]:
            raise IndexError(f"row {row} of {self._starts[-1]}")
        part = int(np.searchsorted(self._starts, row, side="right") - 1)
        value = self._chunks[part][row - int(self._starts[part])]
        if not value.is_valid:
            raise ValueError(f"row {row} holds no image bytes")
        data = value.as_buffer().to_pybytes()
        self._read += len(data)
        if self._read >= self.RELEASE_BYTES:
            for mapped in self._maps:
                mapped.madvise(mmap.MADV_DONTNEED)
            self._read = 0
        return data


class seeded:
    """A context in which torch's CPU generator (the one torchvision's transforms draw from) is seeded
    with `seed`; it is given back its state after. (The CPU generator alone: `torch.manual_seed` seeds
    every device too, at 120 us a call, more than a crop.)"""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.default_generator.get_state()
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        torch.default_generator.set_state(self._state)


def augment(image: torch.Tensor, transform: Callable, salt: int, row: int) -> torch.Tensor:
    """`transform` of one uint8 image [C, H, W] with torch's generator seeded from (salt, row) (the
    caller's generator is left as it was): the same draws in any process, for any batch it is in."""
    with seeded(image_seed(salt, row)):
        return transform(image)


def augment_rows(pixels: np.ndarray, rows: np.ndarray, transform: Callable, salt: int) -> np.ndarray:
    """`augment` of each uint8 image [C, S, S] of `pixels`, row `rows[k]`; the result keeps their shape."""
    out = np.empty_like(pixels)
    for k, row in enumerate(rows):
        out[k] = _same_shape(augment(torch.from_numpy(pixels[k]), transform, salt, int(row)), out.shape[1:])
    return out


def _same_shape(image: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(image.shape) != tuple(shape) or image.dtype != torch.uint8:
        raise ValueError(f"the augmentation gave {image.dtype} {tuple(image.shape)}; the images are uint8 "
                         f"{tuple(shape)} (a uint8 recipe of that size, e.g. recipes.crop_flip)")
    return image.numpy()


def decode(data: bytes, channels: int = 3) -> torch.Tensor:
    """uint8 [channels, H, W] of encoded bytes, the pixels PIL gives (`Image.open(...).convert("RGB" or "L")`).

    Raises:
        ValueError: the bytes do not decode.
    """
    try:
        rgb = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise ValueError(f"does not decode ({err})") from None
    return rgb if channels == 3 else luma(rgb)


class DecodedPixels:
    """The images of an encoded split as uint8 [channels, size, size] rows: decoded, the shorter side
    resized to size / 0.875, the centre crop (`recipes.centre_view`, evaluation's geometry).

    What `tlpipe.data.images.Images` reads rows from (`item_shape`, `num_rows`, `gather`, `column`);
    deterministic, so every process and every number of loader workers reads the same pixels. Pickles
    as its file names."""

    def __init__(self, encoded: EncodedColumn, *, channels: int, size: int):
        from tlpipe.data.recipes import centre_view

        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: images have 1 or 3 channels")
        self.encoded, self.channels, self.size = encoded, channels, size
        self.item_shape = (channels, size, size)
        self.num_rows = len(encoded)
        self._view = centre_view(size)

    @property
    def digest_salt(self) -> bytes:
        """What the pixels depend on beyond the split's content: how they are decoded."""
        return f"decoded:{self.channels}x{self.size}".encode()

    def column(self, name: str) -> np.ndarray:
        return self.encoded.values(name)

    def gather(self, rows: np.ndarray, augmentation: tuple[Callable, int] | None = None) -> np.ndarray:
        """The rows in evaluation's geometry, or each decoded image (whole) through the augmentation's
        transform under the seed of (its salt, the row) (`augment`)."""
        out = np.empty((len(rows), *self.item_shape), dtype=np.uint8)
        for k, row in enumerate(np.asarray(rows, dtype=np.int64)):
            try:
                image = decode(self.encoded[int(row)], self.channels)
            except ValueError as err:
                raise ValueError(f"image of row {int(row)} {err}") from None
            if augmentation is None:
                out[k] = self._view(image).numpy()
            else:
                out[k] = _same_shape(augment(image, augmentation[0], augmentation[1], int(row)), self.item_shape)
        return out


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 [1, H, W] from uint8 [3, H, W] by ITU-R 601-2 in PIL's fixed point (its "L" conversion,
    exactly; torchvision's own grayscale decoding differs from it by up to 18 levels)."""
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8)[None]


class EncodedImages(torch.utils.data.Dataset):
    """(view, ..., label) of row `i`: the image decoded (1 or 3 `channels`) and each of `transforms`
    applied under the image's seed for the epoch; indexed by (epoch, row), as `EpochOrder` gives."""

    def __init__(self, encoded: Sequence[bytes], labels: np.ndarray, transforms: Sequence[Callable], *,
                 seed: int, channels: int = 3):
        if len(encoded) != len(labels):
            raise ValueError(f"{len(labels)} labels for {len(encoded)} images")
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: images have 1 or 3 channels")
        if not transforms:
            raise ValueError("give at least one transform (one per view)")
        self.encoded, self.labels = encoded, np.asarray(labels, dtype=np.int64)
        self.transforms, self.seed, self.channels = tuple(transforms), seed, channels

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, row: int) -> torch.Tensor:
        """uint8 [channels, H, W], the pixels PIL gives (`Image.open(...).convert("RGB" or "L")`)."""
        try:
            return decode(self.encoded[row], self.channels)
        except ValueError as err:
            raise ValueError(f"image of row {row} {err}") from None

    def __getitem__(self, key: tuple[int, int]):
        epoch, row = key
        image = self.decode(row)
        with seeded(image_seed(self.seed, epoch, row)):  # the caller's generator is left as it was
            views = tuple(transform(image) for transform in self.transforms)
        return (*views, int(self.labels[row]))


class EpochOrder(torch.utils.data.Sampler):
    """A permutation of the rows per epoch from (seed, epoch), as (epoch, row) pairs; `start` skips the
    first rows of the first epoch iterated (a resumed run), and `set_epoch` picks the epoch."""

    def __init__(self, n: int, *, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.n:
            raise ValueError(f"start={start} outside the epoch's {self.n} rows")
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for row in self.order()[self.start:]:
            yield self.epoch, int(row)

    def __len__(self) -> int:
        return self.n - self.start


def loader(dataset: EncodedImages, *, batch_size: int, order: EpochOrder, workers: int = 0,
           drop_last: bool = False, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of `dataset` in `order`, decoded in `workers` processes (0: in this one), kept alive
    between epochs. Workers are spawned: the caller may hold threads that a forked child must not."""
    extra = {"persistent_workers": True, "prefetch_factor": 4,
             "multiprocessing_context": "spawn"} if workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                                       drop_last=drop_last, pin_memory=pin_memory, **extra)
