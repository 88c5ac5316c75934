"""coin-mini OCR-VQA: title, author and genre of a rendered book cover.

The cover shows a title word (top) and an author surname (bottom) in a font of at least 14 px at 64 px;
the genre is never written: it is shown by the cover style (cover colour + emblem shape, see
``vocab.GENRES``), as a cover's design hints at its genre. Questions follow OCR-VQA's templates,
including its "Is this book related to <genre>?" yes/no form. Answer space: 24 titles + 12 authors +
6 genres + yes/no = 44; the constant baseline ("yes" or "no") is about 15%.
"""
from __future__ import annotations

import random

from tasks.synthetic.draw import Rect, Scene, Shape, Text, rgb
from tasks.synthetic.layout import Sample, background, weighted
from tasks.synthetic.vocab import AUTHORS, GENRES, WHITE, WORDS

DARK_TEXT_COVERS = {"orange", "pink", "yellow"}  # light covers get black text, the others white
TITLE_FONT, AUTHOR_FONT = 0.24, 0.22  # 15 px and 14 px at 64 px


def cover(rng: random.Random, title: str, author: str, genre: str) -> Scene:
    """The cover of a book (a little off-centre on a light table)."""
    colour, emblem = GENRES[genre]
    ink = rgb("black") if colour in DARK_TEXT_COVERS else WHITE
    dx = rng.uniform(-0.03, 0.03)
    ex = 0.5 + dx + rng.uniform(-0.08, 0.08)
    items = (
        Rect(rgb(colour), (0.06 + dx, 0.01, 0.94 + dx, 0.99)),
        Text(title, ink, (0.5 + dx, 0.18), TITLE_FONT),
        Shape(emblem, ink, (ex - 0.12, 0.38, ex + 0.12, 0.62)),
        Text(author, ink, (0.5 + dx, 0.82), AUTHOR_FONT),
    )
    return Scene(background(rng), items)


def generate(rng: random.Random, size: int) -> Sample:
    title, author, genre = rng.choice(WORDS).capitalize(), rng.choice(AUTHORS), rng.choice(list(GENRES))
    # Genre (shown by the cover's style) and the yes/no form carry most of the weight: reading a title or
    # an author word is at the limit of the tiny backbone (generator v3; v2 was 0.3/0.3/0.25/0.15).
    kind = weighted(rng, {"title": 0.2, "author": 0.15, "genre": 0.35, "related": 0.3})
    if kind == "title":
        question, answer = "What is the title of this book?", title
    elif kind == "author":
        question, answer = rng.choice(("Who wrote this book?", "Who is the author of this book?")), author
    elif kind == "genre":
        question, answer = rng.choice(("What is the genre of this book?", "What type of book is this?")), genre
    else:
        answer = "yes" if rng.random() < 0.5 else "no"
        asked = genre if answer == "yes" else rng.choice([g for g in GENRES if g != genre])
        question = f"Is this book related to {asked}?"
    return Sample(question, answer, cover(rng, title, author, genre))
