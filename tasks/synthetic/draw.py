"""A tiny declarative scene renderer for coin-mini (Pillow only, no per-image font loading).

A :class:`Scene` is plain frozen data in normalised [0, 1] coordinates, so (a) the same scene renders
at any image size, (b) ``repr(scene)`` is a stable content key (used to keep train and test disjoint
before anything is drawn) and (c) generators never touch pixels. :func:`render` draws at 2x and
box-downsamples, which anti-aliases 13-pixel shapes for the price of one cheap ``reduce``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from tasks.synthetic.vocab import RGB

SUPERSAMPLE = 2
Box = tuple[float, float, float, float]  # x1, y1, x2, y2, normalised
RGBTuple = tuple[int, int, int]

# Counts every render() call; tests use it to prove a cached split is never re-rendered.
render_count = 0


@dataclass(frozen=True)
class Shape:
    """A filled silhouette whose extent is exactly ``box`` (grounding answers are these boxes)."""

    kind: str
    rgb: RGBTuple
    box: Box


@dataclass(frozen=True)
class Rect:
    """A filled rectangle (signs, labels, book covers)."""

    rgb: RGBTuple
    box: Box


@dataclass(frozen=True)
class Text:
    """A word centred at ``center``; ``height`` is the font size as a fraction of the image side."""

    word: str
    rgb: RGBTuple
    center: tuple[float, float]
    height: float


@dataclass(frozen=True)
class Digits:
    """A number drawn as seven-segment digits (bus destination boards, price tags, scoreboards), centred
    at ``center``; ``height`` is the digit height as a fraction of the image side.

    Why not the font (coin-mini v4): at 64 px the tiny backbone's 2-layer, patch-8 ViT could not tell a
    font's thin-stroked numerals apart (TextVQA stayed at its constant-answer baseline after training,
    and stage 0 captioned a 9 as "5"). Seven-segment digits differ in which thick bars are lit, a
    coarse pattern the same backbone resolves like the shapes of the other tasks."""

    word: str
    rgb: RGBTuple
    center: tuple[float, float]
    height: float


Item = Union[Shape, Rect, Text, Digits]

# Lit segments per digit: a top, b top right, c bottom right, d bottom, e bottom left, f top left, g middle.
SEGMENTS: dict[str, str] = {"0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg",
                            "6": "acdefg", "7": "abc", "8": "abcdefg", "9": "abcdfg"}
DIGIT_WIDTH = 0.6  # of the height
DIGIT_BAR = 0.17  # bar thickness, of the height
DIGIT_GAP = 0.25  # space between digits, of the height


@dataclass(frozen=True)
class Scene:
    """Background, items drawn in order, then camera-style degradations (vizwiz) in a fixed order:
    crop-and-zoom, blur, brightness, sensor noise."""

    background: RGBTuple
    items: tuple[Item, ...]
    crop: Box | None = None
    blur: float = 0.0  # Gaussian radius as a fraction of the image side
    brightness: float = 1.0
    noise: float = 0.0  # std of additive Gaussian noise, in 0..255 units
    noise_seed: int = 0


def rgb(colour: str) -> RGBTuple:
    return RGB[colour]


def _normalise(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Rescale a polygon to span exactly [0, 1] on both axes, so a shape fills its box."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return tuple(((x - x0) / w, (y - y0) / h) for x, y in points)


def _star() -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _cross() -> list[tuple[float, float]]:
    a, b = 0.32, 0.68  # arm width 36% of the side: thick enough to survive 2x downsampling at 13 px
    return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]


def _heart() -> list[tuple[float, float]]:
    pts = []
    for i in range(48):
        t = 2 * math.pi * i / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x, -y))  # image y grows downwards
    return pts


def _moon() -> list[tuple[float, float]]:
    """A crescent: the outer circle's arc outside an inner circle shifted right, then that inner arc back."""
    r, d, r2 = 1.0, 0.55, 0.85
    x = (r * r - r2 * r2 + d * d) / (2 * d)
    y = math.sqrt(r * r - x * x)
    a0, b0 = math.atan2(y, x), math.atan2(y, x - d)
    n = 24
    outer = [(r * math.cos(a0 + (2 * math.pi - 2 * a0) * i / n), r * math.sin(a0 + (2 * math.pi - 2 * a0) * i / n))
             for i in range(n + 1)]
    inner = [(d + r2 * math.cos(2 * math.pi - b0 - (2 * math.pi - 2 * b0) * i / n),
              r2 * math.sin(2 * math.pi - b0 - (2 * math.pi - 2 * b0) * i / n)) for i in range(1, n)]
    return outer + inner


