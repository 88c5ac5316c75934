"""coin-mini: the eight CoIN tasks generated offline, deterministically from a data seed.

``load_split(task, split, spec)`` is what :meth:`tasks.base.Task.load` calls when no data root is given.
Each CoIN task type has one generator module here, named after the task;
``captions.pretrain_records`` is the caption mix the base model is pre-trained on.

Determinism and disjointness: record ``i`` of a split comes from one ``random.Random`` stream seeded by
(generator version, data seed, task, split), so the same seed gives identical records and pixels, and a
smaller split is a prefix of a larger one. Train and test use different streams, and in addition every
candidate record is assigned to train or test by a hash of its content (prompt, answer and pixels), so
no record can appear in both splits even where the content space is small (text-only ScienceQA).
"""
from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from tasks.base import SPLITS, DataSpec, Task, TaskError, TaskSplit
from tasks.synthetic import gqa, grounding, imagenet, ocrvqa, scienceqa, textvqa, vizwiz, vqav2
from tasks.synthetic.cache import cached
from tasks.synthetic.draw import png_bytes, render
from tasks.synthetic.layout import Sample

# Bump whenever a generator's output changes: it names the data in TaskSplit.source and run records.
GENERATOR_VERSION = "4"  # 2: text-only copying records in stage 0; 3: textvqa reads numerals, grounding targets are large, ocrvqa reweighted, option lookup in stage 0; 4: seven-segment numerals, fixed ScienceQA option lists, grounding with 1-2 distractors
TEST_BUCKETS = 8  # 1 in 8 content hashes belongs to test, the other 7 to train

Generator = Callable[[random.Random, int], Sample]
GENERATORS: dict[str, Generator] = {
    "scienceqa": scienceqa.generate,
    "textvqa": textvqa.generate,
    "imagenet": imagenet.generate,
    "gqa": gqa.generate,
    "vizwiz": vizwiz.generate,
    "grounding": grounding.generate,
    "vqav2": vqav2.generate,
    "ocrvqa": ocrvqa.generate,
}


def prompt_builder(task: Task) -> Callable[[str], str]:
    """How a question becomes the prompt. The instruction is the last line; grounding's prompt is the
    single line ``instruction + " " + expression`` as in CoIN (see ``grounding``'s docstring)."""
    if task.name == "grounding":
        return lambda question: f"{task.instruction} {question}"
    return lambda question: f"{question}\n{task.instruction}"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """A hash of this package's source: part of the cache key, so editing a generator can never serve
    stale renders even if GENERATOR_VERSION was not bumped."""
    digest = hashlib.sha1()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _is_test_content(task: str, prompt: str, answer: str, pixels: bytes) -> bool:
    """Whether a record's content hashes into the test bucket. The hash covers the rendered pixels, not
    the scene description: two scenes a hair apart can rasterise to the same image."""
    digest = hashlib.sha1("\x1f".join((task, prompt, answer)).encode() + b"\x1f" + pixels).digest()
    return int.from_bytes(digest[:8], "big") % TEST_BUCKETS == 0


def _rows(task: str, split: str, generate: Generator, prompt_of: Callable[[str], str], n: int, seed: int,
          image_size: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(f"coin-mini/v{GENERATOR_VERSION}/seed={seed}/{task}/{split}")
    # The caption mix has no test split, so it needs no content bucketing.
    want_test = None if task == "pretrain" else split == "test"
    made = 0
    while made < n:
        sample = generate(rng, image_size)
        prompt = prompt_of(sample.question)
        image = render(sample.scene, image_size) if sample.scene is not None else None
        if want_test is not None:
            pixels = image.tobytes() if image is not None else b""
            if _is_test_content(task, prompt, sample.answer, pixels) != want_test:
                continue  # rejected before PNG encoding, the costlier half of making a record
        yield {"question_id": f"{task}-{split}-{made:05d}", "prompt": prompt, "answer": sample.answer,
               "image": png_bytes(image) if image is not None else None,
               "refs": json.dumps(sample.refs, sort_keys=True)}
        made += 1


def build_split(task: str, split: str, generate: Generator, prompt_of: Callable[[str], str], n: int, seed: int,
                image_size: int, cache_dir: str | None, limit: int | None = None) -> TaskSplit:
    """Render (or load from the cache) ``n`` records, then subsample ``limit`` of them deterministically."""
    if n < 0 or (limit is not None and limit < 0):
        raise TaskError(f"coin-mini {task}/{split}: sizes must be >= 0 (n={n}, limit={limit})")
    key = {"generator_version": GENERATOR_VERSION, "code": _code_digest(), "task": task, "split": split, "n": n,
           "data_seed": seed, "image_size": image_size, "prompt_template": prompt_of("{question}")}
    ds = cached(f"{task}-{split}", key,
                lambda: _rows(task, split, generate, prompt_of, n, seed, image_size), cache_dir)
    if limit is not None and limit < len(ds):
        picker = random.Random(f"coin-mini-limit/seed={seed}/{task}/{split}")
        ds = ds.select(sorted(picker.sample(range(len(ds)), limit)))
    source = {"kind": "coin-mini", "data_seed": seed, "generator_version": GENERATOR_VERSION,
              "code_digest": _code_digest(), "n": len(ds),
              "generated": n, "image_size": image_size}
    return TaskSplit(task, split, ds, source)


def load_split(task: Task, split: str, spec: DataSpec) -> TaskSplit:
    """The coin-mini ``split`` of ``task`` for ``spec`` (sizes, seed, image size, cache dir, limits)."""
    if task.name not in GENERATORS:
        raise TaskError(f"coin-mini has no generator for task {task.name!r}; it has: {', '.join(GENERATORS)}")
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r} for task {task.name!r}; valid splits: {', '.join(SPLITS)}")
    n, limit = (spec.mini_train, spec.limit_train) if split == "train" else (spec.mini_test, spec.limit_test)
    return build_split(task.name, split, GENERATORS[task.name], prompt_builder(task), n, spec.data_seed,
                       spec.image_size, spec.cache_dir, limit)


__all__ = ["GENERATORS", "GENERATOR_VERSION", "build_split", "load_split", "prompt_builder"]
