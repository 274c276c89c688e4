"""Prepared image data sets: the built-in glyph source and digits target, saving and loading them
(data sets from outside: `tlpipe.data.external`; splits: `tlpipe.data.splits`).

Every data set is turned into one of two layouts (`Layout`): raw, `pixels` = Array3D (C, H, W) uint8,
or encoded, `image` = a `datasets` Image (JPEG/PNG/WebP bytes, `tlpipe.data.encoding`), the image size
and channels then recorded in the split's description, so that a prepared split says itself what its
images are. Both have `label` = ClassLabel, and for glyphs a `font` string column. Built-in images are
white ink on black; other datasets keep the polarity they come with (MNIST-like data already matches).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from tlpipe.data import encoding
from tlpipe.data.layout import FONT, IMAGE, LABEL, PIXELS, Layout, check_image_size, layout_of, prepared_features
from tlpipe.data.glyphs import GLYPH_CHARSETS, glyph_charset, render_class, upsample_levels
from tlpipe.io import remove_path, replace_path, temporary_sibling

__all__ = [
    "GLYPH_CHARSETS", "glyph_charset", "render_glyphs", "load_digits_dataset", "build_dataset",
    "labels_of", "to_arrays", "save_prepared", "load_prepared",
    "prepared_features", "Layout", "layout_of", "build_encoded",
]  # fmt: skip


def build_encoded(
    data: list[bytes], labels: np.ndarray, label_names: list[str], layout: Layout, fonts: list[str] | None = None
) -> datasets.Dataset:
    """A prepared in-memory dataset of encoded images (one bytes object each) and int [N] label ids."""
    features = layout.features(label_names, with_font=fonts is not None)
    table = prepared_table(data, labels, features, fonts)
    return datasets.Dataset(InMemoryTable(table), info=layout.info(features),
                            fingerprint=table_fingerprint(table))


def build_dataset(
    pixels: np.ndarray, labels: np.ndarray, label_names: list[str], fonts: list[str] | None = None
) -> datasets.Dataset:
    """A prepared in-memory dataset from uint8 [N, C, H, H] pixels and int [N] label ids."""
    # from_dict would otherwise convert row by row (~10x slower). datasets fingerprints in-memory
    # tables by content.
    mapping = {PIXELS: _pixel_lists(pixels), LABEL: np.asarray(labels, dtype=np.int64)}
    if fonts is not None:
        mapping[FONT] = fonts
    channels, image_size = pixels.shape[1:3]
    features = prepared_features(
        label_names, channels=channels, image_size=image_size, with_font=fonts is not None
    )
    return datasets.Dataset.from_dict(mapping, features=features)


def image_set(pixels: np.ndarray, labels: np.ndarray | None = None):
    """uint8 pixels [N, C, H, H] (and int labels [N]; none: all 0) as an in-memory image set read by index
    (`tlpipe.data.images.Images`), which the training loops' augmentations read through."""
    from tlpipe.data.images import Images

    labels = np.zeros(len(pixels), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    names = [str(i) for i in range(max(int(labels.max(initial=0)) + 1, 1))]
    return Images.of(build_dataset(pixels, labels, names))


def _pixel_lists(pixels: np.ndarray) -> pa.Array:
    """uint8 [N, C, H, W] as nested fixed-size lists that wrap the numpy buffer without copying."""
    column = pa.array(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))
    for size in pixels.shape[:0:-1]:
        column = pa.FixedSizeListArray.from_arrays(column, size)
    return column


def check_glyph_args(*, images_per_class: int, seed: int, image_size: int, degrade_fraction: float) -> None:
    if images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class} must be >= 1")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    if not 0.0 <= degrade_fraction <= 1.0:
        raise ValueError(f"degrade_fraction={degrade_fraction} must be in [0, 1]")
    check_image_size(image_size)


