import numpy as np
import pytest
import torch

from tlpipe.training.runtime import (
    autocast,
    device_settings,
    iter_batches,
    resolve_device,
    seed_everything,
    to_float,
)


def test_resolve_device_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device().type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", "cpu:0", "mps:1", ""])
def test_resolve_device_rejects_unknown_names_listing_options(name):
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_device_says_cuda_is_unavailable(name):
    with pytest.raises(ValueError, match="unavailable"):
        resolve_device(name)


@pytest.mark.parametrize(
    ("device_type", "precision", "channels_last", "pinned"),
    [("cuda", "bf16", True, True), ("cpu", "fp32", False, False), ("mps", "fp32", False, False)],
)
def test_device_settings(device_type, precision, channels_last, pinned):
    settings = device_settings(device_type)
    assert settings["precision"] == precision
    assert settings["autocast_dtype"] == (torch.bfloat16 if device_type == "cuda" else None)
    assert settings["channels_last"] is channels_last
    assert settings["pin_memory"] is pinned and settings["non_blocking"] is pinned


def test_autocast_is_a_no_op_on_cpu():
    with autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_seed_everything_returns_a_reproducible_generator():
    g1 = seed_everything(3)
    a, weights_a = torch.randperm(10, generator=g1), torch.randn(3)
    g2 = seed_everything(3)
    assert torch.equal(a, torch.randperm(10, generator=g2)) and torch.equal(weights_a, torch.randn(3))


def test_to_float_maps_uint8_to_unit_interval():
    x = to_float(torch.tensor([0, 255, 51], dtype=torch.uint8))
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, torch.tensor([-1.0, 1.0, -0.6]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_to_float_never_scales_its_input_in_place(dtype):
    pixels = torch.tensor([0, 255, 51], dtype=dtype)
    to_float(pixels[:2])  # a view, as an unshuffled batch is
    assert pixels.tolist() == [0, 255, 51]


def test_iter_batches_in_order_leaves_the_images_untouched():
    images = np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2)
    for _ in iter_batches(images, batch_size=2, device=torch.device("cpu")):
        pass
    assert np.array_equal(images, np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2))


@pytest.mark.parametrize(("n", "drop_last", "sizes"), [(10, False, [4, 4, 2]), (10, True, [4, 4]), (3, True, [3])])
def test_iter_batches_sizes_and_values(n, drop_last, sizes):
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, axis=2).repeat(2, axis=3)
    labels = np.arange(n, dtype=np.int64)
    batches = list(iter_batches(images, labels, batch_size=4, device=torch.device("cpu"), drop_last=drop_last))
    assert [len(y) for _, y in batches] == sizes
    for x, y in batches:  # pixel value = label, scaled
        torch.testing.assert_close(x[:, 0, 0, 0], to_float(y.to(torch.uint8)))


def test_iter_batches_shuffles_with_the_generator_only():
    images = np.zeros((20, 1, 2, 2), dtype=np.uint8)
    labels = np.arange(20)
    order = lambda g: torch.cat([y for _, y in iter_batches(images, labels, batch_size=8, device=torch.device("cpu"),
                                                          generator=g)])
    assert torch.equal(order(None), torch.arange(20))
    shuffled = order(torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, order(torch.Generator().manual_seed(0)))
    assert not torch.equal(shuffled, torch.arange(20)) and torch.equal(shuffled.sort().values, torch.arange(20))
