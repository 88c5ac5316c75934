"""What a generator returns, and the grid layout every scene uses.

Objects sit in the cells of a 3x3 grid at one of two sizes. A coarse, shared layout keeps position and
size words ("top left", "small") meaningful across tasks and makes grounding boxes predictable (18
possible boxes), which the tiny model can learn in a few hundred steps.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tasks.synthetic.draw import Box, Scene, Shape, rgb
from tasks.synthetic.vocab import BACKGROUNDS, COLOURS, SHAPES

# Half side of an object as a fraction of the image side. Chosen with the official grounding scorer,
# whose parser drops the last character of the prediction (it reads "[.., 0.65]" as 0.6): every exact
# answer box still scores IoU > 0.5 (worst 0.65), and no other of the 18 boxes does (best 0.48, e.g. the
# large box of a small target's cell), so size matters. tests/tasks/test_synthetic.py checks both.
HALF: dict[str, float] = {"small": 0.10, "large": 0.16}
JITTER = 0.025  # default centre jitter (fraction of the side) outside grounding: scenes are not pixel-clones
CELL_MARGIN = 0.008  # a jittered object stays this far inside its cell, so neighbours never touch


@dataclass(frozen=True)
class Sample:
    """One generated question: the text parts, the scene to draw (None: text-only) and scorer refs."""

    question: str
    answer: str
    scene: Scene | None
    refs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Obj:
    """An object on the grid: ``pos`` is the cell index (``3 * row + col``)."""

    shape: str
    colour: str
    pos: int
    size: str = "small"

    @property
    def row(self) -> int:
        return self.pos // 3

    @property
    def col(self) -> int:
        return self.pos % 3


def cell_box(pos: int, size: str, dx: float = 0.0, dy: float = 0.0) -> Box:
    """The normalised box of an object of ``size`` in cell ``pos``, optionally shifted."""
    h = HALF[size]
    cx, cy = (pos % 3 + 0.5) / 3 + dx, (pos // 3 + 0.5) / 3 + dy
    return (cx - h, cy - h, cx + h, cy + h)


def box_string(box: Box) -> str:
    """A box as CoIN's grounding answers write it: "[x1, y1, x2, y2]", normalised, two decimals."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


def to_shapes(objs: list[Obj], rng: random.Random | None = None, jitter: float = JITTER) -> tuple[Shape, ...]:
    """Objects to drawable shapes; with ``rng`` each centre is jittered by up to ``jitter``, less where
    the object would leave its grid cell (large objects nearly fill theirs and stay put)."""
    out = []
    for o in objs:
        j = max(0.0, min(jitter, 1 / 6 - HALF[o.size] - CELL_MARGIN))
        dx = rng.uniform(-j, j) if rng else 0.0
        dy = rng.uniform(-j, j) if rng else 0.0
        out.append(Shape(o.shape, rgb(o.colour), cell_box(o.pos, o.size, dx, dy)))
    return tuple(out)


def background(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice(BACKGROUNDS)


def random_objects(rng: random.Random, n: int, *, distinct_shapes: bool = False, sizes: tuple[str, ...] = ("small", "large"),
                   cells: list[int] | None = None) -> list[Obj]:
    """``n`` objects in distinct cells with random colour, shape and size."""
    pos = rng.sample(cells if cells is not None else range(9), n)
    shapes = rng.sample(SHAPES, n) if distinct_shapes else [rng.choice(SHAPES) for _ in range(n)]
    return [Obj(s, rng.choice(COLOURS), p, rng.choice(sizes)) for s, p in zip(shapes, pos)]


def scene_of(objs: list[Obj], rng: random.Random, jitter: float = JITTER) -> Scene:
    """The plain scene for a list of grid objects."""
    return Scene(background(rng), to_shapes(objs, rng, jitter))


def weighted(rng: random.Random, table: dict[str, float]) -> str:
    """Pick a key of ``table`` with probability proportional to its weight."""
    return rng.choices(list(table), weights=list(table.values()))[0]
