"""coin-mini ImageNet: name the single object's class.

Classes are (colour, shape) pairs named like CoIN's capitalised ImageNet labels ("Red star",
"Dandie dinmont"). Using all 64 pairs would exceed the answer budget, and using shapes alone (8) would
make the constant baseline 12.5%, so the 32 classes are a balanced subset: each shape comes in four
colours and each colour in four shapes, so neither colour nor shape alone identifies the class. No class
name is a substring of another, so the official "substring either way" rule cannot credit a wrong class.
"""
from __future__ import annotations

import random

from tasks.synthetic.draw import Scene, Shape, rgb
from tasks.synthetic.layout import Sample, background
from tasks.synthetic.vocab import COLOURS, SHAPES

QUESTION = "What is the object in the image?"  # CoIN's ImageNet question, verbatim
# Shape i is paired with colours i, i+1, i+3, i+5 (mod 8): every colour then occurs with exactly 4 shapes.
CLASSES: tuple[tuple[str, str], ...] = tuple(
    (COLOURS[(i + k) % 8], shape) for i, shape in enumerate(SHAPES) for k in (0, 1, 3, 5))


def class_name(colour: str, shape: str) -> str:
    return f"{colour.capitalize()} {shape}"


def generate(rng: random.Random, size: int) -> Sample:
    colour, shape = rng.choice(CLASSES)
    half = rng.uniform(0.22, 0.36)  # one big object, as an ImageNet photo is framed on its subject
    cx, cy = (rng.uniform(half + 0.02, 0.98 - half) for _ in range(2))
    scene = Scene(background(rng), (Shape(shape, rgb(colour), (cx - half, cy - half, cx + half, cy + half)),))
    return Sample(QUESTION, class_name(colour, shape), scene)
