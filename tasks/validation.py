"""The validation protocol: a held-out part of each task's training split stands in for its test split.

Hyper-parameters chosen by looking at test accuracy overstate a method (the test split becomes training
signal for the chooser). Under ``DataSpec(validation=True)`` a task's ``train`` split is its training
records minus a held-out ``VALIDATION_FRACTION``, and its ``test`` split is that held-out part: a run
on this spec trains and evaluates exactly as on the test protocol, and the task's real test split is
never loaded. The held-out records are a seeded random subset (seed: the data seed and the task name),
so the same spec always holds out the same records.
"""
from __future__ import annotations

import random
import zlib

from tasks.types import TaskSplit

VALIDATION_FRACTION = 0.1


def held_out_indices(task: str, n: int, data_seed: int, fraction: float = VALIDATION_FRACTION) -> list[int]:
    """Sorted indices of the ``max(1, round(fraction * n))`` training records held out for validation."""
    if n < 2:
        raise ValueError(f"task {task!r}: a validation split needs at least 2 training records, got {n}")
    k = min(n - 1, max(1, round(fraction * n)))
    rng = random.Random(data_seed * 1_000_003 + zlib.crc32(task.encode()))
    return sorted(rng.sample(range(n), k))


def split_for_validation(train: TaskSplit, data_seed: int, limit: int | None = None) -> tuple[TaskSplit, TaskSplit]:
    """(training part, validation part) of a task's training split; ``limit`` caps the validation part
    (its first ``limit`` records in held-out order), as ``limit_test`` caps a test split."""
    held = held_out_indices(train.task, len(train), data_seed)
    held_set = set(held)
    kept = [i for i in range(len(train)) if i not in held_set]
    if limit is not None:
        held = held[:limit]
    source = {**train.source, "validation": {"held_out": len(held), "of": len(train), "data_seed": data_seed}}
    return (TaskSplit(train.task, "train", train.dataset.select(kept), source),
            TaskSplit(train.task, "validation", train.dataset.select(held), source))
