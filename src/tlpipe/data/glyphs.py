"""Glyph images rendered from the TrueType fonts that ship inside matplotlib.

Returns numpy arrays; `tlpipe.data.storage` wraps them into datasets. Images are white ink on a black
background, like scikit-learn's digits. fontTools comes with matplotlib.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
import torch
from fontTools import agl
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

GLYPH_CHARSETS = ("ascii", "extended")

# An allow-list of real text fonts. Left out on purpose: LastResortHE (a box for every code
# point), DejaVu*Display and STIXNonUni/STIXSiz* (math fragments, few or no letters), cmex10 and
# cmsy10 (TeX symbol encodings: their cmap sends 'a' to a turnstile). The Computer Modern fonts
# kept use TeX's OT1 layout in a few ASCII slots ('<' is an inverted '!'); `font_coverage`
# rejects those slots.
TEXT_FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)  # fmt: skip

_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))
# Fixed once, offline, so class ids never move: the letters of Latin-1 (U+00C0-00FF), Latin
# Extended-A, Greek (U+0386-03CE) and Cyrillic (U+0400-045F) that >= 2 of the fonts above cover,
# in code point order, minus homoglyphs. A letter was dropped when it rendered like an earlier
# kept character (< 2 % of its ink differing) in at least a third of the fonts having both: Greek
# Alpha and Cyrillic A look like 'A', Cyrillic Ge like Gamma, D with stroke like Eth. Classes that
# look the same cannot be learned and would only add label noise.
_LATIN_1 = "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ"
_LATIN_EXTENDED_A = (
    "ĀāĂăĄąĆćĈĉĊċČčĎďđĒēĔĕĖėĘęĚěĜĝĞğĠġĢģĤĥĦħĨĩĪīĬĭĮįİıĲĳĴĵĶķĸĹĺĻļĽľĿŀŁł"
    "ŃńŅņŇňŉŊŋŌōŎŏŐőŒœŔŕŖŗŘřŚśŜŝŞşŠšŢţŤťŦŧŨũŪūŬŭŮůŰűŲųŴŵŶŷŸŹźŻżŽžſ"
)
_GREEK = "ΆΈΉΊΌΎΏΐΓΔΘΛΞΠΣΦΨΩάέήίΰαβγδεζηθικλμνξπρςστυφχψωϊϋύώ"
_CYRILLIC = "ЂЃЄЉЊЋЌЍЎЏБДЖЗИЙКЛУФЦЧШЩЪЫЬЭЮЯбвгджзийклмнптфцчшщъыьэюяѐђѓєљњћќѝўџ"
_CHARSETS = {
    "ascii": _ASCII,
    "extended": _ASCII + _LATIN_1 + _LATIN_EXTENDED_A + _GREEK + _CYRILLIC,
}

_DRAW_SCALE = 4  # glyphs are drawn at 4x the output size ...
_CANVAS_SCALE = 2  # ... and box-reduced to the 2x canvases that the warp samples
# Glyph size and baseline height, as fractions of the canvas. A fixed baseline (no centring of the
# ink) keeps ',' apart from "'" and 'o' apart from 'O'.
_FONT_SIZE = 0.68
_BASELINE = 0.76
_DEGRADED_SIZE = 8  # sklearn digits are 8x8 ...
_DEGRADED_LEVELS = 16  # ... with ink levels 0..16
_CHUNK = 256  # images warped at once; bounds memory, and fixes the order noise is drawn in


def glyph_charset(name: str) -> list[str]:
    """The fixed, ordered list of characters (class names) of a built-in charset.

    Args:
        name: One of `GLYPH_CHARSETS`.

    Returns:
        The characters, in class-id order.

    Raises:
        ValueError: If `name` is not a known charset.
    """
    if name not in _CHARSETS:
        raise ValueError(f"charset={name!r} is unknown; valid charsets: {', '.join(_CHARSETS)}")
    return list(_CHARSETS[name])


@functools.lru_cache(maxsize=1)
def text_font_paths() -> tuple[Path, ...]:
    """Paths of the allowed text fonts found in this matplotlib installation."""
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(font_dir / name for name in TEXT_FONT_FILES if (font_dir / name).is_file())


@functools.cache
def font_coverage(path: Path) -> frozenset[str]:
    """Characters for which the font at `path` really has a glyph.

    A cmap entry counts only when its glyph name decodes (Adobe Glyph List) back to the same
    character, which rejects slots that a TeX font fills with another symbol.
    """
    cmap = TTFont(path, lazy=True).getBestCmap()
    return frozenset(chr(c) for c, glyph in cmap.items() if agl.toUnicode(glyph) == chr(c))


@functools.cache
def font_family(path: Path) -> str:
    """The font's family name, e.g. 'DejaVu Sans' for all four DejaVu Sans styles."""
    return TTFont(path, lazy=True)["name"].getDebugName(1) or path.stem


