"""coin-mini ScienceQA: multiple choice about the scene, or a text-only fact (no image).

Mirrors LLaVA's ScienceQA prompt: the question, one ``X. option`` line per choice, then the instruction;
the answer is the option letter. The correct option's position is uniform, and questions have 3-5
options, so the constant-letter baseline is about (1/3 + 1/4 + 1/5) / 3 = 26%. About a quarter of the
records are text-only facts about the same vocabulary (sides of a triangle, colour mixing, alphabetical
order), as ScienceQA mixes image and text-only problems.
"""
from __future__ import annotations

import random

from tasks.synthetic.layout import Obj, Sample, random_objects, scene_of, weighted
from tasks.synthetic.vocab import ANIMALS, COLOURS, POSITIONS, SHAPES, WORDS

LETTERS = "ABCDE"
TEXT_ONLY_SHARE = 0.25

SHAPE_FACTS: dict[str, str] = {
    "Which shape has three sides?": "triangle",
    "Which shape has four equal sides and four square corners?": "square",
    "Which shape is round and has no corners?": "circle",
    "Which shape has five points?": "star",
    "Which shape looks like a plus sign?": "cross",
    "Which shape is a square standing on one corner?": "diamond",
    "Which shape is a symbol of love?": "heart",
    "Which shape looks like a thin slice of the moon at night?": "moon",
}
MIXING: dict[tuple[str, str], str] = {
    ("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple", ("red", "white"): "pink",
}


def _options(rng: random.Random, correct: str, pool: list[str] | tuple[str, ...]) -> tuple[list[str], str]:
    """3-5 options (fewer if the pool is small) with ``correct`` at a uniformly random position."""
    others = [p for p in pool if p != correct]
    k = min(rng.choice((3, 4, 5)), len(others) + 1)
    options = rng.sample(others, k - 1) + [correct]
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


def _sample(question: str, correct: str, pool, rng: random.Random, scene=None) -> Sample:
    options, letter = _options(rng, correct, pool)
    body = question + "\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return Sample(body, letter, scene, {"num_options": len(options)})


def _image_question(rng: random.Random) -> Sample:
    kind = weighted(rng, {"shape": 1, "colour": 1, "count": 1, "where": 1, "largest": 1})
    if kind == "count":
        n = rng.randint(1, 5)
        objs = random_objects(rng, n)
        return _sample("How many shapes are in the image?", str(n), [str(i) for i in range(1, 7)], rng, scene_of(objs, rng))
    if kind == "largest":
        objs = random_objects(rng, rng.randint(2, 3), distinct_shapes=True, sizes=("small",))
        objs[0] = Obj(objs[0].shape, objs[0].colour, objs[0].pos, "large")
        # Options are drawn from all shapes: the absent ones are easy distractors, the present small ones are not.
        return _sample("Which shape is the largest?", objs[0].shape, SHAPES, rng, scene_of(objs, rng))
    objs = random_objects(rng, rng.randint(1, 3), distinct_shapes=True)
    target = objs[0]
    scene = scene_of(objs, rng)
    if kind == "shape":
        absent = [s for s in SHAPES if s not in {o.shape for o in objs}]
        return _sample("Which of these shapes is in the image?", target.shape, absent + [target.shape], rng, scene)
    if kind == "colour":
        return _sample(f"What is the color of the {target.shape}?", target.colour, COLOURS, rng, scene)
    return _sample(f"Where is the {target.shape}?", POSITIONS[target.pos], POSITIONS, rng, scene)


def _text_question(rng: random.Random) -> Sample:
    kind = weighted(rng, {"shape_fact": 2, "mixing": 1, "number": 1, "alphabet": 1, "category": 1})
    if kind == "shape_fact":
        question, answer = rng.choice(list(SHAPE_FACTS.items()))
        return _sample(question, answer, SHAPES, rng)
    if kind == "mixing":
        (a, b), answer = rng.choice(list(MIXING.items()))
        if rng.random() < 0.5:
            a, b = b, a
        return _sample(f"Which color do you get when you mix {a} and {b} paint?", answer, COLOURS, rng)
    if kind == "number":
        nums = rng.sample(range(1, 10), rng.choice((3, 4, 5)))
        largest = rng.random() < 0.5
        answer = str(max(nums) if largest else min(nums))
        options = [str(n) for n in nums]
        rng.shuffle(options)
        body = f"Which number is the {'largest' if largest else 'smallest'}?\n" + "\n".join(
            f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        return Sample(body, LETTERS[options.index(answer)], None, {"num_options": len(options)})
    if kind == "alphabet":
        words = rng.sample(WORDS, rng.choice((3, 4, 5)))
        answer = min(words)
        body = "Which word comes first in alphabetical order?\n" + "\n".join(
            f"{LETTERS[i]}. {w}" for i, w in enumerate(words))
        return Sample(body, LETTERS[words.index(answer)], None, {"num_options": len(words)})
    category, members = rng.choice([("a color", COLOURS), ("a shape", SHAPES), ("an animal", ANIMALS)])
    answer = rng.choice(members)
    non_members = [w for w in WORDS + SHAPES + COLOURS if w not in members]
    options = rng.sample(non_members, rng.choice((2, 3, 4))) + [answer]
    rng.shuffle(options)
    body = f"Which word names {category}?\n" + "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return Sample(body, LETTERS[options.index(answer)], None, {"num_options": len(options)})


def generate(rng: random.Random, size: int) -> Sample:
    """One ScienceQA-style record (``size`` is unused: scenes are resolution-independent).
    refs: ``num_options`` (letters past it are invalid) and ``has_image`` (the scorer's IMG subset)."""
    sample = _text_question(rng) if rng.random() < TEXT_ONLY_SHARE else _image_question(rng)
    return Sample(sample.question, sample.answer, sample.scene, {**sample.refs, "has_image": sample.scene is not None})
