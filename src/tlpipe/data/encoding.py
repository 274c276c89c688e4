"""What an image is stored as when it is kept encoded (photos at real resolution).

A source file that is already JPEG, PNG or WebP, in a mode every decoder reads (grayscale or RGB) and
no larger than asked (its shorter side at most `max_side`), is kept byte for byte. Anything else is
decoded once, its shorter side resized to `max_side` (never enlarged), and encoded as JPEG at
`quality`, as FFCV's `max_resolution` does: a training crop of 224 is taken from at most 256 px. Raw
pixels stay the better choice for small images (`choose_storage`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

KEPT_FORMATS = ("JPEG", "PNG", "WEBP")
KEPT_MODES = ("L", "RGB")
RAW_UP_TO = 64  # `auto` storage: raw pixels at or below this image size, encoded above
STORAGES = ("raw", "encoded", "auto")
CROP_FRACTION = 0.875  # a centre crop of 224 out of 256, as evaluation takes it


def stored_side(image_size: int) -> int:
    """The shorter side an image is stored at for training and evaluation at `image_size` (256 for 224)."""
    return round(image_size / CROP_FRACTION)


def choose_storage(storage: str, image_size: int) -> str:
    """`raw` or `encoded` for a `prepare.storage` setting (`auto` by the image size)."""
    if storage not in STORAGES:
        raise ValueError(f"storage={storage!r}; allowed: {', '.join(STORAGES)}")
    if storage == "auto":
        return "raw" if image_size <= RAW_UP_TO else "encoded"
    return storage


@dataclass(frozen=True)
class Encoded:
    data: bytes
    kept: bool  # the source's own bytes
    width: int
    height: int


def encode(source: bytes, *, max_side: int, quality: int = 90) -> Encoded:
    """The bytes to store for one image file's bytes (see the module docstring).

    Raises:
        ValueError: the bytes are no image PIL can read, or the arguments are out of range.
    """
    from PIL import Image

    if max_side < 8:
        raise ValueError(f"max_side={max_side} must be >= 8")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality} must be in [1, 100]")
    try:
        with Image.open(io.BytesIO(source)) as image:
            image.load()
            if image.format in KEPT_FORMATS and image.mode in KEPT_MODES and min(image.size) <= max_side \
                    and getattr(image, "n_frames", 1) == 1:
                return Encoded(bytes(source), True, *image.size)
            converted = image.convert("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"not an image PIL can read ({type(err).__name__}: {err})") from None
    width, height = converted.size
    scale = max_side / min(width, height)
    if scale < 1:
        converted = converted.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                     Image.Resampling.BILINEAR, reducing_gap=None)
    out = io.BytesIO()
    converted.save(out, "JPEG", quality=quality)
    return Encoded(out.getvalue(), False, *converted.size)


def encode_pixels(pixels, *, quality: int = 90) -> bytes:
    """uint8 pixels [C, H, W] (C = 1 or 3) as JPEG bytes at `quality` (images made here, e.g. the glyphs)."""
    import numpy as np
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"quality={quality} must be in [1, 100]")
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[0] not in (1, 3):
        raise ValueError(f"pixels of shape {pixels.shape}; expected [C, H, W] with C = 1 or 3")
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()
