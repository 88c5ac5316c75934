"""Writes retention.jsonl: 300 deterministic text-only copying items (seed 2024), the language skill every
backbone has before the continual stream (a pretrained LLM copies text; the tiny stage 0 trains the same
"Repeat the text exactly." format on its caption mix). Each line: ``id``, ``text`` (the string to copy),
``choices`` (the text and three near-miss distortions, shuffled) and ``label`` (index of the text).

    python bench/lmeval_tasks/retention/make_data.py   # rewrites the file byte for byte
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


def item(rng: random.Random, index: int) -> dict:
    parts = [piece(rng) for _ in range(rng.randint(1, 4))]
    text = " ".join(parts)
    wrong: list[str] = []
    while len(wrong) < 3:
        candidate = " ".join(distort(rng, parts))
        if candidate != text and candidate not in wrong:
            wrong.append(candidate)
    choices = [text, *wrong]
    rng.shuffle(choices)
    return {"id": f"retention-{index:03d}", "text": text, "choices": choices, "label": choices.index(text)}


def lines() -> list[str]:
    rng = random.Random(SEED)
    return [json.dumps(item(rng, i), sort_keys=True) for i in range(N)]


def main() -> None:
    path = Path(__file__).with_name("retention.jsonl")
    path.write_text("\n".join(lines()) + "\n")
    print(f"wrote {N} items to {path}")


if __name__ == "__main__":
    main()
