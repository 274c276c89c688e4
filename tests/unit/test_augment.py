import math
from dataclasses import replace

import pytest
import torch

from tlpipe.data.augment import (
    ViewConfig,
    adjust_intensity,
    augment_batch,
    gaussian_blur,
    make_view,
    random_affine_matrices,
    random_crop_matrices,
)

NO_CHANGE = dict(max_rotate_deg=0.0, scale_range=(1.0, 1.0), max_shear=0.0, max_translate=0.0, noise_std=0.0)


def images(batch: int = 6, channels: int = 1, size: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.full((batch, channels, size, size), -1.0)
    x[:, :, 4:12, 6:10] = torch.rand(batch, channels, 8, 4) * 2 - 1  # a blob of "ink" on black
    return x


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_input_untouched(channels):
    x = images(channels=channels)
    before = x.clone()
    out = augment_batch(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)


def test_zero_magnitudes_are_the_identity():
    x = images()
    torch.testing.assert_close(augment_batch(x, **NO_CHANGE), x, atol=1e-5, rtol=0)


def test_reproducible_with_a_generator_and_different_per_image():
    x = images()[:1].repeat(6, 1, 1, 1)  # six copies of one image
    a = augment_batch(x, generator=torch.Generator().manual_seed(3))
    b = augment_batch(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_background_fill_is_black():
    # a pure shift pulls in pixels from outside the image: they are `fill`, not 0
    x = torch.full((4, 1, 16, 16), -1.0)
    out = augment_batch(x, **{**NO_CHANGE, "max_translate": 0.5}, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize(("scale", "expected"), [(2.0, 0.5), (0.5, 2.0)])
def test_affine_matrices_zoom(scale, expected):
    theta = random_affine_matrices(3, max_rotate_deg=0.0, scale_range=(scale, scale), max_shear=0.0,
                                   max_translate=0.0)
    torch.testing.assert_close(theta, torch.tensor([[expected, 0.0, 0.0], [0.0, expected, 0.0]]).expand(3, 2, 3))


def test_noise_has_the_requested_scale():
    x = torch.zeros(64, 1, 16, 16)
    out = augment_batch(x, **{**NO_CHANGE, "noise_std": 0.1, "fill": 0.0}, generator=torch.Generator().manual_seed(0))
    assert out.std().item() == pytest.approx(0.1, rel=0.05)


# --- SSL views ------------------------------------------------------------------------------------

IDENTITY_VIEW = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), max_rotate_deg=0.0, max_shear=0.0,
                           blur_prob=0.0, brightness=0.0, contrast=0.0, noise_std=0.0)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("channels", "dtype"), [(1, torch.float32), (3, torch.float32), (1, torch.float64)])
def test_view_shape_dtype_device_and_input_untouched(device, channels, dtype):
    x = images(channels=channels, size=32).to(device, dtype)
    before = x.clone()
    out = make_view(x, generator=generator(0, device))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("device", DEVICES)
def test_view_reproducible_with_a_generator_and_different_across_seeds_and_images(device):
    x = images()[:1].repeat(6, 1, 1, 1).to(device)  # six copies of one image
    a = make_view(x, generator=generator(3, device))
    b = make_view(x, generator=generator(3, device))
    c = make_view(x, generator=generator(4, device))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])


def test_full_crop_and_no_other_transform_is_the_identity():
    x = images(size=32)
    torch.testing.assert_close(make_view(x, IDENTITY_VIEW, generator=generator(0)), x, atol=1e-5, rtol=0)


def test_black_image_stays_black_under_crop_warp_blur_and_jitter():
    # background pulled in by the warp is `fill`, blur keeps a constant, brightness is anchored at
    # black and contrast leaves a constant image alone
    x = torch.full((8, 1, 16, 16), -1.0)
    config = ViewConfig(blur_prob=1.0, noise_std=0.0, crop_scale=(0.2, 1.0), max_rotate_deg=30.0)
    torch.testing.assert_close(make_view(x, config, generator=generator(0)), x)


def test_crop_matrices_keep_the_crop_inside_the_image_with_the_drawn_area():
    config = ViewConfig(crop_scale=(0.3, 0.6), crop_ratio=(0.5, 2.0), max_rotate_deg=0.0, max_shear=0.0)
    theta = random_crop_matrices(2000, config, generator=generator(0))
    half_w, half_h, shear = theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 1]
    area = half_w * half_h  # the crop's fraction of the [-1, 1]^2 square
    assert shear.abs().max() == 0 and (half_w <= 1).all() and (half_h <= 1).all()
    assert area.min() >= 0.3 * 0.5 - 1e-6 and area.max() <= 0.6 + 1e-6  # clipping to the image may shrink it
    assert (theta[:, 0, 2].abs() <= 1 - half_w + 1e-6).all() and (theta[:, 1, 2].abs() <= 1 - half_h + 1e-6).all()
    ratio = half_w / half_h
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5


