"""Chance levels: how well the constant "most frequent training answer" predictor scores.

coin-mini is only informative if a model must look at the image and read the question to score well,
so every task's majority baseline must stay well below 50%. This module measures
it with the tasks' official scorers: ``python -m tasks.chance [--data-seed N] [--mini-train N]
[--mini-test N] [--cache-dir DIR]`` prints the table; ``chance_levels(spec, tasks)`` returns it, cached per
process (the leaderboard's learnability gate reads it for every record of the same data).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from functools import lru_cache

import tasks
from tasks.types import DataSpec


def majority_answer(task: tasks.Task, spec: DataSpec) -> str:
    """The most frequent answer of the train split (ties: the first seen, so the result is deterministic)."""
    _, answers = task.load("train", spec).texts()
    return Counter(answers).most_common(1)[0][0]


def majority_baseline(spec: DataSpec, task_names: list[str] | None = None, mode: str = "official") -> dict[str, float]:
    """Accuracy (%) of predicting the majority train answer for every test record, per task, scored with
    the task's scorer (``mode``: ``official`` or ``clean``)."""
    out = {}
    for name in task_names or tasks.names():
        task = tasks.get(name)
        test = task.load("test", spec)
        constant = majority_answer(task, spec)
        out[name] = task.score([constant] * len(test), test, mode=mode).accuracy
    return out


@lru_cache(maxsize=None)
def _chance_of(spec: DataSpec, name: str, mode: str) -> float:
    return majority_baseline(spec, [name], mode)[name]


def chance_levels(spec: DataSpec, task_names: list[str] | tuple[str, ...] | None = None,
                  mode: str = "official") -> dict[str, float]:
    """``{task: chance %}`` (majority-answer accuracy, as :func:`majority_baseline`) for ``spec``. Cached per
    process by (spec, task, mode), so many records of the same data load its splits once; coin-mini splits
    are themselves cached on disk, so only a machine's first call renders anything."""
    return {name: _chance_of(spec, name, mode) for name in (task_names or tasks.names())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.chance", description=__doc__.splitlines()[0])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--mini-train", type=int, default=DataSpec.mini_train)
    p.add_argument("--mini-test", type=int, default=DataSpec.mini_test)
    p.add_argument("--image-size", type=int, default=DataSpec.image_size)
    p.add_argument("--cache-dir")
    a = p.parse_args(argv)
    spec = DataSpec(data_seed=a.data_seed, mini_train=a.mini_train, mini_test=a.mini_test, image_size=a.image_size,
                    cache_dir=a.cache_dir)
    print(f"{'task':<10} {'answers':>7} {'majority answer':<26} {'accuracy %':>10}")
    for name, acc in majority_baseline(spec).items():
        task = tasks.get(name)
        _, answers = task.load("train", spec).texts()
        print(f"{name:<10} {len(set(answers)):>7} {majority_answer(task, spec):<26} {acc:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
