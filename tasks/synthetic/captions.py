"""The caption pre-training mix (task "pretrain"; not one of the eight CoIN tasks).

The harness trains the shared dense base model on these records before the continual stream, the way
LLaVA's projector is pre-trained on captions before instruction tuning. The captions name everything the
eight tasks later ask about: colours, shapes, sizes, grid positions, counts (as words and digits), drawn
words, book covers and degraded photos; a share of them describes only the part of the image the
instruction names (focused captions), so the base reads by request as a pretrained LLM does. They never
use a task's question or answer format, so the base model knows the vocabulary but none of the tasks
(its row 0 of the accuracy matrix stays low).
"""
from __future__ import annotations

import random

from tasks.base import TaskSplit
from tasks.synthetic import build_split
from tasks.synthetic.draw import Digits, Rect, Scene, Shape, Text, rgb
from tasks.synthetic.layout import Obj, Sample, background, box_string, cell_box, random_objects, scene_of, weighted
from tasks.synthetic.ocrvqa import cover
from tasks.synthetic.textvqa import FONT_TWO
from tasks.synthetic.vocab import (AUTHORS, COLOURS, GENRES, NUMBER_WORDS, NUMERALS, PLURAL, SHAPES, TEXT_COLOURS, WHITE,
                                   WORDS, article)

INSTRUCTIONS = ("Describe the image briefly.", "Write a short caption for the image.")
# Where each grid cell is, as a caption phrase.
PLACE: tuple[str, ...] = ("at the top left", "at the top", "at the top right", "on the left", "in the center",
                          "on the right", "at the bottom left", "at the bottom", "at the bottom right")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _describe(o: Obj) -> str:
    return f"{article(o.size)} {o.size} {o.colour} {o.shape} {PLACE[o.pos]}"


def _objects(rng: random.Random) -> tuple[str, Scene]:
    objs = sorted(random_objects(rng, rng.randint(1, 4)), key=lambda o: o.pos)  # reading order
    return _join([_describe(o) for o in objs]), scene_of(objs, rng)


def _grounded(rng: random.Random) -> tuple[str, Scene]:
    """A grounded caption: each object with its box, as the region-caption pretraining data of grounding
    LVLMs (Kosmos-2's GRIT, Shikra) pairs phrases with coordinates. It teaches writing a position as
    "[x1, y1, x2, y2]", not the grounding task: no referring expression, no instruction of the task.
    Why (coin-mini v4): without it the tiny decoder needed about 600 steps on Grounding to write the
    right box at all (0% after the default 150, whatever the distractors; 46.5% after 600)."""
    objs = sorted(random_objects(rng, rng.randint(1, 2)), key=lambda o: o.pos)
    parts = [f"{article(o.size)} {o.size} {o.colour} {o.shape} at {box_string(cell_box(o.pos, o.size))}" for o in objs]
    return _join(parts), scene_of(objs, rng, jitter=0.0)


def _count(rng: random.Random) -> tuple[str, Scene]:
    n, colour, shape = rng.randint(2, 5), rng.choice(COLOURS), rng.choice(SHAPES)
    cells = rng.sample(range(9), 9)
    objs = [Obj(shape, colour, cells.pop(), "small") for _ in range(n)]
    number = NUMBER_WORDS[n] if rng.random() < 0.5 else str(n)  # digits too: VQAv2 answers "3"
    parts = [f"{number} {colour} {PLURAL[shape]}"]
    if rng.random() < 0.5:
        other = Obj(rng.choice([s for s in SHAPES if s != shape]), rng.choice(COLOURS), cells.pop(), "small")
        objs.append(other)
        parts.append(f"one {other.colour} {other.shape}")
    return _join(parts), scene_of(objs, rng)


def _single(rng: random.Random) -> tuple[str, Scene]:
    colour, shape, half = rng.choice(COLOURS), rng.choice(SHAPES), rng.uniform(0.22, 0.36)
    cx, cy = (rng.uniform(half + 0.02, 0.98 - half) for _ in range(2))
    return f"a big {colour} {shape}", Scene(background(rng), (Shape(shape, rgb(colour), (cx - half, cy - half, cx + half, cy + half)),))


