import pytest
import torch

from tlpipe.augment import augment_batch, random_affine_matrices

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