def fonts_for(char: str) -> list[Path]:
    """The allowed fonts that have a glyph for `char`, in `TEXT_FONT_FILES` order."""
    return [path for path in text_font_paths() if char in font_coverage(path)]


@functools.lru_cache(maxsize=256)
def _truetype(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def _draw_glyph(path: Path, char: str, image_size: int, stroke: int) -> np.ndarray:
    """float32 [C, C] ink in 0..255 (C = _CANVAS_SCALE * image_size), on the fixed baseline.

    The box reduction from _DRAW_SCALE and the warp's bilinear taps together are the
    anti-aliasing filter for sampling the output grid.
    """
    size = image_size * _DRAW_SCALE
    image = Image.new("L", (size, size), 0)
    font = _truetype(path, round(_FONT_SIZE * size))
    ImageDraw.Draw(image).text(
        (size / 2, _BASELINE * size), char, font=font, fill=255, anchor="ms",
        stroke_width=stroke, stroke_fill=255,
    )  # fmt: skip
    return np.asarray(image.reduce(_DRAW_SCALE // _CANVAS_SCALE), dtype=np.float32)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights averaging each output cell's exact share of the input."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    left = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    right = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    overlap = np.clip(right - left, 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear weights with half-pixel centres and clamped edges.

    The convention of PIL's BILINEAR upsampling and torch's interpolate(align_corners=False).
    """
    source = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(weights, (np.arange(n_out), low), 1.0 - (source - low))
    np.add.at(weights, (np.arange(n_out), high), source - low)
    return weights.astype(np.float32)


def _resize(images: np.ndarray, size: int, matrix_fn) -> np.ndarray:
    """Separable linear resize of float32 [N, H, W] images to [N, size, size]."""
    rows, cols = matrix_fn(images.shape[1], size), matrix_fn(images.shape[2], size)
    return rows @ images @ cols.T


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def upsample_levels(levels: np.ndarray, image_size: int) -> np.ndarray:
    """Bilinear upsampling of [N, 8, 8] ink levels 0..16 to uint8 [N, image_size, image_size].

    The one path shared by the digits target and the glyph degradation, so both look alike.
    """
    scaled = np.asarray(levels, dtype=np.float32) * np.float32(255.0 / _DEGRADED_LEVELS)
    return _to_uint8(_resize(scaled, image_size, bilinear_matrix))


def degrade_like_digits(images: np.ndarray) -> np.ndarray:
    """Area-downsample uint8 [N, H, H] images to 8x8, quantise to 0..16 and upsample them back."""
    small = _resize(images.astype(np.float32), _DEGRADED_SIZE, area_matrix)
    levels = np.rint(small * np.float32(_DEGRADED_LEVELS / 255.0))
    return upsample_levels(levels, images.shape[1])


def _affine_matrices(rng: np.random.Generator, count: int, canvas: int) -> np.ndarray:
    """[count, 2, 3] maps from output to canvas pixels: random rotation, scale, shear, shift."""
    angle = np.deg2rad(rng.uniform(-15.0, 15.0, count))
    scale = rng.uniform(0.85, 1.1, count)
    shear = rng.uniform(-0.2, 0.2, count)
    shift = rng.uniform(-0.06, 0.06, (count, 2)) * canvas
    cos, sin = np.cos(angle), np.sin(angle)
    # forward = scale * rotation @ [[1, shear], [0, 1]], acting on canvas coordinates
    forward = scale[:, None, None] * np.stack(
        [np.stack([cos, cos * shear - sin], -1), np.stack([sin, sin * shear + cos], -1)], 1
    )
    inverse = np.linalg.inv(forward)
    # canvas_in = inverse @ (_CANVAS_SCALE * out - centre - shift) + centre
    centre = np.full((count, 2, 1), canvas / 2)
    offset = centre - inverse @ (centre + shift[:, :, None])
    return np.concatenate([inverse * _CANVAS_SCALE, offset], axis=2).astype(np.float32)


def _warp(canvases: np.ndarray, maps: np.ndarray, size: int) -> np.ndarray:
    """Bilinear samples [N, size, size] of float32 [N, H, W] canvases at the output pixel centres
    mapped through `maps`; outside the canvas is background (0)."""
    _, height, width = canvases.shape
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    m = maps[:, :, :, None, None]
    src_x, src_y = (m[:, i, 0] * xs + m[:, i, 1] * ys + m[:, i, 2] for i in (0, 1))
    # grid_sample wants [-1, 1] across the canvas edges (align_corners=False).
    grid = np.stack([src_x * (2.0 / width) - 1.0, src_y * (2.0 / height) - 1.0], axis=-1)
    sampled = torch.nn.functional.grid_sample(
        torch.from_numpy(canvases)[:, None], torch.from_numpy(grid),
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )  # fmt: skip
    return sampled[:, 0].numpy()


def _gaussian_blur(images: np.ndarray, sigmas: np.ndarray, radius: int = 2) -> np.ndarray:
    """Separable Gaussian blur of float32 [N, H, W] with one sigma per image (zero padding)."""
    offsets = np.arange(-radius, radius + 1)
    kernels = np.exp(-0.5 * (offsets[None, :] / sigmas[:, None]) ** 2)
    kernels = (kernels / kernels.sum(axis=1, keepdims=True)).astype(np.float32)
    taps = kernels[:, :, None, None]
    _, height, width = images.shape
    padded = np.pad(images, ((0, 0), (radius, radius), (0, 0)))
    images = sum(taps[:, k] * padded[:, k : k + height] for k in range(len(offsets)))
    padded = np.pad(images, ((0, 0), (0, 0), (radius, radius)))
    return sum(taps[:, k] * padded[:, :, k : k + width] for k in range(len(offsets)))


def render_class(
    char: str, *, count: int, seed: int, image_size: int, degrade_fraction: float
) -> tuple[np.ndarray, list[str]]:
    """Render `count` augmented images of one character.

    Each image: a font drawn uniformly among those having the glyph and a random stroke width,
    drawn large, warped (rotation, scale, shear, shift) down to `image_size`, blurred and noised;
    a `degrade_fraction` share then gets `degrade_like_digits`. The random stream depends only on
    (seed, code point), so a character gets the same images in every charset and in any order.

    Returns:
        uint8 pixels [count, image_size, image_size] and the font family of each image.
    """
    fonts = fonts_for(char)
    if not fonts:
        raise ValueError(f"no allowed font has a glyph for {char!r} (U+{ord(char):04X})")
    rng = np.random.default_rng([seed, ord(char)])
    degraded = np.zeros(count, dtype=bool)
    degraded[rng.permutation(count)[: round(degrade_fraction * count)]] = True
    font_ids = rng.integers(len(fonts), size=count)
    strokes = rng.integers(0, 3, size=count)  # at _DRAW_SCALE: 0 to 1/2 output pixel
    maps = _affine_matrices(rng, count, image_size * _CANVAS_SCALE)
    blur = rng.uniform(0.2, 0.8, count)
    noise = rng.uniform(0.0, 10.0, count).astype(np.float32)
    # Each (font, stroke) pair is drawn once; images index into that small stack.
    pairs, which = np.unique(np.stack([font_ids, strokes], 1), axis=0, return_inverse=True)
    canvases = np.stack([_draw_glyph(fonts[f], char, image_size, int(s)) for f, s in pairs])
    images = np.empty((count, image_size, image_size), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        part = slice(start, min(start + _CHUNK, count))
        warped = _warp(canvases[which.ravel()[part]], maps[part], image_size)
        small = _gaussian_blur(warped, blur[part])
        small += noise[part, None, None] * rng.standard_normal(small.shape, dtype=np.float32)
        images[part] = _to_uint8(small)
    images[degraded] = degrade_like_digits(images[degraded])
    return images, [font_family(fonts[f]) for f in font_ids]


def colourise(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey glyphs [N, S, S] (ink 0..255) as RGB pictures uint8 [N, 3, S, S]: each on a background of
    its own, a colour gradient with a low-frequency texture and grain, in an ink colour far from the
    background's (a luma difference >= 96 levels), so shape is the only cue to the class."""
    count, size = ink.shape[0], ink.shape[-1]
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi, count).astype(np.float32)
    position = np.cos(angle)[:, None, None] * ramp[None, None, :] + np.sin(angle)[:, None, None] * ramp[None, :, None]
    position = (position - position.min((1, 2), keepdims=True)) / np.ptp(position, axis=(1, 2), keepdims=True)
    ends = rng.uniform(0, 255, (count, 2, 3)).astype(np.float32)
    background = ends[:, 0, :, None, None] * (1 - position[:, None]) + ends[:, 1, :, None, None] * position[:, None]
    coarse = torch.from_numpy(rng.standard_normal((count, 3, 6, 6), dtype=np.float32))
    texture = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()
    background += rng.uniform(8, 28, (count, 1, 1, 1)).astype(np.float32) * texture
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    shade = np.clip(background, 0, 255).mean((2, 3)) @ luma  # [N]
    colour = rng.uniform(0, 255, (count, 3)).astype(np.float32)
    for _ in range(8):  # redraw an ink colour too close to its background
        close = np.abs(colour @ luma - shade) < 96
        if not close.any():
            break
        colour[close] = rng.uniform(0, 255, (int(close.sum()), 3))
    still = np.abs(colour @ luma - shade) < 96
    colour[still] = np.where(shade[still, None] < 128, 255.0, 0.0)  # white or black ink then
    alpha = ink.astype(np.float32)[:, None] / 255.0
    pictures = background * (1 - alpha) + colour[:, :, None, None] * alpha
    pictures += rng.normal(0, 3, pictures.shape).astype(np.float32)
    return _to_uint8(pictures)