# Unit polygons, computed once (rendering thousands of images per second needs no trigonometry per image).
_POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "triangle": _normalise([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]),
    "star": _normalise(_star()),
    "cross": _normalise(_cross()),
    "diamond": _normalise([(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]),
    "heart": _normalise(_heart()),
    "moon": _normalise(_moon()),
}


@lru_cache(maxsize=64)
def font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``px`` pixels, loaded once per size (it ships with Pillow: offline)."""
    return ImageFont.load_default(size=px)


def segment_boxes(word: str, center: tuple[float, float], height: float) -> list[Box]:
    """The lit bars of ``word``'s seven-segment digits, as normalised boxes."""
    h, w, t = height, DIGIT_WIDTH * height, DIGIT_BAR * height
    total = len(word) * w + (len(word) - 1) * DIGIT_GAP * h
    x0, y0 = center[0] - total / 2, center[1] - h / 2
    bars = {"a": (0, 0, w, t), "b": (w - t, 0, w, h / 2), "c": (w - t, h / 2, w, h), "d": (0, h - t, w, h),
            "e": (0, h / 2, t, h), "f": (0, 0, t, h / 2), "g": (0, (h - t) / 2, w, (h + t) / 2)}
    out = []
    for i, ch in enumerate(word):
        dx = x0 + i * (w + DIGIT_GAP * h)
        out += [(dx + b[0], y0 + b[1], dx + b[2], y0 + b[3]) for b in (bars[s] for s in SEGMENTS[ch])]
    return out


def _draw_item(draw: ImageDraw.ImageDraw, item: Item, side: int) -> None:
    if isinstance(item, Digits):
        for x1, y1, x2, y2 in segment_boxes(item.word, item.center, item.height):
            draw.rectangle((x1 * side, y1 * side, x2 * side - 1, y2 * side - 1), fill=item.rgb)
        return
    if isinstance(item, Text):
        x, y = item.center
        draw.text((x * side, y * side), item.word, fill=item.rgb, font=font(max(1, round(item.height * side))),
                  anchor="mm")
        return
    x1, y1, x2, y2 = (v * side for v in item.box)
    if isinstance(item, Rect) or item.kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=item.rgb)
    elif item.kind == "circle":
        draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=item.rgb)
    else:
        w, h = x2 - x1 - 1, y2 - y1 - 1
        draw.polygon([(x1 + u * w, y1 + v * h) for u, v in _POLYGONS[item.kind]], fill=item.rgb)


def render(scene: Scene, size: int) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image. Deterministic: same scene, same pixels."""
    global render_count
    render_count += 1
    side = size * SUPERSAMPLE
    img = Image.new("RGB", (side, side), scene.background)
    draw = ImageDraw.Draw(img)
    for item in scene.items:
        _draw_item(draw, item, side)
    img = img.reduce(SUPERSAMPLE)
    if scene.crop is not None:
        x1, y1, x2, y2 = (v * size for v in scene.crop)
        img = img.resize((size, size), Image.Resampling.BILINEAR, box=(x1, y1, x2, y2))
    if scene.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(scene.blur * size))
    if scene.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(scene.brightness)
    if scene.noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, arr.shape)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return img


def png_bytes(img: Image.Image) -> bytes:
    """PNG-encode with light compression: these images are tiny, encoding speed matters more."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
