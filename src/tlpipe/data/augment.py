"""Cheap batch augmentation on float image tensors (any device).

`augment_batch` is the single light view of self-supervised distillation; `make_view` with a
`ViewConfig` draws the stronger views of SimCLR/BYOL pretraining (crop, blur, intensity jitter).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def random_affine_matrices(
    batch: int,
    *,
    max_rotate_deg: float,
    scale_range: tuple[float, float],
    max_shear: float,
    max_translate: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random affine maps from output to input coordinates, [B, 2, 3], for `F.affine_grid`.

    Coordinates are normalised to [-1, 1]; a scale above 1 zooms in (a crop resized to full
    size), below 1 zooms out. Translations are fractions of the half-width.
    """

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    angle = uniform(-max_rotate_deg, max_rotate_deg) * (math.pi / 180.0)
    inverse_scale = 1.0 / uniform(*scale_range)  # the grid maps output -> input
    shear = uniform(-max_shear, max_shear)
    cos, sin = torch.cos(angle) * inverse_scale, torch.sin(angle) * inverse_scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, uniform(-max_translate, max_translate)], dim=1),
        torch.stack([sin, cos + shear * sin, uniform(-max_translate, max_translate)], dim=1),
    ], dim=1)
    return theta


def augment_batch(
    x: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    max_rotate_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_shear: float = 0.1,
    max_translate: float = 0.12,
    noise_std: float = 0.05,
    fill: float = -1.0,
) -> torch.Tensor:
    """A random affine warp (rotation, zoom, shear, translation) and Gaussian noise per image.

    Args:
        x: float images [B, C, H, W] (any device); not modified.
        generator: a generator on x's device, for reproducible draws; None uses the global one.
        max_rotate_deg: rotation drawn from [-max, max] degrees.
        scale_range: zoom factor range; above 1 crops and resizes.
        max_shear: horizontal shear factor range [-max, max].
        max_translate: shift range as a fraction of the half-width (0.12 ~ 2 px at 32x32).
        noise_std: std of additive Gaussian noise, in the units of x.
        fill: value of pixels warped in from outside the image (-1.0 = black after `to_float`).

    Returns:
        Augmented images [B, C, H, W], same dtype and device.
    """
    theta = random_affine_matrices(
        x.shape[0], max_rotate_deg=max_rotate_deg, scale_range=scale_range, max_shear=max_shear,
        max_translate=max_translate, generator=generator, device=x.device,
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # grid_sample pads with 0, so shift the background to 0 first and back after.
    warped = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    if noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        warped = warped + noise_std * noise
    return warped


@dataclass(frozen=True)
class ViewConfig:
    """How `make_view` draws one self-supervised view; the defaults suit 32x32 glyphs.

    The SimCLR recipe (Chen et al., ICML 2020, Appendix A) scaled down: crops keep at least
    40 % of the area (an 8 % crop of a 32x32 glyph is mostly background), colour jitter becomes
    brightness/contrast (grayscale), and the blur sigma is scaled to the image size.

    Attributes:
        crop_scale: crop area as a fraction of the image, drawn uniformly; 0 < low <= high <= 1.
        crop_ratio: crop aspect ratio (width / height), drawn log-uniformly; 0 < low <= high.
        max_rotate_deg: rotation drawn from [-max, max] degrees.
        max_shear: horizontal shear factor drawn from [-max, max].
        blur_prob: probability that an image is blurred, in [0, 1].
        blur_sigma: Gaussian blur sigma range in pixels; 0 <= low <= high.
        brightness: blend factor with black drawn from [1 - b, 1 + b]; b in [0, 1].
        contrast: blend factor with the image mean drawn from [1 - c, 1 + c]; c in [0, 1].
        noise_std: std of additive Gaussian noise (>= 0), in the units of the images.
        fill: black, the value of pixels warped in from outside and the brightness anchor
            (-1.0 after `runtime.to_float`).
    """

    crop_scale: tuple[float, float] = (0.4, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotate_deg: float = 10.0
    max_shear: float = 0.1
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    brightness: float = 0.4
    contrast: float = 0.4
    noise_std: float = 0.05
    fill: float = -1.0

    def __post_init__(self) -> None:
        checks = {
            "crop_scale": (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "0 < low <= high <= 1"),
            "crop_ratio": (0 < self.crop_ratio[0] <= self.crop_ratio[1] < math.inf, "0 < low <= high"),
            "max_rotate_deg": (0 <= self.max_rotate_deg <= 180, "[0, 180]"),
            "max_shear": (0 <= self.max_shear < math.inf, ">= 0"),
            "blur_prob": (0 <= self.blur_prob <= 1, "[0, 1]"),
            "blur_sigma": (0 <= self.blur_sigma[0] <= self.blur_sigma[1] < math.inf, "0 <= low <= high"),
            "brightness": (0 <= self.brightness <= 1, "[0, 1]"),
            "contrast": (0 <= self.contrast <= 1, "[0, 1]"),
            "noise_std": (0 <= self.noise_std < math.inf, ">= 0"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"{name}={getattr(self, name)!r} is outside the valid range {valid}")


def random_crop_matrices(
    batch: int,
    config: ViewConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Random resized crops with rotation and shear, [B, 2, 3] output -> input maps for `F.affine_grid`.

    A crop of area fraction s and aspect ratio r spans half-widths w = sqrt(s r), h = sqrt(s / r)
    (clipped to 1, the full image) in normalised coordinates, centred uniformly where it fits.
    The rotation/shear turns the output about its centre before it is mapped into the crop:
    theta = [diag(w, h) A | c].
    """
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    area = uniform(*config.crop_scale)
    ratio = torch.exp(uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])))
    half_sizes = torch.stack([(area * ratio).sqrt(), (area / ratio).sqrt()], dim=1).clamp(max=1.0)  # [B, 2]
    centres = (1.0 - half_sizes) * (2.0 * torch.rand(batch, 2, generator=generator, device=device) - 1.0)
    rotate_shear = random_affine_matrices(
        batch, max_rotate_deg=config.max_rotate_deg, scale_range=(1.0, 1.0), max_shear=config.max_shear,
        max_translate=0.0, generator=generator, device=device,
    )[:, :, :2]  # [B, 2, 2]
    return torch.cat([half_sizes[:, :, None] * rotate_shear, centres[:, :, None]], dim=2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, reflect padding.

    Args:
        x: float images [B, C, H, W].
        sigma: [B] standard deviations in pixels; sigma -> 0 gives the identity.
        radius: kernel half-width in pixels (kernel 2 * radius + 1), clipped to H - 1 and W - 1.

    Returns:
        Blurred images [B, C, H, W].
    """
    batch, channels, height, width = x.shape
    radius = max(0, min(radius, height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    # sigma floored so sigma = 0 gives exp(-inf) = 0 off-centre (a delta), not 0/0
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma.to(x.dtype).clamp(min=1e-6)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # [B*C, K]
    y = x.reshape(1, batch * channels, height, width)  # one depthwise conv, one kernel per image-channel
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=batch * channels)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=batch * channels)
    return y.reshape(batch, channels, height, width)


def adjust_intensity(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, fill: float) -> torch.Tensor:
    """Brightness then contrast, per image, as blends (torchvision's ColorJitter, no clamping).

    brightness: x' = fill + b (x - fill), a blend with black; contrast: x'' = m + c (x' - m) with
    m the mean of x' over (C, H, W), a blend with the image's mean grey.

    Args:
        x: float images [B, C, H, W].
        brightness: [B] factors b (1 = unchanged).
        contrast: [B] factors c (1 = unchanged).
        fill: the value of black.

    Returns:
        Adjusted images [B, C, H, W].
    """
    b = brightness.to(x.dtype)[:, None, None, None]
    c = contrast.to(x.dtype)[:, None, None, None]
    x = fill + b * (x - fill)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + c * (x - mean)


def make_view(
    x: torch.Tensor, config: ViewConfig = ViewConfig(), *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random self-supervised view per image: crop + rotate/shear, blur, brightness/contrast, noise.

    The SimCLR augmentation pipeline (Chen et al., ICML 2020, Sec. 3 and Appendix A) adapted to
    small grayscale images; the crop and the affine warp share one `grid_sample`. Every call
    draws the same number of random values whatever the config, in a fixed order, so a seeded
    generator gives the same views on the same device.

    Args:
        x: float images [B, C, H, W] (any device); not modified.
        config: the view distribution.
        generator: a generator on x's device, for reproducible draws; None uses the global one.

    Returns:
        Views [B, C, H, W], same dtype and device.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    batch, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, device=device)

    theta = random_crop_matrices(batch, config, generator=generator, device=device)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # grid_sample pads with 0, so shift the background to 0 first and back after.
    view = F.grid_sample(x - config.fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    view = view + config.fill
    blurred = uniform(0.0, 1.0) < config.blur_prob
    sigma = uniform(*config.blur_sigma)
    if config.blur_prob > 0 and config.blur_sigma[1] > 0:
        radius = math.ceil(3.0 * config.blur_sigma[1])  # +-3 sigma holds 99.7 % of the mass
        view = torch.where(blurred[:, None, None, None], gaussian_blur(view, sigma, radius), view)
    brightness = uniform(1.0 - config.brightness, 1.0 + config.brightness)
    contrast = uniform(1.0 - config.contrast, 1.0 + config.contrast)
    view = adjust_intensity(view, brightness, contrast, config.fill)
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    return view + config.noise_std * noise
