"""coin-mini VizWiz: short questions about degraded "photos" taken by a blind user; some unanswerable.

Every image is degraded the way VizWiz photos are (blur, under-exposure, off-centre framing, sensor
noise). Answerable images get mild degradations; about 20% get one severe enough that the answer cannot
be read off the image (blurred beyond recognition, nearly black, or the object out of frame), and their
answer is "unanswerable", as in VizWiz's annotations (the official scorer compares case-insensitively,
so it matches the instruction's 'Unanswerable'). Severe and mild settings are far apart, so
answerability is learnable; the answer space is 8 colours + 8 shapes + 24 words + "unanswerable".
"""
from __future__ import annotations

import random

from tasks.synthetic.draw import Rect, Scene, Shape, Text, rgb
from tasks.synthetic.layout import Sample, background, weighted
from tasks.synthetic.vocab import COLOURS, SHAPES, TEXT_COLOURS, WHITE, WORDS

UNANSWERABLE = "unanswerable"
UNANSWERABLE_SHARE = 0.2
QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("What color is this?", "Can you tell me what color this is?"),
    "shape": ("What is this?", "What shape is this?"),
    "text": ("What does this say?", "What is written on this?"),
}


def _content(rng: random.Random, kind: str) -> tuple[tuple, str, tuple[float, float]]:
    """The items of the photo, the true answer and the subject's centre."""
    cx, cy = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    if kind == "text":
        word = rng.choice(WORDS)
        label = Rect(WHITE, (cx - 0.4, cy - 0.17, cx + 0.4, cy + 0.17))  # a label held up to the camera
        return (label, Text(word, rgb(rng.choice(TEXT_COLOURS)), (cx, cy), 0.27)), word, (cx, cy)
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    half = rng.uniform(0.2, 0.3)
    item = Shape(shape, rgb(colour), (cx - half, cy - half, cx + half, cy + half))
    return (item,), (colour if kind == "colour" else shape), (cx, cy)


def _mild(rng: random.Random, center: tuple[float, float]) -> dict:
    """One or two mild degradations that leave the answer readable."""
    out: dict = {"noise": rng.uniform(2.0, 8.0), "noise_seed": rng.getrandbits(32)}
    for effect in rng.sample(("blur", "dark", "crop"), rng.randint(1, 2)):
        if effect == "blur":
            out["blur"] = rng.uniform(0.004, 0.014)  # 0.3-0.9 px at 64 px
        elif effect == "dark":
            out["brightness"] = rng.uniform(0.45, 0.8)
        else:  # off-centre zoom that keeps the subject's centre in frame
            w = rng.uniform(0.7, 0.85)
            x0 = min(max(center[0] - rng.uniform(0.25, 0.75) * w, 0.0), 1 - w)
            y0 = min(max(center[1] - rng.uniform(0.25, 0.75) * w, 0.0), 1 - w)
            out["crop"] = (x0, y0, x0 + w, y0 + w)
    return out


def _severe(rng: random.Random, kind: str) -> dict:
    """One degradation that destroys the answer. Blur is not used for colour questions: a blurred blob
    keeps its colour, so it would not make the question unanswerable."""
    modes = ("dark", "out_of_frame") if kind == "colour" else ("blur", "dark", "out_of_frame")
    mode = rng.choice(modes)
    out: dict = {"noise": rng.uniform(2.0, 8.0), "noise_seed": rng.getrandbits(32)}
    if mode == "blur":
        out["blur"] = rng.uniform(0.12, 0.18)
    elif mode == "dark":
        out["brightness"] = rng.uniform(0.02, 0.04)  # below the noise floor: nothing left to read
    else:  # the camera missed the subject: only background (and noise) is in frame
        out["out_of_frame"] = True
    return out


def generate(rng: random.Random, size: int) -> Sample:
    kind = weighted(rng, {"colour": 1, "shape": 1, "text": 1})
    items, answer, center = _content(rng, kind)
    unanswerable = rng.random() < UNANSWERABLE_SHARE
    effects = _severe(rng, kind) if unanswerable else _mild(rng, center)
    if effects.pop("out_of_frame", False):  # drop the subject rather than crop: no sliver of it leaks
        items = ()
    scene = Scene(background(rng), items, **effects)
    return Sample(rng.choice(QUESTIONS[kind]), UNANSWERABLE if unanswerable else answer, scene)