def test_quarter_area_crop_at_a_known_place():
    # a 0.25-area square crop is half the width: theta = [[0.5, 0, cx], [0, 0.5, cy]]
    config = ViewConfig(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), max_rotate_deg=0.0, max_shear=0.0)
    theta = random_crop_matrices(5, config, generator=generator(1))
    torch.testing.assert_close(theta[:, :, :2], torch.tensor([[0.5, 0.0], [0.0, 0.5]]).expand(5, 2, 2))
    assert (theta[:, :, 2].abs() <= 0.5).all()


def test_rotation_keeps_the_crop_area():
    config = ViewConfig(crop_scale=(0.5, 0.5), crop_ratio=(1.0, 1.0), max_rotate_deg=45.0, max_shear=0.0)
    theta = random_crop_matrices(100, config, generator=generator(2))
    torch.testing.assert_close(torch.linalg.det(theta[:, :, :2]), torch.full((100,), 0.5))


def _reference_blur(image: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """One [C, H, W] image, a 2-d Gaussian written out pixel by pixel with reflected indices."""
    offsets = range(-radius, radius + 1)
    weights = {(i, j): math.exp(-(i * i + j * j) / (2 * sigma * sigma)) for i in offsets for j in offsets}
    total = sum(weights.values())
    _, height, width = image.shape

    def reflect(k: int, n: int) -> int:
        return -k if k < 0 else 2 * (n - 1) - k if k >= n else k

    out = torch.zeros_like(image)
    for r in range(height):
        for c in range(width):
            out[:, r, c] = sum(w * image[:, reflect(r + i, height), reflect(c + j, width)]
                               for (i, j), w in weights.items()) / total
    return out


def test_blur_matches_a_per_pixel_reference_with_one_sigma_per_image():
    x = torch.randn(3, 2, 7, 6, dtype=torch.float64, generator=generator(0))
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    out = gaussian_blur(x, sigma, radius=3)
    for i in range(3):
        torch.testing.assert_close(out[i], _reference_blur(x[i], sigma[i].item(), 3))


@pytest.mark.parametrize("sigma", [0.0, 1e-3])
def test_blur_with_vanishing_sigma_is_the_identity(sigma):
    x = images()
    torch.testing.assert_close(gaussian_blur(x, torch.full((len(x),), sigma), radius=3), x)


def test_blur_keeps_constants_and_clips_the_radius_to_small_images():
    x = torch.full((2, 1, 3, 3), 0.25)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([5.0, 0.5]), radius=15), x)


def test_brightness_and_contrast_formulas_on_a_constant_image():
    x = torch.full((3, 1, 4, 4), 0.2)
    out = adjust_intensity(x, torch.tensor([1.0, 0.5, 1.5]), torch.tensor([0.3, 1.0, 1.7]), fill=-1.0)
    # brightness: fill + b (x - fill); contrast leaves a constant at its own mean
    expected = torch.tensor([0.2, -1 + 0.5 * 1.2, -1 + 1.5 * 1.2])[:, None, None, None].expand_as(x)
    torch.testing.assert_close(out, expected)


def test_contrast_scales_deviations_from_the_image_mean():
    x = torch.tensor([[[[-1.0, 1.0], [-1.0, -1.0]]]])  # mean -0.5
    out = adjust_intensity(x, torch.ones(1), torch.tensor([0.5]), fill=-1.0)
    torch.testing.assert_close(out, torch.tensor([[[[-0.75, 0.25], [-0.75, -0.75]]]]))


def test_view_brightness_on_a_constant_image_stays_constant_within_the_range():
    x = torch.full((64, 1, 8, 8), 0.5)
    config = replace(IDENTITY_VIEW, brightness=0.4)
    out = make_view(x, config, generator=generator(0))
    per_image = out.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.min() >= -1 + 0.6 * 1.5 - 1e-6 and per_image.max() <= -1 + 1.4 * 1.5 + 1e-6
    assert per_image[:, 0].std() > 0.1  # the factor differs per image


def test_view_noise_has_the_requested_scale():
    x = torch.zeros(64, 1, 16, 16)
    config = replace(IDENTITY_VIEW, noise_std=0.1, fill=0.0)
    assert make_view(x, config, generator=generator(0)).std().item() == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize(
    ("field", "value"),
    [("crop_scale", (0.0, 1.0)), ("crop_scale", (0.5, 1.2)), ("crop_scale", (0.8, 0.5)), ("crop_ratio", (0.0, 1.0)),
     ("max_rotate_deg", -1.0), ("max_shear", -0.1), ("blur_prob", 1.5), ("blur_sigma", (-0.1, 1.0)),
     ("brightness", 1.5), ("contrast", -0.1), ("noise_std", float("nan"))],
)
def test_view_config_rejects_values_outside_their_range(field, value):
    with pytest.raises(ValueError, match=field):
        ViewConfig(**{field: value})


def test_make_view_rejects_a_non_image_tensor():
    with pytest.raises(ValueError, match="x must be"):
        make_view(torch.zeros(4, 16, 16))
