"""coin-mini TextVQA: read a word drawn in the scene.

One word (optionally on a sign, optionally next to a shape) or two words in different colours at the
top and bottom, where the question says which one to read. The target word is drawn uniformly from the
24-word vocabulary, so the constant-answer baseline is about 4%. Each record carries ten reference
answers with the variation real annotators produce (case, an article, a typo, an odd answer out),
scored with VQA soft accuracy after EvalAI normalisation: the canonical word always matches at least
seven of the ten (accuracy 1.0), a typo matches few.
"""
from __future__ import annotations

import random

from tasks.synthetic.draw import Rect, Scene, Shape, Text, rgb
from tasks.synthetic.layout import Sample, background, cell_box
from tasks.synthetic.vocab import COLOURS, SHAPES, TEXT_COLOURS, WHITE, WORDS, article

FONT = 0.25  # 16 px at 64 px: legible for a patch-8 ViT (brief: >= 14 px)
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
        answers[slots.pop()] = rng.choice([w for w in WORDS if w != word])
    return answers


def _one_word(rng: random.Random, word: str) -> tuple[str, Scene]:
    colour = rng.choice(TEXT_COLOURS)
    row = rng.randrange(3)
    y = (row + 0.5) / 3 + rng.uniform(-0.03, 0.03)
    x = 0.5 + rng.uniform(-0.06, 0.06)
    items: list = []
    on_sign = rng.random() < 0.35
    if on_sign:
        items.append(Rect(rng.choice(SIGN_COLOURS), (x - 0.42, y - 0.16, x + 0.42, y + 0.16)))
    items.append(Text(word, rgb(colour), (x, y), FONT))
    if rng.random() < 0.4:  # a shape in another row: the model must find the text, not just read the middle
        other_row = rng.choice([r for r in range(3) if r != row])
        items.append(Shape(rng.choice(SHAPES), rgb(rng.choice(COLOURS)), cell_box(3 * other_row + rng.choice((0, 2)), "small")))
    if on_sign:
        question = rng.choice(("What does the sign say?", "What word is on the sign?"))
    else:
        question = rng.choice(("What is written in the image?", "What word is shown?", f"What word is written in {colour}?"))
    return question, Scene(background(rng), tuple(items))


def _two_words(rng: random.Random, word: str) -> tuple[str, Scene]:
    other = rng.choice([w for w in WORDS if w != word])
    colours = rng.sample(TEXT_COLOURS, 2)
    target_top = rng.random() < 0.5
    top, bottom = (word, other) if target_top else (other, word)
    items = (Text(top, rgb(colours[0]), (0.5 + rng.uniform(-0.05, 0.05), 0.25), FONT),
             Text(bottom, rgb(colours[1]), (0.5 + rng.uniform(-0.05, 0.05), 0.75), FONT))
    target_colour = colours[0] if target_top else colours[1]
    if rng.random() < 0.5:
        question = f"What word is written in {target_colour}?"
    else:
        question = f"What is the word at the {'top' if target_top else 'bottom'}?"
    return question, Scene(background(rng), items)


def generate(rng: random.Random, size: int) -> Sample:
    word = rng.choice(WORDS)
    question, scene = _one_word(rng, word) if rng.random() < 0.6 else _two_words(rng, word)
    return Sample(question, word, scene, {"answers": reference_answers(rng, word)})