def _numeral(rng: random.Random) -> tuple[str, Scene]:
    """A large numeral, as TextVQA's signs show them (taught here so the frozen vision tower resolves them)."""
    numeral, colour = rng.choice(NUMERALS), rng.choice(TEXT_COLOURS)
    x, y = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.65)
    items: list = []
    caption = f"the number {numeral} in {colour}"
    if rng.random() < 0.35:
        items.append(Rect(WHITE, (x - 0.2, y - 0.33, x + 0.2, y + 0.33)))
        caption = f"a white sign with the number {numeral} in {colour}"
    items.append(Digits(numeral, rgb(colour), (x, y), rng.choice((0.4, 0.55))))
    return caption, Scene(background(rng), tuple(items))


def _two_lines(rng: random.Random, numerals: bool) -> tuple[tuple[str, str], tuple[str, str], Scene]:
    """Two different words (or seven-segment numerals) in two colours, one above the other, as the
    two-number scenes of TextVQA draw them: ``((upper, colour), (lower, colour), scene)``."""
    (w1, w2), (c1, c2) = rng.sample(NUMERALS if numerals else WORDS, 2), rng.sample(TEXT_COLOURS, 2)
    if numerals:
        items = (Digits(w1, rgb(c1), (0.5, 0.25), FONT_TWO), Digits(w2, rgb(c2), (0.5, 0.75), FONT_TWO))
    else:
        items = (Text(w1, rgb(c1), (0.5, 0.25), 0.25), Text(w2, rgb(c2), (0.5, 0.75), 0.25))
    return (w1, c1), (w2, c2), Scene(background(rng), items)


def _text(rng: random.Random) -> tuple[str, Scene]:
    if rng.random() < 0.6:
        word, colour, y = rng.choice(WORDS), rng.choice(TEXT_COLOURS), rng.choice((1 / 6, 0.5, 5 / 6))
        items: list = []
        caption = f'the word "{word}" in {colour}'
        if rng.random() < 0.35:
            items.append(Rect(WHITE, (0.08, y - 0.16, 0.92, y + 0.16)))
            caption = f'a white sign with the word "{word}" in {colour}'
        items.append(Text(word, rgb(colour), (0.5, y), 0.25))
        return caption, Scene(background(rng), tuple(items))
    (w1, c1), (w2, c2), scene = _two_lines(rng, numerals=False)
    return f'the word "{w1}" in {c1} above the word "{w2}" in {c2}', scene


def _cover_parts(rng: random.Random) -> tuple[str, str, str, str, str]:
    """A book's title, author and genre, and the genre's cover colour and emblem."""
    title, author, genre = rng.choice(WORDS).capitalize(), rng.choice(AUTHORS), rng.choice(list(GENRES))
    return (title, author, genre) + GENRES[genre]


def _book(rng: random.Random) -> tuple[str, Scene]:
    title, author, genre, colour, emblem = _cover_parts(rng)
    # The genre itself is not named: mapping cover style to genre is what the ocrvqa task has to learn.
    caption = f'{article(colour)} {colour} book cover with {article(emblem)} {emblem}, the title "{title}" and the author "{author}"'
    return caption, cover(rng, title, author, genre)


def _degraded(rng: random.Random) -> tuple[str, Scene]:
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    half = rng.uniform(0.2, 0.3)
    item = Shape(shape, rgb(colour), (0.5 - half, 0.5 - half, 0.5 + half, 0.5 + half))
    kind = rng.choice(("blurry", "dark", "very blurry", "very dark", "empty"))
    if kind == "empty":
        return "a noisy photo of an empty background", Scene(background(rng), (), noise=6.0, noise_seed=rng.getrandbits(32))
    effects = {"blurry": {"blur": 0.012}, "dark": {"brightness": 0.55}, "very blurry": {"blur": 0.15},
               "very dark": {"brightness": 0.05}}[kind]
    subject = f"{article(colour)} {colour} {shape}" if not kind.startswith("very") else "something"
    return f"{article(kind)} {kind} photo of {subject}", Scene(background(rng), (item,), **effects)


