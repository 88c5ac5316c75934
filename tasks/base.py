"""The task interface every CoIN task adapter and every coin-mini generator implements.

A task turns a data source (real CoIN files or the synthetic coin-mini generator) into a
:class:`TaskSplit`: an indexable, lazily decoded sequence of :class:`Record` s backed by a
``datasets.Dataset`` (images stay paths / encoded bytes until a record is read).
Scoring is delegated to the pure functions in :mod:`tasks.scoring` (the official CoIN rules, per record).
The shared types live in :mod:`tasks.types` and are re-exported here. Which reader and which generator
a task loads with is declared where the task is (:mod:`tasks`), so this module imports neither.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tasks import scoring
from tasks.types import SPLITS, DataSpec, Record, ScoreResult, TaskError, TaskInfo, TaskSplit
from tasks.validation import split_for_validation

__all__ = ["SPLITS", "DataSpec", "Loader", "Record", "ScoreResult", "Task", "TaskError", "TaskInfo", "TaskSplit"]

# (task, split, spec) -> the split's records
Loader = Callable[[TaskInfo, str, DataSpec], TaskSplit]


@dataclass(frozen=True)
class Task(TaskInfo):
    """A :class:`TaskInfo` that loads its splits and scores predictions with its official rule
    (:func:`tasks.scoring.score`). ``read`` loads the real CoIN files under ``spec.data_root``,
    ``generate`` the coin-mini split; neither takes part in equality."""

    read: Loader | None = field(default=None, compare=False, repr=False)
    generate: Loader | None = field(default=None, compare=False, repr=False)

    def load(self, split: str, spec: DataSpec | None = None) -> TaskSplit:
        spec = spec or DataSpec()
        if split not in SPLITS:
            raise TaskError(f"unknown split {split!r} for task {self.name!r}; valid splits: {', '.join(SPLITS)}")
        loader = self.read if spec.data_root else self.generate
        if loader is None:
            source = "a CoIN reader" if spec.data_root else "a coin-mini generator"
            raise TaskError(f"task {self.name!r} has no {source}")
        if spec.validation:
            train, held_out = split_for_validation(loader(self, "train", spec), spec.data_seed, spec.limit_test)
            return train if split == "train" else held_out
        return loader(self, split, spec)

    def score(self, predictions: Sequence[str | None], split: TaskSplit | Sequence[dict[str, Any]],
              mode: str = "official") -> ScoreResult:
        """Score predictions aligned with ``split`` (records order) with the task's official rule."""
        refs = split.references() if isinstance(split, TaskSplit) else list(split)
        return scoring.score(self.name, list(predictions), refs, mode=mode)