def render_glyphs(
    *, charset: str, images_per_class: int, seed: int, image_size: int = 32,
    degrade_fraction: float = 0.5,
) -> datasets.Dataset:  # fmt: skip
    """The built-in source: characters rendered from matplotlib's fonts, white on black.

    Args:
        charset: One of `GLYPH_CHARSETS`; its characters are the class names, in order.
        images_per_class: Images rendered per character.
        seed: Non-negative seed; the same arguments give byte-identical pixels.
        image_size: Output height and width.
        degrade_fraction: Share of each class given the digits' 8x8, 17-level degradation.

    Returns:
        A prepared dataset with a `font` column, rows ordered class by class.
    """
    chars = glyph_charset(charset)
    check_glyph_args(images_per_class=images_per_class, seed=seed, image_size=image_size,
                     degrade_fraction=degrade_fraction)
    options = dict(seed=seed, image_size=image_size, degrade_fraction=degrade_fraction)
    rendered = [render_class(char, count=images_per_class, **options) for char in chars]
    pixels = np.concatenate([images for images, _ in rendered])[:, None]
    labels = np.repeat(np.arange(len(chars)), images_per_class)
    fonts = [name for _, names in rendered for name in names]
    return build_dataset(pixels, labels, chars, fonts)


def load_digits_dataset(*, image_size: int = 32, layout: Layout | None = None) -> datasets.Dataset:
    """The built-in target: scikit-learn's 1797 8x8 handwritten digits, upsampled bilinearly.

    Uses the same upsampling as the glyphs' degradation, so degraded glyphs look like digits; a layout
    of 3 channels repeats the grey in each. An encoded `layout` stores them as JPEG at its quality, at the side they are stored at for its image
    size (`encoding.stored_side`: read back, the centre crop of `image_size`).
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    image_size = layout.image_size if layout is not None else image_size
    check_image_size(image_size)
    digits = load_digits()
    names = [str(d) for d in range(10)]
    encoded = layout is not None and layout.encoded
    channels = 1 if layout is None else layout.channels

    def made(levels: np.ndarray, size: int) -> np.ndarray:
        return np.repeat(upsample_levels(levels, size)[:, None], channels, axis=1)  # grey digits in RGB for 3

    if not encoded:
        return build_dataset(made(digits.images, image_size), digits.target, names)
    side = encoding.stored_side(image_size)
    data = [encoding.encode_pixels(image, quality=layout.quality)  # 256 at a time: the float work stays small
            for start in range(0, len(digits.images), 256) for image in made(digits.images[start : start + 256], side)]
    return build_encoded(data, digits.target, names, layout)


def as_table(ds: datasets.Dataset) -> pa.Table:
    """The rows of `ds` as one Arrow table (resolving an indices mapping if `ds` has one)."""
    if ds._indices is not None:  # noqa: SLF001 (datasets has no public "is this a view" test)
        ds = ds.flatten_indices()
    features = json.dumps({"info": {"features": ds.features.to_dict()}}).encode()
    # One chunk, and no old fingerprint in the metadata: the saved bytes depend on the rows alone.
    return ds.data.table.combine_chunks().replace_schema_metadata({"huggingface": features})


def labels_of(ds: datasets.Dataset) -> np.ndarray:
    labels = ds.with_format("numpy", columns=[LABEL])[:][LABEL] if len(ds) else []
    return np.asarray(labels, dtype=np.int64)


def to_arrays(ds: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels [N, C, H, W] and int64 labels [N] of a prepared dataset (an encoded one decoded,
    as `tlpipe.data.images` reads it)."""
    layout = layout_of(ds)
    if layout.encoded:
        from tlpipe.data import images

        decoded, labels = images.read(ds)
        return decoded[:], labels
    if len(ds) == 0:
        return np.zeros((0, *ds.features[PIXELS].shape), dtype=np.uint8), labels_of(ds)
    # The numpy formatter widens integers to int64 unless told otherwise.
    pixels = ds.with_format("numpy", columns=[PIXELS], dtype=np.uint8)[:][PIXELS]
    return pixels, labels_of(ds)


def table_fingerprint(table: pa.Table) -> str:
    """A hash of the schema and every value of a table from `as_table`: the same data gives it in any process."""
    digest = hashlib.sha256(table.schema.serialize().to_pybytes())  # its metadata holds the features alone
    for name in table.column_names:
        digest.update(name.encode())
        for part in _flat_parts(table.column(name).combine_chunks()):
            digest.update(part.tobytes())
    return digest.hexdigest()[:16]