ECHO_INSTRUCTION = "Repeat the text exactly."


def _echo_piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.2:
        return rng.choice("ABCDE")
    if kind < 0.35:
        return str(rng.randint(0, 12))
    if kind < 0.5:
        return "[" + ", ".join(f"{rng.random():.2f}" for _ in range(4)) + "]"
    word = rng.choice(WORDS + COLOURS + SHAPES + AUTHORS + tuple(GENRES) + NUMBER_WORDS + ("yes", "no", "unanswerable"))
    return word.capitalize() if rng.random() < 0.3 else word


def _echo(rng: random.Random) -> Sample:
    """Text-only copying: the base model has then produced every kind of answer token (option letters,
    digits, box strings, capitalised words) at least once, the way a pretrained LLM has. Without it the
    output rows of tokens such as " A" are only ever pushed down in stage 0, and a LoRA on the decoder
    cannot lift them within a task's budget. It copies strings; it maps no question to an answer."""
    text = " ".join(_echo_piece(rng) for _ in range(rng.randint(1, 3)))
    return Sample(text + "\n" + ECHO_INSTRUCTION, text, None)


CAPITALISE_INSTRUCTION = "Write the text with a capital first letter."


def _capitalise(rng: random.Random) -> Sample:
    """Text-only capitalisation: "red star" -> "Red star". A pretrained LLM knows that "Red" is "red"
    at the start of a sentence; the tiny decoder has no language pretraining, and copying (``_echo``)
    lets it write " Red" only where the prompt already spells it. ImageNet's answers are capitalised
    class names ("Red star"), so without this the task first had to learn eight new output words for
    colours the base already names: a LoRA on the FFN linears (trained on ScienceQA, TextVQA, then
    ImageNet) stayed at the loss of guessing the class on two of three seeds (ImageNet 32.0 / 4.5 /
    10.5 after its 150 steps); with capitalisation and the bare "colour shape" focused captions in
    stage 0 it reached 49.0 / 51.5 / 50.5."""
    pool = rng.choice((COLOURS, SHAPES, WORDS, NUMBER_WORDS))
    words = [rng.choice(pool)] + [rng.choice(SHAPES + WORDS) for _ in range(rng.randint(0, 1))]
    text = " ".join(w.lower() for w in words)
    return Sample(text + "\n" + CAPITALISE_INSTRUCTION, text[0].upper() + text[1:], None)


OPTION_INSTRUCTION = "Give the letter of the matching option."


def _option_lookup(rng: random.Random) -> Sample:
    """Text-only option lookup: the letter of the listed option that equals a given word. A pretrained
    LLM brings this skill (binding an option's content to its label) to LLaVA; the tiny decoder has no
    language pretraining, and without it ScienceQA's letter answers stayed at the constant-letter
    baseline after training on the task. It asks no science question and uses none of the tasks'
    instructions, so the base model still knows none of the eight tasks."""
    pool = rng.choice((WORDS, COLOURS, SHAPES, NUMBER_WORDS))
    options = rng.sample(pool, rng.choice((2, 3, 4, 5)))
    target = rng.randrange(len(options))
    body = f"Which option says {options[target]}?\n" + "\n".join(f"{'ABCDE'[i]}. {o}" for i, o in enumerate(options))
    return Sample(body + "\n" + OPTION_INSTRUCTION, "ABCDE"[target], None)


FOCUS_INSTRUCTION = "Describe only {part}."


