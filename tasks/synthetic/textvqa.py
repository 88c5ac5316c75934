"""coin-mini TextVQA: read the number drawn in the scene (bus numbers, house numbers, jersey numbers:
the numerals that make up a large share of real TextVQA answers).

One number (optionally on a sign, optionally next to a shape) or two numbers in different colours at
the top and bottom, where the question says which one to read. The target is drawn uniformly from the
nine numerals 1-9, so the constant-answer baseline is about 11%. Each record carries ten reference
answers with the variation real annotators produce (an article, a typo, an odd answer out), scored
with VQA soft accuracy after EvalAI normalisation: the canonical answer always matches at least seven
of the ten (accuracy 1.0), a typo matches few.

Why numerals and not words (generator v3): with the tiny backbone (a 2-layer ViT on 64 px images)
reading one of 24 five-letter words stayed at chance even with the whole model trained for 300 steps,
so the task measured nothing. Why seven-segment digits (v4): numerals in the font stayed at chance
too; the digits are now drawn as the thick bars of a display board (``draw.Digits``), which that
backbone resolves the same way it resolves the shapes of the other tasks.
"""
from __future__ import annotations

import random

from tasks.synthetic.draw import Digits, Rect, Scene, Shape, rgb
from tasks.synthetic.layout import Sample, background, cell_box
from tasks.synthetic.vocab import COLOURS, NUMERALS, SHAPES, TEXT_COLOURS, WHITE, article

FONT = 0.55  # digit height: 35 px at 64 px, one digit spans about 3x5 patches of the patch-8 ViT
FONT_TWO = 0.4  # two numbers, one above the other
SIGN_COLOURS = (WHITE, (250, 236, 150), (200, 230, 255))


def _typo(rng: random.Random, word: str) -> str:
    """A plausible annotator typo that differs from ``word``."""
    i = rng.randrange(len(word))
    kind = rng.choice(("drop", "double", "swap", "vowel"))
    if kind == "drop" and len(word) > 3:
        return word[:i] + word[i + 1:]
    if kind == "swap" and i < len(word) - 1 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "vowel":
        vowels = [j for j, c in enumerate(word) if c in "aeiou"]
        if vowels:
            j = rng.choice(vowels)
            return word[:j] + rng.choice([v for v in "aeiou" if v != word[j]]) + word[j + 1:]
    return word[:i] + word[i] + word[i:]  # doubled letter


def reference_answers(rng: random.Random, word: str) -> list[str]:
    """Ten answers: mostly ``word``, some in another case or with an article (these still match after
    EvalAI normalisation), at most three that do not match (typos, another word)."""
    answers = [word] * 10
    slots = rng.sample(range(10), 6)
    n_case, n_article = rng.randint(0, 2), rng.randint(0, 1)
    n_typo, n_other = rng.randint(0, 2), int(rng.random() < 0.2)
    for _ in range(n_case):
        answers[slots.pop()] = rng.choice((word.capitalize(), word.upper()))
    for _ in range(n_article):
        answers[slots.pop()] = rng.choice(("the", article(word))) + " " + word
    for _ in range(n_typo):
        answers[slots.pop()] = _typo(rng, word)
    for _ in range(n_other):
        answers[slots.pop()] = rng.choice([w for w in NUMERALS if w != word])
    return answers


def _one_number(rng: random.Random, word: str) -> tuple[str, Scene]:
    colour = rng.choice(TEXT_COLOURS)
    left = rng.random() < 0.5
    x = (0.3 if left else 0.7) + rng.uniform(-0.05, 0.05)
    y = 0.5 + rng.uniform(-0.1, 0.1)
    items: list = []
    on_sign = rng.random() < 0.35
    if on_sign:
        items.append(Rect(rng.choice(SIGN_COLOURS), (x - 0.2, y - 0.33, x + 0.2, y + 0.33)))
    items.append(Digits(word, rgb(colour), (x, y), FONT))
    if rng.random() < 0.4:  # a shape on the other side: the model must find the number, not read one spot
        cell = rng.choice((2, 8) if left else (0, 6))
        items.append(Shape(rng.choice(SHAPES), rgb(rng.choice(COLOURS)), cell_box(cell, "small")))
    if on_sign:
        question = rng.choice(("What does the sign say?", "What number is on the sign?"))
    else:
        question = rng.choice(("What is written in the image?", "What number is shown?", f"What number is written in {colour}?"))
    return question, Scene(background(rng), tuple(items))


def _two_numbers(rng: random.Random, word: str) -> tuple[str, Scene]:
    other = rng.choice([w for w in NUMERALS if w != word])
    colours = rng.sample(TEXT_COLOURS, 2)
    target_top = rng.random() < 0.5
    top, bottom = (word, other) if target_top else (other, word)
    items = (Digits(top, rgb(colours[0]), (0.5 + rng.uniform(-0.05, 0.05), 0.25), FONT_TWO),
             Digits(bottom, rgb(colours[1]), (0.5 + rng.uniform(-0.05, 0.05), 0.75), FONT_TWO))
    target_colour = colours[0] if target_top else colours[1]
    if rng.random() < 0.5:
        question = f"What number is written in {target_colour}?"
    else:
        question = f"What is the number at the {'top' if target_top else 'bottom'}?"
    return question, Scene(background(rng), items)


def generate(rng: random.Random, size: int) -> Sample:
    word = rng.choice(NUMERALS)
    question, scene = _one_number(rng, word) if rng.random() < 0.6 else _two_numbers(rng, word)
    return Sample(question, word, scene, {"answers": reference_answers(rng, word)})
