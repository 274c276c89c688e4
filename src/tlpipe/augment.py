"""Cheap batch augmentation on float image tensors (any device), for self-supervised distillation."""

import math

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
