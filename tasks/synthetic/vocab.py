"""The visual vocabulary shared by every coin-mini generator and the caption pre-training mix.

Every task draws from the same small closed sets (colours, shapes, positions, sizes, words). That is a
design requirement, not a shortcut: the pre-training captions teach these words once, the eight tasks
then ask about them in different ways, so fine-tuning on one task disturbs what another task relies on
(sequential fine-tuning forgets) and a task locator cannot tell tasks apart from the pixels' vocabulary
alone. The sets are small so that a tiny model can learn each task in a few hundred steps.
"""
from __future__ import annotations

# Eight named, mutually distinct, saturated colours; all contrast with the light backgrounds below.
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 36, 36),
    "orange": (246, 138, 16),
    "yellow": (238, 204, 18),
    "green": (34, 158, 58),
    "blue": (36, 78, 224),
    "purple": (138, 56, 192),
    "pink": (242, 106, 182),
    "black": (28, 28, 28),
}
COLOURS: tuple[str, ...] = tuple(RGB)

# Colours dark enough for legible text on a light background (yellow/pink/orange are not).
TEXT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "purple", "black")

WHITE = (250, 250, 250)
# Light backgrounds; a scene picks one so that the background is not a constant the model can ignore.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((236, 236, 236), (246, 241, 226), (226, 236, 246), (242, 242, 248))

# Eight silhouettes that stay distinguishable at ~13 px (no hexagon: it reads as a circle that small).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "moon")
PLURAL: dict[str, str] = {s: (s + "es" if s.endswith("ss") else s + "s") for s in SHAPES}

# 3x3 grid cells, row-major: index = 3 * row + col.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
SIZES: tuple[str, ...] = ("small", "large")

# Short words (<= 5 letters, so they fit 64 px at font size 16) that are not colour or shape names:
# the OCR-style tasks (textvqa, vizwiz, ocrvqa) and the captions all read from this one list.
WORDS: tuple[str, ...] = (
    "apple", "bread", "cake", "milk", "tea", "fish", "bird", "cat",
    "dog", "frog", "lion", "bear", "tree", "rose", "leaf", "sun",
    "rain", "snow", "door", "lamp", "ship", "car", "bus", "king",
)
# The numerals TextVQA reads (drawn large) and the captions name: "1" .. "9".
NUMERALS: tuple[str, ...] = tuple(str(n) for n in range(1, 10))
ANIMALS: tuple[str, ...] = ("fish", "bird", "cat", "dog", "frog", "lion", "bear")

# Book-cover vocabulary for ocrvqa (author surnames are printed capitalised, as on real covers).
AUTHORS: tuple[str, ...] = ("Lee", "Khan", "Wong", "Diaz", "Cruz", "Bell", "Park", "Ross", "Hill", "Kim", "Fox", "Shaw")
# Genre -> (cover colour, emblem shape): the genre is shown by the cover style, never written.
GENRES: dict[str, tuple[str, str]] = {
    "Cookbooks": ("orange", "circle"),
    "Travel": ("blue", "triangle"),
    "Romance": ("pink", "heart"),
    "History": ("yellow", "square"),
    "Science & Math": ("green", "star"),
    "Sports & Outdoors": ("purple", "cross"),
}

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def article(word: str) -> str:
    """'a' or 'an' for ``word`` (captions and expressions read naturally; the tokenizer sees both)."""
    return "an" if word[:1] in "aeiou" else "a"