def _focused(rng: random.Random) -> Sample:
    """A caption of one part of the image, the part named by the instruction: an object by its place
    or shape, one of two words or numerals, or one element of a book cover. A pretrained LLM brings
    reading by request (the prompt decides which content of the context the answer copies) to LLaVA;
    caption-only pretraining never asks for it, so the frozen attention of the tiny decoder reads an
    image the same way whatever the question, and methods that adapt only the FFNs then learn
    question-dependent reading (OCR-VQA's title vs author, TextVQA's upper vs lower number) slowly or
    not at all. The answers are caption phrases, never a task's answer format, and the prompt is none
    of the tasks' questions."""
    kind = rng.random()
    if kind < 0.4:
        objs = random_objects(rng, rng.randint(2, 4), distinct_shapes=True)
        o = rng.choice(objs)
        if rng.random() < 0.5:
            # Half of them the bare "colour shape" of a short label, so the base also names what it
            # sees as the answer's first word, not only after an article and a size.
            label = f"{o.colour} {o.shape}" if rng.random() < 0.5 else f"{article(o.size)} {o.size} {o.colour} {o.shape}"
            part, caption = f"the object {PLACE[o.pos]}", label
        else:
            part, caption = f"the {o.shape}", _describe(o)
        return Sample(FOCUS_INSTRUCTION.format(part=part), caption, scene_of(objs, rng))
    if kind < 0.65:
        numerals = rng.random() < 0.5
        upper, lower, scene = _two_lines(rng, numerals)
        (text, colour), which = (upper, "upper") if rng.random() < 0.5 else (lower, "lower")
        noun = "number" if numerals else "word"
        caption = f"the number {text} in {colour}" if numerals else f'the word "{text}" in {colour}'
        return Sample(FOCUS_INSTRUCTION.format(part=f"the {which} {noun}"), caption, scene)
    title, author, genre, colour, emblem = _cover_parts(rng)
    part, caption = rng.choice((("the text at the top of the cover", f'the title "{title}"'),
                                ("the text at the bottom of the cover", f'the author "{author}"'),
                                ("the cover's design", f"{article(colour)} {colour} cover with {article(emblem)} {emblem}")))
    return Sample(FOCUS_INSTRUCTION.format(part=part), caption, cover(rng, title, author, genre))


# Numeral captions weigh 0.48: at 0.16 the base named the right numeral in 15 of 60 numeral captions
# (training records alike) and in 5 of 60 TextVQA scenes, while a linear probe on its image features
# read the digit of 98% of TextVQA scenes: the decoder, not the vision tower, lacked examples of
# reading a digit wherever it is drawn. At 0.48 (and 4000 steps) it names 14 of 60 TextVQA scenes.
_KINDS = {"objects": (_objects, 0.26), "grounded": (_grounded, 0.10), "count": (_count, 0.10),
          "single": (_single, 0.06), "text": (_text, 0.08), "numeral": (_numeral, 0.48), "book": (_book, 0.07),
          "degraded": (_degraded, 0.06)}
ECHO_FRACTION = 0.08
CAPITALISE_FRACTION = 0.04
OPTION_FRACTION = 0.10
FOCUS_FRACTION = 0.15


def generate(rng: random.Random, size: int) -> Sample:
    """One caption record; ``question`` is the whole prompt."""
    draw = rng.random()
    if draw < ECHO_FRACTION:
        return _echo(rng)
    if draw < ECHO_FRACTION + CAPITALISE_FRACTION:
        return _capitalise(rng)
    if draw < ECHO_FRACTION + CAPITALISE_FRACTION + OPTION_FRACTION:
        return _option_lookup(rng)
    if draw < ECHO_FRACTION + CAPITALISE_FRACTION + OPTION_FRACTION + FOCUS_FRACTION:
        return _focused(rng)
    make = _KINDS[weighted(rng, {k: w for k, (_, w) in _KINDS.items()})][0]
    caption, scene = make(rng)
    return Sample(rng.choice(INSTRUCTIONS), caption, scene)


def pretrain_records(n: int, seed: int, image_size: int, cache_dir: str | None = None) -> TaskSplit:
    """``n`` caption records (task "pretrain", split "train"), rendered once and cached like the tasks."""
    return build_split("pretrain", "train", generate, lambda question: question, n, seed, image_size, cache_dir)
