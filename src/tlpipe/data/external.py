"""Image data sets from outside the project: a Hugging Face hub id, a `save_to_disk` folder, an
`imagefolder` folder or parquet files, converted to the prepared format (`tlpipe.data.storage`)."""

from __future__ import annotations

import io as bytes_io
import os
from pathlib import Path

import datasets
import numpy as np

from tlpipe.data import encoding
from tlpipe.data.storage import Layout, build_dataset, build_encoded, check_image_size


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
        _class_folders(path)
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    if isinstance(loaded, datasets.Dataset):  # a single saved Dataset is its own only split
        return loaded
    if split not in loaded:
        raise ValueError(f"split={split!r} not in dataset {name!r}; available: {', '.join(loaded)}")
    return loaded[split]


def label_ids(raw: datasets.Dataset, column: str) -> tuple[np.ndarray, list[str]]:
    """int64 label ids and class names: a ClassLabel's own, else the sorted unique values."""
    values = np.asarray(raw.with_format("numpy", columns=[column])[:][column])
    feature = raw.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return values.astype(np.int64), list(feature.names)
    if values.dtype.kind not in "iuUSO" or values.ndim != 1:
        raise ValueError(f"label column {column!r} holds {feature}; use ints, strings, ClassLabel")
    uniques, ids = np.unique(values, return_inverse=True)
    return ids.astype(np.int64), [str(value) for value in uniques]


def _undecoded(raw: datasets.Dataset, column: str) -> datasets.Dataset:
    """`raw` with `column` as undecoded images ({bytes, path}), so that each is decoded here and a bad
    file can be named."""
    if not isinstance(raw.features[column], datasets.Image):
        try:  # e.g. a {bytes, path} struct from a parquet file written without datasets' metadata
            raw = raw.cast_column(column, datasets.Image())
        except (TypeError, ValueError) as err:
            raise ValueError(f"column {column!r} holds {raw.features[column]}, not images") from err
    return raw.cast_column(column, datasets.Image(decode=False))


def _each_image(raw: datasets.Dataset, column: str, first_row: int, convert):
    """`convert(file bytes)` of every image of `raw`, in order.

    Raises:
        ValueError: naming the image (its file, else its row: `first_row` + its position) that does not decode.
    """
    from PIL import Image

    row = first_row
    for batch in _undecoded(raw, column).select_columns([column]).iter(batch_size=256):
        for encoded in batch[column]:
            try:
                data = encoded["bytes"] or Path(encoded["path"]).read_bytes()
                yield convert(data)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                where = encoded.get("path") or f"row {row}"
                raise ValueError(f"image {where} does not decode ({type(err).__name__}: {err})") from None
            row += 1


def images_to_array(raw: datasets.Dataset, column: str, size: int, channels: int, first_row: int = 0) -> np.ndarray:
    """Decode, convert ('L' or 'RGB') and resize every image: uint8 [N, C, size, size].

    Raises:
        ValueError: naming the image (its file, else its row: `first_row` + its position) that does not decode.
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"

    def resized(data: bytes) -> np.ndarray:
        with Image.open(bytes_io.BytesIO(data)) as image:
            return np.asarray(image.convert(mode).resize((size, size), Image.Resampling.BILINEAR))

    pixels = np.empty((len(raw), size, size, channels), dtype=np.uint8)
    for row, image in enumerate(_each_image(raw, column, first_row, resized)):
        pixels[row] = image.reshape(size, size, channels)
    return pixels.transpose(0, 3, 1, 2).copy()


def encoded_images(raw: datasets.Dataset, column: str, layout: Layout, first_row: int = 0) -> list[bytes]:
    """The bytes to store of every image (`encoding.encode`: kept when small enough, else resized to
    the layout's stored side and JPEG at its quality).

    Raises:
        ValueError: naming the image (its file, else its row) that does not decode.
    """
    max_side = encoding.stored_side(layout.image_size)
    return list(_each_image(raw, column, first_row,
                            lambda data: encoding.encode(data, max_side=max_side, quality=layout.quality).data))


def convert_images(raw: datasets.Dataset, column: str, layout: Layout, first_row: int = 0):
    """The images of `raw` as a split of `layout` stores them: uint8 pixels [N, C, H, W] (raw) or
    the bytes of each (encoded)."""
    if layout.encoded:
        return encoded_images(raw, column, layout, first_row)
    return images_to_array(raw, column, layout.image_size, layout.channels, first_row)


_SPLIT_FOLDERS = {"train", "test", "validation", "valid", "val", "dev", "eval"}  # imagefolder's split names


def _class_folders(path: Path) -> list[Path]:
    """The class folders of an imagefolder folder (inside its split folders, when it has them); each
    must hold a file (imagefolder would drop an empty one without a word, and a single one would
    leave no labels at all)."""
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and {f.name for f in folders} <= _SPLIT_FOLDERS:
        return [c for split in folders for c in _class_folders(split)]
    for folder in folders:
        if not any(f.is_file() for f in folder.rglob("*")):
            raise ValueError(f"class folder {folder.name!r} of {str(path)!r} holds no images")
    if len(folders) < 2:
        raise ValueError(f"{str(path)!r} has {len(folders)} class folder(s) "
                         f"({', '.join(f.name for f in folders) or 'none'}); an imagefolder needs one per class, at least 2")
    return folders


def load_image_dataset(
    name: str | os.PathLike, *, split: str = "train", image_column: str = "image",
    label_column: str = "label", image_size: int = 32, channels: int = 1, layout: Layout | None = None,
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
        layout: how to store the images (`storage.Layout`; its size and channels then stand for the
            two above); None: raw pixels.

    Returns:
        A prepared dataset; class names are the ClassLabel's or the sorted unique label values.

    Raises:
        ValueError: On a missing path, split or column, or invalid `channels`/`image_size`.
    """
    if layout is None:
        check_shape(image_size, channels)
        layout = Layout("raw", channels, image_size)
    raw = open_checked(name, split, image_column, label_column)
    labels, names = label_ids(raw, label_column)
    images = convert_images(raw, image_column, layout)
    return build_encoded(images, labels, names, layout) if layout.encoded else build_dataset(images, labels, names)


def check_shape(image_size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} is not supported; valid: 1 (grayscale), 3 (RGB)")
    check_image_size(image_size)


def open_checked(name: str | os.PathLike, split: str, image_column: str, label_column: str) -> datasets.Dataset:
    """One split of a data set (see `load_image_dataset`), undecoded, with both columns checked present."""
    name = os.fspath(name)
    raw = _open_split(name, split)
    for role, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in raw.column_names:
            raise ValueError(
                f"{role}={column!r} not in dataset {name!r}; columns: {', '.join(raw.column_names)}"
            )
    return raw
