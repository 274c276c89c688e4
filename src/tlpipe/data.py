"""Prepared image datasets: the built-in glyph source and digits target, other datasets, splits.

Every dataset leaves this module in one format: `pixels` = Array3D (C, H, W) uint8, `label` =
ClassLabel, and for glyphs a `font` string column. Built-in images are white ink on black; other
datasets keep the polarity they come with (MNIST-like data already matches).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from tlpipe.glyphs import GLYPH_CHARSETS, glyph_charset, render_class, upsample_levels
from tlpipe.io import remove_path, replace_path

__all__ = [
    "GLYPH_CHARSETS", "glyph_charset", "render_glyphs", "load_digits_dataset", "load_image_dataset",
    "labels_of", "to_arrays", "save_prepared", "load_prepared",
    "prepared_features",
]  # fmt: skip

PIXELS, LABEL, FONT = "pixels", "label", "font"
_MIN_IMAGE_SIZE = 8


def prepared_features(
    label_names: list[str], *, channels: int, image_size: int, with_font: bool = False
) -> datasets.Features:
    """The features of the prepared format (see the module docstring)."""
    features = {
        PIXELS: datasets.Array3D(shape=(channels, image_size, image_size), dtype="uint8"),
        LABEL: datasets.ClassLabel(names=list(label_names)),
    }
    if with_font:
        features[FONT] = datasets.Value("string")
    return datasets.Features(features)


def _build_dataset(
    pixels: np.ndarray, labels: np.ndarray, label_names: list[str], fonts: list[str] | None = None
) -> datasets.Dataset:
    """A prepared in-memory dataset from uint8 [N, C, H, H] pixels and int [N] label ids."""
    # Nested fixed-size lists wrap the numpy buffer without copying; from_dict would otherwise
    # convert row by row (~10x slower). datasets fingerprints in-memory tables by content.
    column = pa.array(np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))
    for size in pixels.shape[:0:-1]:
        column = pa.FixedSizeListArray.from_arrays(column, size)
    mapping = {PIXELS: column, LABEL: np.asarray(labels, dtype=np.int64)}
    if fonts is not None:
        mapping[FONT] = fonts
    channels, image_size = pixels.shape[1:3]
    features = prepared_features(
        label_names, channels=channels, image_size=image_size, with_font=fonts is not None
    )
    return datasets.Dataset.from_dict(mapping, features=features)


def _check_image_size(image_size: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small; it must be >= {_MIN_IMAGE_SIZE}")


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
    if images_per_class < 1:
        raise ValueError(f"images_per_class={images_per_class} must be >= 1")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0")
    if not 0.0 <= degrade_fraction <= 1.0:
        raise ValueError(f"degrade_fraction={degrade_fraction} must be in [0, 1]")
    _check_image_size(image_size)
    options = dict(seed=seed, image_size=image_size, degrade_fraction=degrade_fraction)
    rendered = [render_class(char, count=images_per_class, **options) for char in chars]
    pixels = np.concatenate([images for images, _ in rendered])[:, None]
    labels = np.repeat(np.arange(len(chars)), images_per_class)
    fonts = [name for _, names in rendered for name in names]
    return _build_dataset(pixels, labels, chars, fonts)


def load_digits_dataset(*, image_size: int = 32) -> datasets.Dataset:
    """The built-in target: scikit-learn's 1797 8x8 handwritten digits, upsampled bilinearly.

    Uses the same upsampling as the glyphs' degradation, so degraded glyphs look like digits.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    _check_image_size(image_size)
    digits = load_digits()
    pixels = upsample_levels(digits.images, image_size)[:, None]
    return _build_dataset(pixels, digits.target, [str(d) for d in range(10)])


def _looks_like_path(name: str) -> bool:
    first = Path(name).expanduser().parts[0] if name else ""
    return name.startswith((".", "/", "~")) or name.endswith(".parquet") or Path(first).exists()


def _open_split(name: str, split: str) -> datasets.Dataset:
    """One split of a local save_to_disk/imagefolder/parquet dataset or of a hub dataset."""
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_like_path(name):
            raise ValueError(f"dataset path {name!r} does not exist")
        try:
            return datasets.load_dataset(name, split=split)
        except (ConnectionError, FileNotFoundError) as e:  # incl. DatasetNotFoundError
            raise ValueError(
                f"dataset {name!r} is not a local path and could not be loaded from the Hugging"
                f" Face hub: {str(e).splitlines()[0]}"
            ) from e
    if path.is_file():  # a lone parquet file is its own only split
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
    elif next(path.rglob("*.parquet"), None) is not None:
        loaded = datasets.load_dataset("parquet", data_dir=str(path))
    else:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    if isinstance(loaded, datasets.Dataset):  # a single saved Dataset is its own only split
        return loaded
    if split not in loaded:
        raise ValueError(f"split={split!r} not in dataset {name!r}; available: {', '.join(loaded)}")
    return loaded[split]


