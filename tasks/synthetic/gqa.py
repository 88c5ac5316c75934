"""coin-mini GQA: compositional questions about relations between objects.

Scenes hold 2-3 objects with distinct shapes (so "the star" is unambiguous) in distinct grid cells.
Relations compare grid cells: "to the left of" means a smaller column, "above" a smaller row. A question
is only kept when exactly one object satisfies its relation. Answers are lower-case words from a
20-word space (8 colours, 8 shapes, yes/no, left/right); the question type is drawn first and the
answer uniformly within it, so the constant baseline stays near 10%. ``refs["types"]`` carries GQA's
structural/semantic/detailed type, which the official side file and per-type breakdowns need.
"""
from __future__ import annotations

import random

from tasks.synthetic.layout import Obj, Sample, random_objects, scene_of, weighted
from tasks.synthetic.vocab import COLOURS

RELATIONS: dict[str, str] = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
TYPES: dict[str, dict[str, str]] = {
    "rel_colour": {"structural": "query", "semantic": "attr", "detailed": "relAttr"},
    "rel_shape": {"structural": "query", "semantic": "rel", "detailed": "relS"},
    "colour": {"structural": "query", "semantic": "attr", "detailed": "directOf"},
    "verify_rel": {"structural": "verify", "semantic": "rel", "detailed": "relVerify"},
    "side": {"structural": "query", "semantic": "attr", "detailed": "positionQuery"},
}


def holds(relation: str, a: Obj, b: Obj) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (e.g. a is left of b)."""
    return {"left": a.col < b.col, "right": a.col > b.col, "above": a.row < b.row, "below": a.row > b.row}[relation]


def _related(rng: random.Random) -> tuple[list[Obj], Obj, Obj, str]:
    """A scene, an anchor, the unique object in ``relation`` to it, and the relation."""
    while True:
        objs = random_objects(rng, rng.randint(2, 3), distinct_shapes=True)
        anchor, relation = rng.choice(objs), rng.choice(list(RELATIONS))
        hits = [o for o in objs if o is not anchor and holds(relation, o, anchor)]
        if len(hits) == 1:
            return objs, anchor, hits[0], relation


def _recolour(objs: list[Obj], target: Obj, colour: str) -> list[Obj]:
    return [Obj(o.shape, colour, o.pos, o.size) if o is target else o for o in objs]


def generate(rng: random.Random, size: int) -> Sample:
    kind = weighted(rng, {"rel_colour": 0.3, "rel_shape": 0.25, "colour": 0.15, "verify_rel": 0.2, "side": 0.1})
    if kind == "rel_colour":
        objs, anchor, target, rel = _related(rng)
        answer = rng.choice(COLOURS)
        objs = _recolour(objs, target, answer)
        question = f"What color is the shape {RELATIONS[rel]} the {anchor.shape}?"
    elif kind == "rel_shape":
        objs, anchor, target, rel = _related(rng)
        answer = target.shape
        question = f"What shape is {RELATIONS[rel]} the {anchor.colour} {anchor.shape}?"
    elif kind == "colour":
        objs = random_objects(rng, rng.randint(2, 3), distinct_shapes=True)
        answer = rng.choice(COLOURS)
        objs = _recolour(objs, objs[0], answer)
        question = f"What color is the {objs[0].shape}?"
    elif kind == "verify_rel":
        objs, anchor, target, rel = _related(rng)
        answer = "yes" if rng.random() < 0.5 else "no"
        if answer == "no":  # ask the opposite relation, which cannot hold for the same pair
            rel = {"left": "right", "right": "left", "above": "below", "below": "above"}[rel]
        question = f"Is the {target.shape} {RELATIONS[rel]} the {anchor.shape}?"
    else:
        answer = rng.choice(("left", "right"))
        col = 0 if answer == "left" else 2
        target_pos = rng.choice((col, col + 3, col + 6))
        objs = random_objects(rng, rng.randint(2, 3), distinct_shapes=True, cells=[p for p in range(9) if p != target_pos])
        objs[0] = Obj(objs[0].shape, objs[0].colour, target_pos, objs[0].size)
        question = f"On which side of the image is the {objs[0].shape}?"
    return Sample(question, answer, scene_of(objs, rng), {"types": dict(TYPES[kind])})
