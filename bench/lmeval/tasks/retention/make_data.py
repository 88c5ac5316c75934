"""Writes retention.jsonl: 300 deterministic text-only items (seed 2024) of the language the backbone
knows before the continual stream: 150 copying items ("Repeat the text exactly.", the format of the
stage-0 mix's copying records; a pretrained LLM copies text) and 150 captions in the stage-0 caption
grammar. Each line: ``id``, ``kind`` (copy | caption), ``prompt``, ``answer``, ``choices`` (the answer
and three near misses: distorted copies, or the caption's words in a scrambled order; shuffled) and
``label`` (index of the answer).

    python bench/lmeval/tasks/retention/make_data.py   # rewrites the file byte for byte
"""
from __future__ import annotations

import json
import random
from pathlib import Path

N, SEED = 300, 2024
WORDS = ("apple", "bread", "cake", "milk", "tea", "fish", "bird", "cat", "dog", "frog", "lion", "bear", "tree",
         "rose", "leaf", "sun", "rain", "snow", "door", "lamp", "ship", "car", "bus", "king")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "moon")
NAMES = ("Lee", "Khan", "Wong", "Diaz", "Cruz", "Bell", "Park", "Ross", "Hill", "Kim", "Fox", "Shaw")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
POOL = WORDS + COLOURS + SHAPES + NAMES + NUMBERS + ("yes", "no")


def piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return rng.choice("ABCDE")
    if kind < 0.3:
        return str(rng.randint(0, 12))
    word = rng.choice(POOL)
    return word.capitalize() if rng.random() < 0.25 else word


def distort(rng: random.Random, parts: list[str]) -> list[str]:
    """One near miss: a piece replaced, dropped, added or two pieces swapped."""
    out = list(parts)
    move = rng.choice(("replace", "drop", "add", "swap") if len(out) > 1 else ("replace", "add"))
    if move == "replace":
        i = rng.randrange(len(out))
        out[i] = rng.choice([w for w in POOL if w != out[i]])
    elif move == "drop":
        del out[rng.randrange(len(out))]
    elif move == "add":
        out.insert(rng.randrange(len(out) + 1), piece(rng))
    else:
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


PLACES = ("at the top left", "at the top", "at the top right", "on the left", "in the center", "on the right",
          "at the bottom left", "at the bottom", "at the bottom right")
CAPTION_PROMPTS = ("Describe the image briefly.", "Write a short caption for the image.")
COPY_PROMPT = "Repeat the text exactly."


def caption(rng: random.Random) -> str:
    """A caption in the grammar of the stage-0 caption mix (objects, counts or drawn words)."""
    kind = rng.random()
    if kind < 0.5:
        objs = [f"{rng.choice(('a', 'one'))} {rng.choice(('small', 'large'))} {rng.choice(COLOURS)} "
                f"{rng.choice(SHAPES)} {rng.choice(PLACES)}" for _ in range(rng.randint(1, 2))]
        return " and ".join(objs).replace("a a", "an a").replace("a o", "an o")
    if kind < 0.75:
        return f"{rng.choice(NUMBERS[1:5])} {rng.choice(COLOURS)} {rng.choice(SHAPES)}s"
    return f'the word "{rng.choice(WORDS)}" in {rng.choice(COLOURS)}'


def scramble(rng: random.Random, text: str) -> str:
    words = text.split()
    while True:
        out = list(words)
        if rng.random() < 0.5 and len(out) > 2:
            rng.shuffle(out)
        else:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        if out != words:
            return " ".join(out)


def item(rng: random.Random, index: int) -> dict:
    """Even ids: copying (prompt = text + the copy instruction); odd ids: a caption against three
    scrambled word orders (text-only prompt; the choice tests the caption grammar)."""
    if index % 2 == 0:
        parts = [piece(rng) for _ in range(rng.randint(1, 4))]
        answer, kind, prompt = " ".join(parts), "copy", None
        make = lambda: " ".join(distort(rng, parts))  # noqa: E731
    else:
        answer, kind, prompt = caption(rng), "caption", rng.choice(CAPTION_PROMPTS)
        make = lambda: scramble(rng, answer)  # noqa: E731
    wrong: list[str] = []
    for _ in range(50):
        candidate = make()
        if candidate != answer and candidate not in wrong:
            wrong.append(candidate)
        if len(wrong) == 3:
            break
    choices = [answer, *wrong]
    rng.shuffle(choices)
    prompt = prompt or f"{answer}\n{COPY_PROMPT}"
    return {"id": f"retention-{index:03d}", "kind": kind, "prompt": prompt, "answer": answer, "choices": choices,
            "label": choices.index(answer)}


def lines() -> list[str]:
    rng = random.Random(SEED)
    return [json.dumps(item(rng, i), sort_keys=True) for i in range(N)]


def main() -> None:
    path = Path(__file__).with_name("retention.jsonl")
    path.write_text("\n".join(lines()) + "\n")
    print(f"wrote {N} items to {path}")


if __name__ == "__main__":
    main()
