"""The prepared source written in parts by worker processes, never whole in memory.

The source is cut into units fixed by the params alone (a glyph class; a run of rows of an outside
data set), so the output is the same whatever the number of processes. Its stratified train/val
split needs only the labels, so it is drawn first; each worker then renders or decodes one unit and
writes the unit's train rows and val rows as two Arrow files. The parts of each split are then read
back with plain reads, in unit order, into the shards of one prepared data set (the layout
`datasets`' `save_to_disk` writes, so `storage.load_prepared` maps it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from tlpipe.data import splits, storage
from tlpipe.io import remove_path, staged_outputs, temporary_sibling

ROWS_PER_UNIT = 4096  # rows of an outside data set decoded by one task
# A worker process costs ~3.5 s to start (it imports datasets and matplotlib): on 2 cores, 2 workers
# were slower than 1 up to ~100k glyph images (10.3 s vs 7.9 s at 94k). Each gets this many at least.
IMAGES_PER_WORKER = 100_000
RECORD_BATCH_BYTES = 32 << 20  # a prepared split's record batches (the last of a shard smaller)
COLOUR_CHUNK = 128  # colour glyphs made at once (float32 [128, 3, 256, 256] is 100 MB)


@dataclass(frozen=True)
class Glyphs:
    """The built-in source: one unit per character (`storage.render_glyphs` with these arguments)."""

    charset: str
    images_per_class: int
    seed: int
    image_size: int
    degrade_fraction: float
    storage: str = "raw"  # raw | encoded | auto (`storage.Layout.chosen`)
    quality: int = 90
    channels: int = 1  # 3: RGB pictures, each glyph on a textured colour background (`glyphs.colourise`)

    def __post_init__(self) -> None:
        storage.glyph_charset(self.charset)
        storage.check_glyph_args(images_per_class=self.images_per_class, seed=self.seed, image_size=self.image_size,
                                 degrade_fraction=self.degrade_fraction)
        self.layout  # noqa: B018 (checks the storage and quality)

    @property
    def layout(self) -> storage.Layout:
        return storage.Layout.chosen(self.storage, channels=self.channels, image_size=self.image_size,
                                     quality=self.quality)

    def names(self) -> list[str]:
        return list(storage.glyph_charset(self.charset))

    def labels(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.names())), self.images_per_class)

    def units(self) -> list[tuple[int, int]]:
        n = self.images_per_class
        return [(c * n, (c + 1) * n) for c in range(len(self.names()))]

    def features(self) -> datasets.Features:
        return self.layout.features(self.names(), with_font=True)

    def rows(self, start: int, stop: int) -> tuple[np.ndarray | list[bytes], np.ndarray, list[str] | None]:
        """(pixels or their JPEG bytes, labels, fonts) of the character whose rows these are (its random
        stream is its own)."""
        from tlpipe.data.encoding import encode_pixels, stored_side
        from tlpipe.data.glyphs import colourise, render_class

        label, encoded = start // self.images_per_class, self.layout.encoded
        # encoded: rendered at the side they are stored at, of which reading takes the centre crop
        pixels, fonts = render_class(self.names()[label], count=self.images_per_class, seed=self.seed,
                                     image_size=stored_side(self.image_size) if encoded else self.image_size,
                                     degrade_fraction=self.degrade_fraction)
        images = pixels[:, None]
        if self.channels == 3:  # a stream of its own: the grey glyphs stay those of channels 1
            rng = np.random.default_rng([self.seed, ord(self.names()[label]), 3])
            images = np.concatenate([colourise(pixels[i : i + COLOUR_CHUNK], rng)  # float work a chunk at a time
                                     for i in range(0, len(pixels), COLOUR_CHUNK)])
        if encoded:
            images = [encode_pixels(image, quality=self.quality) for image in images]
        return images, np.full(len(pixels), label), fonts


@dataclass(frozen=True)
class Outside:
    """An image data set from outside the project (`external.load_image_dataset` with these arguments),
    decoded `ROWS_PER_UNIT` rows at a time."""

    name: str
    split: str
    image_column: str
    label_column: str
    image_size: int
    channels: int
    storage: str = "raw"  # raw | encoded | auto (`storage.Layout.chosen`)
    quality: int = 90

    def __post_init__(self) -> None:
        from tlpipe.data import external

        external.check_shape(self.image_size, self.channels)
        self.layout  # noqa: B018 (checks the storage and quality)

    @property
    def layout(self) -> storage.Layout:
        return storage.Layout.chosen(self.storage, channels=self.channels, image_size=self.image_size,
                                     quality=self.quality)

    def _raw(self) -> datasets.Dataset:
        return _opened(self.name, self.split, self.image_column, self.label_column)

    def names(self) -> list[str]:
        return _label_ids(self)[1]

    def labels(self) -> np.ndarray:
        return _label_ids(self)[0]

    def units(self) -> list[tuple[int, int]]:
        n = len(self._raw())
        return [(start, min(start + ROWS_PER_UNIT, n)) for start in range(0, n, ROWS_PER_UNIT)]

    def features(self) -> datasets.Features:
        return self.layout.features(self.names())

    def rows(self, start: int, stop: int) -> tuple[np.ndarray | list[bytes], np.ndarray, list[str] | None]:
        from tlpipe.data import external

        images = external.convert_images(self._raw().select(range(start, stop)), self.image_column, self.layout,
                                         first_row=start)
        return images, self.labels()[start:stop], None


@functools.lru_cache(maxsize=4)
def _opened(name: str, split: str, image_column: str, label_column: str) -> datasets.Dataset:
    from tlpipe.data import external

    return external.open_checked(name, split, image_column, label_column)


@functools.lru_cache(maxsize=4)
def _label_ids(source: Outside) -> tuple[np.ndarray, list[str]]:
    from tlpipe.data import external

    return external.label_ids(source._raw(), source.label_column)  # noqa: SLF001


def processes() -> int:
    """Worker processes for the units: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare_source(source, out: Path, *, val_fraction: float, seed: int, workers: int | None = None) -> dict:
    """Writes the source's train/val split (`splits.split_source`) to `out` as a prepared data set.

    Args:
        source: `Glyphs` or `Outside`.
        out: the folder to write (replaced atomically).
        val_fraction, seed: as in `splits.split_source`.
        workers: processes; 1 renders in this process; None: the cores this process may use, but
            no more than one per `IMAGES_PER_WORKER` images. The output is the same for any number.

    Returns:
        {split: number of rows}.
    """
    names, labels, units, features = source.names(), source.labels(), source.units(), source.features()
    info = source.layout.info(features)
    in_val = np.zeros(len(labels), dtype=bool)
    in_val[splits.val_rows(labels, len(names), val_fraction=val_fraction, seed=seed)] = True
    parts = temporary_sibling(Path(out), "parts")
    parts.mkdir(parents=True)
    jobs = [(source, start, stop, in_val[start:stop], parts / f"{i:06d}") for i, (start, stop) in enumerate(units)]
    if workers is None:
        workers = min(processes(), max(1, len(labels) // IMAGES_PER_WORKER))
    workers = min(workers, len(jobs))
    try:
        if workers > 1:
            # spawn: the stage process may hold torch's thread pools, which a forked child must not inherit
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                list(pool.map(_write_unit, jobs, chunksize=1))
        else:
            for job in jobs:
                _write_unit(job)
        with staged_outputs(Path(out)) as (folder,):
            sizes = {}
            for split in ("train", "val"):
                files = [f for f in (parts / f"{i:06d}.{split}.arrow" for i in range(len(jobs))) if f.is_file()]
                sizes[split] = _write_split(files, info, folder / split, _digest(files))
            (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(sizes)}))
        return sizes
    finally:
        remove_path(parts)