def _flat_parts(values: pa.Array) -> list[np.ndarray]:
    """The values of a (nested) Arrow array as flat numpy arrays, list offsets included."""
    if isinstance(values, pa.ExtensionArray):
        return _flat_parts(values.storage)
    if pa.types.is_struct(values.type):  # an encoded image: {bytes, path}
        return [values.is_null().to_numpy(zero_copy_only=False),
                *(part for field in values.flatten() for part in _flat_parts(field))]
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if pa.types.is_large_binary(values.type)
                                else np.int32)[values.offset : values.offset + len(values) + 1]
        data = values.buffers()[2]
        data = np.zeros(0, np.uint8) if data is None else np.frombuffer(data, dtype=np.uint8)[offsets[0] : offsets[-1]]
        return [values.is_null().to_numpy(zero_copy_only=False), offsets - offsets[0], data]
    if pa.types.is_fixed_size_list(values.type):
        return _flat_parts(values.flatten())
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        offsets = np.asarray(values.offsets) - values.offsets[0].as_py()  # a slice's offsets start anywhere
        return [offsets, *_flat_parts(values.flatten())]
    flat = values.to_numpy(zero_copy_only=False)
    return [flat.astype(str) if flat.dtype == object else flat]  # strings by value, not the pointers


def prepared_table(images, labels: np.ndarray, features: datasets.Features,
                   fonts: list[str] | None = None) -> pa.Table:
    """The Arrow table of prepared rows (as `build_dataset` or `build_encoded` holds them), built without
    a Dataset: `images` are uint8 pixels [N, C, H, W] for raw features, a list of bytes for encoded ones."""
    schema = features.arrow_schema
    if IMAGE in features:
        data = pa.array(list(images), type=pa.binary())
        image = pa.StructArray.from_arrays([data, pa.nulls(len(data), pa.string())], names=["bytes", "path"])
        columns = [image.cast(schema.field(IMAGE).type)]
    else:
        pixels_type = schema.field(PIXELS).type
        columns = [pa.ExtensionArray.from_storage(pixels_type, _pixel_lists(images).cast(pixels_type.storage_type))]
    columns.append(pa.array(np.asarray(labels, dtype=np.int64)))
    if fonts is not None:
        columns.append(pa.array(fonts, type=pa.string()))
    return pa.Table.from_arrays(columns, schema=schema)


def write_arrow(table: pa.Table, features: datasets.Features, path: Path) -> None:
    """Prepared rows as one Arrow file that `datasets` maps back (written by datasets' own writer)."""
    from datasets.arrow_writer import ArrowWriter

    writer = ArrowWriter(features=features, path=str(path))
    try:
        writer.write_table(table)
        writer.finalize()
    finally:
        writer.close()


def save_prepared(dsdict: datasets.DatasetDict, path: str | os.PathLike) -> None:
    """Write `dsdict` to `path`, byte-identical for identical data, replacing `path` atomically.

    datasets writes each split's fingerprint into state.json, and that fingerprint follows the
    dataset's history (file mtimes, hashed transforms); a content hash makes equal data give
    equal bytes. The folder is written as a sibling and renamed into place. (Held in memory: for
    the few-shot target; the source is written a part at a time by `tlpipe.data.shards`.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    fixed = {}
    for split, ds in dsdict.items():
        table = as_table(ds)
        fixed[split] = datasets.Dataset(InMemoryTable(table), info=ds.info.copy(), split=ds.split,
                                        fingerprint=table_fingerprint(table))
    # An empty split would get zero shards, which load_from_disk cannot read back.
    shards = {split: 1 if len(ds) == 0 else None for split, ds in fixed.items()}
    try:
        datasets.DatasetDict(fixed).save_to_disk(str(tmp), num_shards=shards)
        replace_path(tmp, path)
    finally:
        remove_path(tmp)


def load_prepared(path: str | os.PathLike) -> datasets.DatasetDict:
    """The DatasetDict that `save_prepared` wrote at `path` (memory-mapped)."""
    if not (Path(path) / "dataset_dict.json").is_file():
        raise ValueError(f"no prepared dataset at {str(path)!r} (no dataset_dict.json there)")
    return datasets.load_from_disk(str(path))
