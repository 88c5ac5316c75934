"""The declared tasks, by name, for the modules the registry is built from.

Each task is declared once, in :mod:`tasks` (the registry): its scorer, its official script, its side
files with their enricher and its coin-mini generator are fields of its :class:`tasks.types.TaskInfo`.
The functions that take a task *name* (:func:`tasks.scoring.score`, :func:`tasks.official.score_files`,
:func:`tasks.side_files.resolve`) look the declaration up here, through read-only views such as
``scoring.SCORERS``, so they need not import the registry, which imports them. The registry fills
this table when the package ``tasks`` is imported, which Python does before any of its submodules.
This module imports nothing from ``tasks`` but :mod:`tasks.types`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from tasks.types import TaskInfo

V = TypeVar("V")

_TASKS: dict[str, TaskInfo] = {}


def register(declared: Iterable[TaskInfo]) -> None:
    """Make ``declared`` the declared tasks, in that order (replacing any earlier table)."""
    table = {}
    for task in declared:
        if task.name in table:
            raise ValueError(f"task {task.name!r} is declared twice")
        table[task.name] = task
    _TASKS.clear()
    _TASKS.update(table)


def tasks() -> list[TaskInfo]:
    """The declared tasks, in declaration order."""
    return list(_TASKS.values())


class View(Mapping[str, V]):
    """A read-only mapping rebuilt from the declared tasks on every access, so it can never disagree
    with them: ``build()`` returns the current ``{key: value}``."""

    def __init__(self, build: Callable[[], dict[str, V]]):
        self._build = build

    def __getitem__(self, key: str) -> V:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __contains__(self, key: object) -> bool:
        return key in self._build()

    def __repr__(self) -> str:
        return f"View({self._build()!r})"


def by_task(value: Callable[[TaskInfo], Any]) -> View:
    """``{task name: value(task)}`` over the declared tasks for which ``value`` is neither None nor
    empty, in declaration order."""
    def build() -> dict[str, Any]:
        return {t.name: v for t in _TASKS.values() if (v := value(t)) is not None and v != ()}
    return View(build)
