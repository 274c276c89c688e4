"""The field's augmentation recipes at real resolution, as torchvision transforms v2 pipelines.

Each recipe takes a uint8 image tensor [C, H, W] of any size (as `torchvision.io.decode_image` gives
it; C = 1 or 3) and returns float32 [C, size, size], normalised per channel. The random steps work on
uint8 (colour jitter and solarize as the papers' code does on 8-bit images), then one conversion to
float and the normalisation.

- `supervised`: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip, the ImageNet
  training recipe (He et al. 2016; torchvision's reference scripts); `crop_flip` is its uint8 part,
  which the training loops apply (`tlpipe.data.images.Images.augmented`).
- `evaluation`: resize the shorter side to size / 0.875 (256 for 224), centre crop `size`; its uint8
  part `centre_view` is how an encoded split is read.
- `simclr_view`: Chen et al. 2020, Appendix A: crop (0.08-1), flip, colour jitter of strength 1
  (brightness, contrast, saturation 0.8, hue 0.2) applied with p 0.8, grayscale p 0.2, Gaussian blur
  with a kernel of 10 % of the size and sigma 0.1-2 applied with p 0.5.
- `byol_views`: Grill et al. 2020, Table 6: the two asymmetric views: crop (0.08-1), flip, colour
  jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur p 1.0 / 0.1, solarize p 0 / 0.2.

The random draws come from torch's global generator, as in torchvision; `tlpipe.data.decoded` seeds it
per image so that the draws do not depend on the number of loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from tlpipe.data.encoding import stored_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of the pixels in [0, 1]; one value each for grayscale images."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise ValueError(f"mean {self.mean} and std {self.std} must both have 1 or 3 values")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive")

    @classmethod
    def for_channels(cls, channels: int) -> "Normalization":
        """ImageNet's statistics (their average for one channel)."""
        if channels == 3:
            return cls()
        if channels == 1:
            return cls((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
        raise ValueError(f"channels={channels}: images have 1 or 3 channels")


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size={size!r} must be an int >= 8")


def _to_float(norm: Normalization) -> list:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(norm.mean), list(norm.std))]


def blur_kernel(size: int) -> int:
    """SimCLR's and BYOL's blur kernel: 10 % of the image side, odd (23 at 224)."""
    kernel = max(3, int(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def crop_flip(size: int, *, scale: tuple[float, float] = CROP_SCALE) -> v2.Compose:
    """The supervised recipe's random steps on uint8: RandomResizedCrop to `size`, horizontal flip."""
    _check_size(size)
    return v2.Compose([v2.RandomResizedCrop(size, scale=scale, antialias=True), v2.RandomHorizontalFlip()])


AUGMENTATIONS = ("auto", "none", "crop_flip")


def training_augmentation(setting: str, size: int, *, encoded: bool) -> v2.Compose | None:
    """The uint8 transform a training stage's `augment` setting names: `crop_flip`, `none` (None), or
    `auto`: crop_flip for photos (an encoded split), none for raw pixels (the small built-in images)."""
    if setting not in AUGMENTATIONS:
        raise ValueError(f"augment={setting!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if setting == "crop_flip" or (setting == "auto" and encoded):
        return crop_flip(size)
    return None


def supervised(size: int, norm: Normalization | None = None, *, scale: tuple[float, float] = CROP_SCALE) -> v2.Compose:
    norm = norm or Normalization()
    return v2.Compose([*crop_flip(size, scale=scale).transforms, *_to_float(norm)])


def centre_view(size: int) -> v2.Compose:
    """Evaluation's geometry on uint8: the shorter side resized to size / 0.875, the centre `size` crop."""
    _check_size(size)
    return v2.Compose([v2.Resize(stored_side(size), antialias=True), v2.CenterCrop(size)])


def evaluation(size: int, norm: Normalization | None = None) -> v2.Compose:
    norm = norm or Normalization()
    return v2.Compose([*centre_view(size).transforms, *_to_float(norm)])


def _view(size: int, norm: Normalization, *, jitter: tuple[float, float, float, float], blur_p: float,
          solarize_p: float) -> v2.Compose:
    steps = [
        v2.RandomResizedCrop(size, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur_p:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # on uint8: pixels >= 128 inverted
    return v2.Compose([*steps, *_to_float(norm)])


def simclr_view(size: int, norm: Normalization | None = None, *, strength: float = 1.0) -> v2.Compose:
    """One SimCLR view; the two views of an image are two draws of it."""
    _check_size(size)
    if not 0 < strength <= 1.5:
        raise ValueError(f"strength={strength} must be in (0, 1.5]")
    s = strength
    return _view(size, norm or Normalization(), jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), blur_p=0.5, solarize_p=0.0)


def byol_views(size: int, norm: Normalization | None = None) -> tuple[v2.Compose, v2.Compose]:
    """BYOL's two views (the first always blurred, the second sometimes solarized)."""
    _check_size(size)
    norm = norm or Normalization()
    jitter = (0.4, 0.4, 0.2, 0.1)
    return (_view(size, norm, jitter=jitter, blur_p=1.0, solarize_p=0.0),
            _view(size, norm, jitter=jitter, blur_p=0.1, solarize_p=0.2))
