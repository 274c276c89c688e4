"""How a prepared split holds its images (`Layout`): raw uint8 pixels, or encoded image files' bytes
with the geometry they are read at recorded in the split's description (see `tlpipe.data.storage`)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import datasets

from tlpipe.data import encoding

__all__ = ["PIXELS", "IMAGE", "LABEL", "FONT", "Layout", "layout_of", "prepared_features", "check_image_size"]

PIXELS, IMAGE, LABEL, FONT = "pixels", "image", "label", "font"
_MIN_IMAGE_SIZE = 8
_LAYOUT_KEY = "tlpipe_layout"  # the key of an encoded split's description (a JSON object)


@dataclass(frozen=True)
class Layout:
    """How a prepared split holds its images: `raw` pixels or `encoded` bytes, decoded to [channels,
    image_size, image_size] (`quality`: the JPEG quality of images encoded by `prepare`)."""

    storage: str
    channels: int
    image_size: int
    quality: int = 90

    def __post_init__(self) -> None:
        if self.storage not in ("raw", "encoded"):
            raise ValueError(f"storage={self.storage!r}; a prepared split is raw or encoded")
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: images have 1 or 3 channels")
        check_image_size(self.image_size)
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality={self.quality} must be in [1, 100]")

    @classmethod
    def chosen(cls, storage: str, *, channels: int, image_size: int, quality: int = 90) -> "Layout":
        """The layout for a `prepare.storage` setting (raw, encoded or auto: by the image size)."""
        return cls(encoding.choose_storage(storage, image_size), channels, image_size, quality)

    @property
    def encoded(self) -> bool:
        return self.storage == "encoded"

    @property
    def item_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def features(self, label_names: list[str], *, with_font: bool = False) -> datasets.Features:
        if not self.encoded:
            return prepared_features(label_names, channels=self.channels, image_size=self.image_size,
                                     with_font=with_font)
        features = {IMAGE: datasets.Image(), LABEL: datasets.ClassLabel(names=list(label_names))}
        return datasets.Features({**features, **({FONT: datasets.Value("string")} if with_font else {})})

    def info(self, features: datasets.Features) -> datasets.DatasetInfo:
        """The split's metadata: an encoded split records its layout in the description (a raw one
        needs none: its feature has the shape)."""
        if not self.encoded:
            return datasets.DatasetInfo(features=features)
        layout = {"storage": self.storage, "channels": self.channels, "image_size": self.image_size,
                  "quality": self.quality}
        return datasets.DatasetInfo(features=features, description=json.dumps({_LAYOUT_KEY: layout}, sort_keys=True))


def layout_of(ds: datasets.Dataset) -> Layout:
    """The layout of a prepared split.

    Raises:
        ValueError: `ds` is not a prepared split (neither a pixels column nor an encoded image column
            with its layout recorded).
    """
    if PIXELS in ds.features:
        channels, size, _ = ds.features[PIXELS].shape
        return Layout("raw", channels, size)
    if IMAGE in ds.features:
        try:
            return Layout(**json.loads(ds.info.description or "{}")[_LAYOUT_KEY])
        except (KeyError, TypeError, ValueError):
            pass
    raise ValueError(f"not a prepared split: columns {', '.join(ds.column_names)}, no recorded layout "
                     "(prepare writes a pixels column, or an image column with its layout)")


def prepared_features(
    label_names: list[str], *, channels: int, image_size: int, with_font: bool = False
) -> datasets.Features:
    """The features of the prepared format (raw pixels; `Layout.features` for either layout)."""
    features = {
        PIXELS: datasets.Array3D(shape=(channels, image_size, image_size), dtype="uint8"),
        LABEL: datasets.ClassLabel(names=list(label_names)),
    }
    if with_font:
        features[FONT] = datasets.Value("string")
    return datasets.Features(features)


def check_image_size(image_size: int) -> None:
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size} is too small; it must be >= {_MIN_IMAGE_SIZE}")

