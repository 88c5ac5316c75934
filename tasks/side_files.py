"""The official side files ``bench score --side-file`` takes (the flag may repeat), by task and role.

Each task declares its side files with the task (``side_files`` in :mod:`tasks`: a role and a path
under ``cl_dataset/`` each); ``ROLES`` and ``FILE_NAMES`` are views of those declarations:

=========  ==========  =================================  ==========================
task       role        file                               read by
=========  ==========  =================================  ==========================
textvqa    answers     ``TextVQA_0.5.1_val.json``         eval_textvqa.py
gqa        questions   ``testdev_balanced_questions.json`` eval_gqa.py
scienceqa  problems    ``problems.json``                  eval_science_qa.py
scienceqa  splits      ``pid_splits.json``                eval_science_qa.py
=========  ==========  =================================  ==========================

A task with several side files (ScienceQA) takes them in either order, or their folder
(``cl_dataset/ScienceQA``): a file with the name of one of its side files (``pid_splits.json``) has
that role, any other file is the first one declared (the problems file), and the ones not given are
looked for beside the one given (``eval_science_qa.py`` reads both from one ``--base-dir``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from tasks import declared
from tasks.types import SideFile, TaskError

# task -> its side files, as declared
_DECLARED: Mapping[str, tuple[SideFile, ...]] = declared.by_task(lambda t: t.side_files)
# task -> the roles of its side files, in declaration order
ROLES: Mapping[str, tuple[str, ...]] = declared.by_task(lambda t: tuple(f.role for f in t.side_files))
# role -> the side file's path under cl_dataset/ (roles are unique across tasks)
FILE_NAMES: Mapping[str, str] = declared.View(
    lambda: {f.role: f.path for t in declared.tasks() for f in t.side_files})


def _roles_of(files: tuple[SideFile, ...], path: Path) -> dict[str, Path]:
    if len(files) == 1:
        return {files[0].role: path}
    if path.is_dir():
        return {f.role: path / f.file_name for f in files}
    named = [f.role for f in files if f.file_name == path.name]
    return {named[0] if named else files[0].role: path}


def resolve(task: str, given: Sequence[str | Path] | str | Path | None) -> dict[str, Path]:
    """``{role: path}`` for the given side files (empty when none); each must exist."""
    if given is None:
        return {}
    if isinstance(given, (str, Path)):
        given = [given]
    if not given:
        return {}
    if task not in _DECLARED:
        raise TaskError(f"task {task!r} has no official side file; side files exist for: {', '.join(ROLES)}")
    files = _DECLARED[task]
    roles: dict[str, Path] = {}
    for raw in given:
        for role, path in _roles_of(files, Path(raw)).items():
            if role in roles:
                raise TaskError(f"{task}: --side-file gives the {role} file twice ({roles[role]} and {path}); "
                                f"expected {' and '.join(f.file_name for f in files)}")
            roles[role] = path
    beside = next(iter(roles.values())).parent
    for f in files:  # the files not given live beside the one given, as under --base-dir
        if f.role not in roles:
            roles[f.role] = beside / f.file_name
    for role, path in roles.items():
        if not path.is_file():
            raise TaskError(f"side file not found: {path} (expected cl_dataset/{FILE_NAMES[role]})")
    return roles
