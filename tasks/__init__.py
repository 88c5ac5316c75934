"""Task registry: the eight CoIN tasks and the suites built from them.

Each task is declared once, here, with everything that is particular to it: its CoIN folder, test
file and instruction, its per-record scorer (:mod:`tasks.scoring`), its official script
(:mod:`tasks.official`), its official side files and the enricher that reads them (:mod:`tasks.coin`)
and its coin-mini generator (:mod:`tasks.synthetic`). Adding a task means adding its declaration
here; the lookups by task name (``scoring.SCORERS``, ``official.SCRIPTS``, ``side_files.ROLES`` and
``FILE_NAMES``) are views of these declarations (:mod:`tasks.declared`).
"""
from __future__ import annotations

from functools import partial

from tasks import coin, declared, official, scoring, synthetic
from tasks.base import DataSpec, Record, ScoreResult, Task, TaskError, TaskSplit
from tasks.types import SideFile

SHORT = "Answer the question using a single word or phrase."

# Every task reads the real CoIN layout with the same reader and has its coin-mini generator.
_Task = partial(Task, read=coin.load_split, generate=synthetic.load_split)

_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _Task("scienceqa", "ScienceQA", "test.json", "Answer with the option's letter from the given choices directly.",
              scorer=scoring.score_scienceqa, script=official.scienceqa.score,
              side_files=(SideFile("problems", "ScienceQA/problems.json"),
                          SideFile("splits", "ScienceQA/pid_splits.json")),
              enricher=coin.scienceqa_enricher, generator=synthetic.GENERATORS["scienceqa"]),
        _Task("textvqa", "TextVQA", "val.json", SHORT,
              scorer=scoring.score_textvqa, script=official.textvqa.score,
              side_files=(SideFile("answers", "TextVQA/TextVQA_0.5.1_val.json"),),
              enricher=coin.textvqa_enricher, generator=synthetic.GENERATORS["textvqa"]),
        _Task("imagenet", "ImageNet", "test.json", SHORT,
              scorer=scoring.score_imagenet, script=official.imagenet.score,
              generator=synthetic.GENERATORS["imagenet"]),
        _Task("gqa", "GQA", "test.json", SHORT,
              scorer=scoring.score_gqa, script=official.gqa.score,
              side_files=(SideFile("questions", "GQA/testdev_balanced_questions.json"),),
              enricher=coin.gqa_enricher, generator=synthetic.GENERATORS["gqa"]),
        _Task("vizwiz", "VizWiz", "val.json",
              "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT,
              scorer=scoring.score_vizwiz, script=official.vizwiz.score,
              generator=synthetic.GENERATORS["vizwiz"]),
        _Task("grounding", "Grounding", "test.json",
              "Please provide the bounding box coordinate of the region this sentence describes:",
              scorer=scoring.score_grounding, script=official.grounding.score,
              generator=synthetic.GENERATORS["grounding"]),
        _Task("vqav2", "VQAv2", "val.json", SHORT,
              scorer=scoring.score_vqav2, script=official.vqav2.score,
              generator=synthetic.GENERATORS["vqav2"]),
        _Task("ocrvqa", "OCRVQA", "test.json", SHORT,
              scorer=scoring.score_ocrvqa, script=official.ocrvqa.score,
              generator=synthetic.GENERATORS["ocrvqa"]),
    )
}
declared.register(_TASKS.values())

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
