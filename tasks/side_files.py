"""The official side files ``bench score --side-file`` takes (the flag may repeat), by task and role.

=========  ==========  =================================  ==========================
task       role        file                               read by
=========  ==========  =================================  ==========================
textvqa    answers     ``TextVQA_0.5.1_val.json``         eval_textvqa.py
gqa        questions   ``testdev_balanced_questions.json`` eval_gqa.py
scienceqa  problems    ``problems.json``                  eval_science_qa.py
scienceqa  splits      ``pid_splits.json``                eval_science_qa.py
=========  ==========  =================================  ==========================

ScienceQA takes the two files in either order, or their folder (``cl_dataset/ScienceQA``): a file
named ``pid_splits.json`` is the split file, any other file is the problems file, and the one not
given is looked for beside the other (``eval_science_qa.py`` reads both from one ``--base-dir``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tasks.types import TaskError

ROLES: dict[str, tuple[str, ...]] = {
    "textvqa": ("answers",),
    "gqa": ("questions",),
    "scienceqa": ("problems", "splits"),
}
FILE_NAMES: dict[str, str] = {
    "answers": "TextVQA/TextVQA_0.5.1_val.json",
    "questions": "GQA/testdev_balanced_questions.json",
    "problems": "ScienceQA/problems.json",
    "splits": "ScienceQA/pid_splits.json",
}


def _roles_of(task: str, path: Path) -> dict[str, Path]:
    if task != "scienceqa":
        return {ROLES[task][0]: path}
    if path.is_dir():
        return {"problems": path / "problems.json", "splits": path / "pid_splits.json"}
    return {"splits" if path.name == "pid_splits.json" else "problems": path}


def resolve(task: str, given: Sequence[str | Path] | str | Path | None) -> dict[str, Path]:
    """``{role: path}`` for the given side files (empty when none); each must exist."""
    if given is None:
        return {}
    if isinstance(given, (str, Path)):
        given = [given]
    if not given:
        return {}
    if task not in ROLES:
        raise TaskError(f"task {task!r} has no official side file; side files exist for: {', '.join(ROLES)}")
    roles: dict[str, Path] = {}
    for raw in given:
        for role, path in _roles_of(task, Path(raw)).items():
            if role in roles:
                raise TaskError(f"{task}: --side-file gives the {role} file twice ({roles[role]} and {path}); "
                                f"expected {' and '.join(FILE_NAMES[r].split('/')[-1] for r in ROLES[task])}")
            roles[role] = path
    if task == "scienceqa":  # the file not given lives beside the one given, as under --base-dir
        for role, other in (("problems", "splits"), ("splits", "problems")):
            if role not in roles:
                roles[role] = roles[other].parent / FILE_NAMES[role].split("/")[-1]
    for role, path in roles.items():
        if not path.is_file():
            raise TaskError(f"side file not found: {path} (expected cl_dataset/{FILE_NAMES[role]})")
    return roles