def _write_split(files: list[Path], info: datasets.DatasetInfo, folder: Path, fingerprint: str) -> int:
    """The parts, in order, as one split of a prepared data set in `folder` (the layout `save_to_disk`
    writes, shards of at most `datasets.config.MAX_SHARD_SIZE`), copied a record batch at a time with
    plain reads: nothing is mapped, so the copy adds nothing to this process's resident memory.
    Returns the number of rows."""
    from datasets.arrow_writer import ArrowWriter
    from datasets.table import InMemoryTable
    from datasets.utils.py_utils import convert_file_size_to_int

    # datasets writes the split's metadata (features, layout, format) for an empty split; the shards follow
    features = info.features
    empty = datasets.Dataset(InMemoryTable(features.arrow_schema.empty_table()), info=info)
    empty.save_to_disk(str(folder))
    limit = convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)
    sizes = [f.stat().st_size for f in files]
    count = max(1, sum(sizes) // limit + 1) if files else 1
    groups = [[] for _ in range(count)]
    for f, start in zip(files, np.cumsum([0, *sizes[:-1]])):
        groups[min(int(start * count // max(sum(sizes), 1)), count - 1)].append(f)
    names = [f"data-{i:05d}-of-{count:05d}.arrow" for i in range(count)]
    for stale in folder.glob("data-*.arrow"):
        stale.unlink()
    rows = 0
    for name, group in zip(names, groups):
        writer = ArrowWriter(features=features, path=str(folder / name))
        try:
            for batch in _coalesced(group):
                writer.write_table(pa.Table.from_batches([batch]), writer_batch_size=batch.num_rows)
                rows += batch.num_rows
            writer.finalize()
        finally:
            writer.close()
    state = json.loads((folder / "state.json").read_text())
    state.update(_data_files=[{"filename": name} for name in names], _fingerprint=fingerprint)
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return rows


def _coalesced(parts: list[Path]) -> Iterator[pa.RecordBatch]:
    """The record batches of the parts, in order, joined into batches of about `RECORD_BATCH_BYTES`.

    A reader maps one zero-copy view per record batch (`tlpipe.data.images`): few large batches make a
    random batch of rows touch few of them, and opening the split read few batch headers (each read
    maps the pages around it) rather than one per thousand rows.
    """
    pending, size = [], 0
    for part in parts:
        with pa.OSFile(str(part)) as source:
            for batch in pa.ipc.open_stream(source):
                pending.append(batch)
                size += batch.nbytes
                if size >= RECORD_BATCH_BYTES:
                    yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
                    pending, size = [], 0
    if pending:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def _write_unit(job) -> None:
    """Renders or decodes one unit and writes its train rows and val rows (an Arrow file each, when any)."""
    source, start, stop, in_val, stem = job
    images, labels, fonts = source.rows(start, stop)
    features = source.features()
    for split, mask in (("train", ~in_val), ("val", in_val)):
        if mask.any():
            kept = images[mask] if isinstance(images, np.ndarray) else [b for b, m in zip(images, mask) if m]
            table = storage.prepared_table(kept, labels[mask], features,
                                           None if fonts is None else [f for f, m in zip(fonts, mask) if m])
            storage.write_arrow(table, features, Path(f"{stem}.{split}.arrow"))


def _digest(files: list[Path]) -> str:
    """A hash of the parts' bytes, in order: the same rows give the same parts and so the same digest."""
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
