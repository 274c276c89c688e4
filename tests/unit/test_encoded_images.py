"""Encoded storage, decoding and the augmentation recipes on images the tests make."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tlpipe.data import decoded, encoding, recipes


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photo, not like noise or a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def file_bytes(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_a_small_enough_file_is_kept_byte_for_byte(fmt):
    data = file_bytes(photo(240, 200), fmt, quality=90) if fmt != "PNG" else file_bytes(photo(240, 200), fmt)
    stored = encoding.encode(data, max_side=256)
    assert stored.kept and stored.data == data and (stored.width, stored.height) == (240, 200)


def test_a_larger_file_is_resized_once_to_its_shorter_side_and_reencoded():
    stored = encoding.encode(file_bytes(photo(640, 480), "PNG"), max_side=256, quality=90)
    assert not stored.kept and (stored.width, stored.height) == (341, 256)
    with Image.open(io.BytesIO(stored.data)) as image:
        assert image.format == "JPEG" and image.size == (341, 256)
    small = encoding.encode(file_bytes(photo(100, 50), "BMP"), max_side=256)  # another format: never enlarged
    assert not small.kept and (small.width, small.height) == (100, 50)


def test_modes_decoders_differ_on_are_converted():
    rgba = np.dstack([photo(64, 64), np.full((64, 64), 200, np.uint8)])
    stored = encoding.encode(file_bytes(rgba, "PNG"), max_side=256)
    assert not stored.kept
    with Image.open(io.BytesIO(stored.data)) as image:
        assert image.mode == "RGB"


def test_a_corrupt_file_and_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match="not an image PIL can read"):
        encoding.encode(file_bytes(photo(64, 64), "JPEG")[:300], max_side=256)
    with pytest.raises(ValueError, match="quality=0"):
        encoding.encode(b"", max_side=256, quality=0)
    assert encoding.choose_storage("auto", 32) == "raw" and encoding.choose_storage("auto", 224) == "encoded"
    with pytest.raises(ValueError, match="allowed: raw, encoded, auto"):
        encoding.choose_storage("jpeg", 224)


def arrow_file(path, encoded: list[bytes]) -> str:
    """A split's Arrow stream file with a datasets Image column, written by datasets' own writer."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    writer = ArrowWriter(features=features, path=str(path))
    try:
        writer.write_batch({"image": [{"bytes": b, "path": None} for b in encoded], "label": list(range(len(encoded)))})
        writer.finalize()
    finally:
        writer.close()
    return str(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_stored_bytes_round_trip_and_decode_to_the_pixels_pil_gives(tmp_path, fmt):
    files = [file_bytes(photo(96 + i, 80, seed=i), fmt, quality=90) for i in range(3)]
    column = decoded.EncodedColumn([arrow_file(tmp_path / "part.arrow", files)])
    assert len(column) == 3 and [column[i] for i in range(3)] == files
    for channels, mode in ((3, "RGB"), (1, "L")):
        images = decoded.EncodedImages(column, np.zeros(3), [recipes.evaluation(64)], seed=0, channels=channels)
        for i, data in enumerate(files):
            pil = np.asarray(Image.open(io.BytesIO(data)).convert(mode)).reshape(80, 96 + i, channels)
            assert np.array_equal(images.decode(i).permute(1, 2, 0).numpy(), pil), (fmt, mode, i)


def test_a_corrupt_stored_image_names_its_row(tmp_path):
    column = decoded.EncodedColumn([arrow_file(tmp_path / "p.arrow", [file_bytes(photo(32, 32), "PNG"), b"\xff\xd8junk"])])
    images = decoded.EncodedImages(column, np.zeros(2), [recipes.evaluation(32)], seed=0)
    images.decode(0)
    with pytest.raises(ValueError, match="image of row 1 does not decode"):
        images.decode(1)


def test_the_recipes_give_normalised_float_crops():
    image = torch.full((3, 300, 400), 128, dtype=torch.uint8)
    out = recipes.evaluation(224)(image)
    expected = (128 / 255 - torch.tensor(recipes.IMAGENET_MEAN)) / torch.tensor(recipes.IMAGENET_STD)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.allclose(out, expected[:, None, None].expand_as(out), atol=1e-6)
    varied = torch.from_numpy(photo(400, 300)).permute(2, 0, 1).contiguous()
    for transform in (recipes.supervised(224), recipes.simclr_view(224), *recipes.byol_views(224)):
        assert transform(varied).shape == (3, 224, 224)
    gray = recipes.supervised(64, recipes.Normalization.for_channels(1))(varied[:1])
    assert gray.shape == (1, 64, 64)
    assert recipes.blur_kernel(224) == 23 and recipes.blur_kernel(32) == 3
    with pytest.raises(ValueError, match="size=4"):
        recipes.supervised(4)


def dataset(tmp_path, n: int = 24) -> decoded.EncodedImages:
    files = [file_bytes(photo(72, 64, seed=i), "JPEG", quality=90) for i in range(n)]
    column = decoded.EncodedColumn([arrow_file(tmp_path / "views.arrow", files)])
    return decoded.EncodedImages(column, np.arange(n) % 3, [recipes.simclr_view(48), recipes.simclr_view(48)], seed=7)


def epoch_batches(images, *, workers: int, epoch: int, start: int = 0) -> list:
    order = decoded.EpochOrder(len(images), seed=3)
    order.set_epoch(epoch, start)
    return list(decoded.loader(images, batch_size=5, order=order, workers=workers))


def test_the_same_batches_and_augmentations_for_any_number_of_workers(tmp_path):
    images = dataset(tmp_path)
    alone = epoch_batches(images, workers=0, epoch=1)
    spawned = epoch_batches(images, workers=2, epoch=1)
    assert len(alone) == len(spawned) == 5
    for a, b in zip(alone, spawned):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    first, second, labels = alone[0]
    assert not torch.equal(first, second)  # two draws: two different views of each image
    other_epoch = epoch_batches(images, workers=0, epoch=2)
    assert not torch.equal(other_epoch[0][0], first)


def test_a_resumed_epoch_gives_the_batches_it_left(tmp_path):
    images = dataset(tmp_path)
    whole = epoch_batches(images, workers=0, epoch=4)
    resumed = epoch_batches(images, workers=0, epoch=4, start=2 * 5)
    assert len(resumed) == len(whole) - 2
    for a, b in zip(whole[2:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_callers_random_stream_is_left_alone(tmp_path):
    images = dataset(tmp_path, n=3)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    images[(0, 1)]
    assert torch.equal(torch.rand(3), expected)


def test_luma_is_pils_grayscale_conversion():
    rgb = photo(50, 40, seed=5)
    ours = decoded.luma(torch.from_numpy(rgb).permute(2, 0, 1))[0].numpy()
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("L")))