def _label_ids(raw: datasets.Dataset, column: str) -> tuple[np.ndarray, list[str]]:
    """int64 label ids and class names: a ClassLabel's own, else the sorted unique values."""
    values = np.asarray(raw.with_format("numpy", columns=[column])[:][column])
    feature = raw.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return values.astype(np.int64), list(feature.names)
    if values.dtype.kind not in "iuUSO" or values.ndim != 1:
        raise ValueError(f"label column {column!r} holds {feature}; use ints, strings, ClassLabel")
    uniques, ids = np.unique(values, return_inverse=True)
    return ids.astype(np.int64), [str(value) for value in uniques]


def _images_to_array(raw: datasets.Dataset, column: str, size: int, channels: int) -> np.ndarray:
    """Decode, convert ('L' or 'RGB') and resize every image: uint8 [N, C, size, size]."""
    from PIL import Image

    if not isinstance(raw.features[column], datasets.Image):
        try:  # e.g. a {bytes, path} struct from a parquet file written without datasets' metadata
            raw = raw.cast_column(column, datasets.Image())
        except (TypeError, ValueError) as err:
            raise ValueError(f"column {column!r} holds {raw.features[column]}, not images") from err
    mode = "L" if channels == 1 else "RGB"
    pixels = np.empty((len(raw), size, size, channels), dtype=np.uint8)
    row = 0
    for batch in raw.select_columns([column]).iter(batch_size=256):
        for image in batch[column]:
            resized = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            pixels[row] = np.asarray(resized).reshape(size, size, channels)
            row += 1
    return pixels.transpose(0, 3, 1, 2).copy()


def load_image_dataset(
    name: str | os.PathLike, *, split: str = "train", image_column: str = "image",
    label_column: str = "label", image_size: int = 32, channels: int = 1,
) -> datasets.Dataset:  # fmt: skip
    """Any image classification dataset, converted to the prepared format.

    Args:
        name: A `save_to_disk` folder, an imagefolder folder (one subfolder per class), a parquet
            file or folder of parquet files, or else a Hugging Face hub id.
        split: Split to read; a saved single `Dataset` or a lone parquet file is its only split.
        image_column: Column holding the images.
        label_column: Column holding the labels (ClassLabel, ints or strings).
        image_size: Output height and width (images are resized, not cropped).
        channels: 1 (grayscale) or 3 (RGB). Polarity is kept as it is in the data.

    Returns:
        A prepared dataset; class names are the ClassLabel's or the sorted unique label values.

    Raises:
        ValueError: On a missing path, split or column, or invalid `channels`/`image_size`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} is not supported; valid: 1 (grayscale), 3 (RGB)")
    _check_image_size(image_size)
    name = os.fspath(name)
    raw = _open_split(name, split)
    for role, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in raw.column_names:
            raise ValueError(
                f"{role}={column!r} not in dataset {name!r}; columns: {', '.join(raw.column_names)}"
            )
    labels, names = _label_ids(raw, label_column)
    return _build_dataset(_images_to_array(raw, image_column, image_size, channels), labels, names)


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
    """uint8 pixels [N, C, H, W] and int64 labels [N] of a prepared dataset."""
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
    if pa.types.is_fixed_size_list(values.type):
        return _flat_parts(values.flatten())
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        offsets = np.asarray(values.offsets) - values.offsets[0].as_py()  # a slice's offsets start anywhere
        return [offsets, *_flat_parts(values.flatten())]
    flat = values.to_numpy(zero_copy_only=False)
    return [flat.astype(str) if flat.dtype == object else flat]  # strings by value, not the pointers


def save_prepared(dsdict: datasets.DatasetDict, path: str | os.PathLike) -> None:
    """Write `dsdict` to `path`, byte-identical for identical data, replacing `path` atomically.

    datasets writes each split's fingerprint into state.json, and that fingerprint follows the
    dataset's history (file mtimes, hashed transforms); a content hash makes equal data give
    equal bytes. The folder is written as a sibling and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
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
