"""Task registry: the eight CoIN tasks and the suites built from them."""
from __future__ import annotations

from functools import partial

from tasks import coin, synthetic
from tasks.base import DataSpec, Record, ScoreResult, Task, TaskError, TaskSplit

SHORT = "Answer the question using a single word or phrase."

# Every task reads the real CoIN layout with the same reader and has its coin-mini generator.
_Task = partial(Task, read=coin.load_split, generate=synthetic.load_split)

_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _Task("scienceqa", "ScienceQA", "test.json", "Answer with the option's letter from the given choices directly."),
        _Task("textvqa", "TextVQA", "val.json", SHORT),
        _Task("imagenet", "ImageNet", "test.json", SHORT),
        _Task("gqa", "GQA", "test.json", SHORT),
        _Task("vizwiz", "VizWiz", "val.json",
              "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT),
        _Task("grounding", "Grounding", "test.json",
              "Please provide the bounding box coordinate of the region this sentence describes:"),
        _Task("vqav2", "VQAv2", "val.json", SHORT),
        _Task("ocrvqa", "OCRVQA", "test.json", SHORT),
    )
}

SUITES: dict[str, tuple[str, ...]] = {
    "coin": ("scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"),
}


def names() -> list[str]:
    return list(_TASKS)


def get(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; valid tasks: {', '.join(_TASKS)}; suites: {', '.join(SUITES)}") from None


def suite(name: str) -> list[Task]:
    try:
        return [_TASKS[n] for n in SUITES[name]]
    except KeyError:
        raise TaskError(f"unknown suite {name!r}; valid suites: {', '.join(SUITES)}; tasks: {', '.join(_TASKS)}") from None


def resolve(spec: str) -> list[Task]:
    """``--tasks`` value: a suite name or a comma-separated list of task names (order as given)."""
    if spec in SUITES:
        return suite(spec)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise TaskError(f"empty task list; valid tasks: {', '.join(_TASKS)}; suites: {', '.join(SUITES)}")
    return [get(p) for p in parts]


__all__ = ["DataSpec", "Record", "ScoreResult", "Task", "TaskError", "TaskSplit", "get", "names", "resolve", "suite", "SUITES"]
