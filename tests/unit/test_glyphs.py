"""Glyph charsets, font coverage, rendering and the digits-like degradation."""

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlpipe.data import glyphs


def _fits_degraded_grid(image: np.ndarray) -> bool:
    """Whether a [S, S] image is (up to rounding) an upsampled 8x8 grid of 17 ink levels."""
    up = glyphs.bilinear_matrix(8, image.shape[0]).astype(np.float64)
    inverse = np.linalg.pinv(up)
    levels = inverse @ image.astype(np.float64) @ inverse.T * 16 / 255
    rebuilt = up @ (np.rint(levels) * 255 / 16) @ up.T
    return bool(
        np.abs(rebuilt - image).max() <= 1.0 and np.abs(levels - np.rint(levels)).max() < 0.1
    )


def test_ascii_charset_is_the_94_printables():
    ascii_chars = glyphs.glyph_charset("ascii")
    assert ascii_chars == [chr(code) for code in range(ord("!"), ord("~") + 1)]


def test_extended_charset_extends_ascii_with_unique_letters():
    extended = glyphs.glyph_charset("extended")
    assert extended[:94] == glyphs.glyph_charset("ascii")
    assert len(extended) == len(set(extended)) == 400
    assert all(char.isalpha() for char in extended[94:])
    assert {"é", "Ł", "λ", "Ж"} <= set(extended)
    assert not {"Α", "А", "Đ"} & set(extended)  # Greek Alpha, Cyrillic A, D with stroke: homoglyphs


def test_unknown_charset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="ascii, extended"):
        glyphs.glyph_charset("cjk")


@pytest.mark.parametrize("charset", glyphs.GLYPH_CHARSETS)
def test_every_char_has_at_least_two_fonts(charset):
    uncovered = [char for char in glyphs.glyph_charset(charset) if len(glyphs.fonts_for(char)) < 2]
    assert uncovered == []


def test_all_allowed_fonts_ship_with_matplotlib():
    assert [path.name for path in glyphs.text_font_paths()] == list(glyphs.TEXT_FONT_FILES)


@pytest.mark.parametrize(
    ("font", "present", "absent"),
    [
        ("cmr10.ttf", "Aa0!", "<>{|}\"'"),
        ("cmmi10.ttf", "Aa<", "0("),
        ("DejaVuSans.ttf", "Aé<λЖ", ""),
    ],
)
def test_coverage_follows_glyph_names_not_cmap_slots(font, present, absent):
    path = next(p for p in glyphs.text_font_paths() if p.name == font)
    coverage = glyphs.font_coverage(path)
    assert set(present) <= coverage
    assert not set(absent) & coverage


def test_no_two_classes_render_the_same_in_a_third_of_their_fonts():
    # Exact-bitmap version of the rule used when the extended charset was fixed.
    chars = glyphs.glyph_charset("extended")
    same = defaultdict(int)
    for path in glyphs.text_font_paths():
        by_bitmap = defaultdict(list)
        for char in sorted(glyphs.font_coverage(path) & set(chars)):
            by_bitmap[glyphs._draw_glyph(path, char, 16, 0).tobytes()].append(char)
        for group in by_bitmap.values():
            for pair in itertools.combinations(group, 2):
                same[pair] += 1
    for (a, b), count in same.items():
        common = len(set(glyphs.fonts_for(a)) & set(glyphs.fonts_for(b)))
        assert count < common / 3, f"{a!r} and {b!r} look the same in {count}/{common} fonts"


def _render(char="A", count=12, seed=0, image_size=32, degrade_fraction=0.5):
    return glyphs.render_class(
        char, count=count, seed=seed, image_size=image_size, degrade_fraction=degrade_fraction
    )


def test_render_is_deterministic_and_seeded():
    first, fonts = _render()
    again, fonts_again = _render()
    other, _ = _render(seed=1)
    assert first.dtype == np.uint8 and first.shape == (12, 32, 32)
    assert first.tobytes() == again.tobytes() and fonts == fonts_again
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize("char", ["A", "g", "%", "Ж", "é"])
@pytest.mark.parametrize("image_size", [16, 32])
def test_glyphs_are_white_ink_on_black(char, image_size):
    images, _ = _render(char, image_size=image_size, degrade_fraction=0.0)
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    assert border.mean() < 20
    # every image has ink; a thin stroke anti-aliased at 16 px can peak near half intensity (127 with
    # another Pillow/FreeType build), still far above the background
    assert images.reshape(len(images), -1).max(1).min() > 96


def test_fonts_come_from_those_having_the_glyph():
    _, fonts = _render("Ж", count=60)
    allowed = {glyphs.font_family(path) for path in glyphs.fonts_for("Ж")}
    assert set(fonts) <= allowed and len(set(fonts)) > 3
    assert "cmr10" not in allowed


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_degraded_share_matches_fraction(fraction):
    images, _ = _render("B", count=20, degrade_fraction=fraction)
    assert sum(_fits_degraded_grid(image) for image in images) == round(fraction * 20)


@pytest.mark.parametrize("image_size", [16, 32, 40])
def test_upsample_matches_torch_and_pil_bilinear(image_size):
    levels = np.random.default_rng(0).integers(0, 17, (3, 8, 8))
    ours = glyphs.upsample_levels(levels, image_size).astype(int)
    scaled = torch.tensor(levels * 255 / 16, dtype=torch.float32)[:, None]
    ref = torch.nn.functional.interpolate(
        scaled, size=image_size, mode="bilinear", align_corners=False
    )
    assert np.abs(ours - ref[:, 0].numpy()).max() <= 0.5 + 1e-3
    pil = Image.fromarray((levels[0] * 255 / 16).astype(np.float32), "F").resize(
        (image_size, image_size), Image.Resampling.BILINEAR
    )
    assert np.abs(ours[0] - np.asarray(pil)).max() <= 0.5 + 1e-3


def test_degrade_is_area_downsample_then_quantise():
    image = np.random.default_rng(1).integers(0, 256, (2, 32, 32)).astype(np.uint8)
    pooled = torch.nn.functional.avg_pool2d(torch.tensor(image, dtype=torch.float64)[:, None], 4)
    levels = np.rint(pooled[:, 0].numpy() * 16 / 255)
    assert np.array_equal(glyphs.degrade_like_digits(image), glyphs.upsample_levels(levels, 32))


def test_font_paths_are_real_files():
    assert all(isinstance(path, Path) and path.is_file() for path in glyphs.text_font_paths())
