"""coin-mini VQAv2: counting (1-4), yes/no and colour questions about a scene of small objects.

Answers are digits ("3", as VQAv2 writes numbers), "yes"/"no", or a colour: 14 answers. Question types
are weighted 45% counting / 40% yes-no / 15% colour and yes/no is balanced, so the constant baseline is
about 20% ("yes" or "no"), the highest of the suite apart from ScienceQA's letters.
"""
from __future__ import annotations

import random

from tasks.synthetic.layout import Obj, Sample, random_objects, scene_of, weighted
from tasks.synthetic.vocab import COLOURS, PLURAL, SHAPES, article


def _count(rng: random.Random) -> tuple[str, str, list[Obj]]:
    n = rng.randint(1, 4)
    cells = rng.sample(range(9), 9)
    if rng.random() < 0.5:  # "How many stars": n stars plus up to 2 other shapes
        shape = rng.choice(SHAPES)
        objs = [Obj(shape, rng.choice(COLOURS), cells.pop(), "small") for _ in range(n)]
        objs += [Obj(rng.choice([s for s in SHAPES if s != shape]), rng.choice(COLOURS), cells.pop(), "small")
                 for _ in range(rng.randint(0, 2))]
        return f"How many {PLURAL[shape]} are there?", str(n), objs
    if rng.random() < 0.5:  # "How many red shapes": n red objects plus up to 2 of other colours
        colour = rng.choice(COLOURS)
        objs = [Obj(rng.choice(SHAPES), colour, cells.pop(), "small") for _ in range(n)]
        objs += [Obj(rng.choice(SHAPES), rng.choice([c for c in COLOURS if c != colour]), cells.pop(), "small")
                 for _ in range(rng.randint(0, 2))]
        return f"How many {colour} shapes are there?", str(n), objs
    objs = random_objects(rng, n, sizes=("small",))
    return "How many shapes are in the picture?", str(n), objs


def _yes_no(rng: random.Random) -> tuple[str, str, list[Obj]]:
    answer = "yes" if rng.random() < 0.5 else "no"
    objs = random_objects(rng, rng.randint(1, 4))
    target = rng.choice(objs)
    if rng.random() < 0.5:  # "Is there a red star?"
        colour, shape = target.colour, target.shape
        if answer == "no":  # ask about a colour-shape pair absent from the scene
            present = {(o.colour, o.shape) for o in objs}
            colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
        return f"Is there {article(colour)} {colour} {shape}?", answer, objs
    # "Is the star red?": the asked shape must be unique in the scene
    objs = [o for o in objs if o is target or o.shape != target.shape]
    colour = target.colour if answer == "yes" else rng.choice([c for c in COLOURS if c != target.colour])
    return f"Is the {target.shape} {colour}?", answer, objs


def _colour(rng: random.Random) -> tuple[str, str, list[Obj]]:
    objs = random_objects(rng, rng.randint(1, 3), distinct_shapes=True)
    return f"What color is the {objs[0].shape}?", objs[0].colour, objs


def generate(rng: random.Random, size: int) -> Sample:
    make = {"count": _count, "yes_no": _yes_no, "colour": _colour}[weighted(rng, {"count": 0.45, "yes_no": 0.4, "colour": 0.15})]
    question, answer, objs = make(rng)
    return Sample(question, answer, scene_of(objs, rng))
