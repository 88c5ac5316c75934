"""The official CoIN scripts, reproduced file to file: ``bench score --mode official``.

One module per script of ``zackschen/CoIN`` (commit 4122465, ``ETrain/Eval/LLaVA/CoIN/``). Each
reads the files that script reads, follows its control flow (what it loops over, what it divides by,
how it matches ids, which duplicate wins) and applies the per-answer rule of :mod:`tasks.scoring`
that the script applies, so a prediction file that covers only part of the annotations, repeats a
line or mixes string and integer ids gets the figure the script prints. Each module's docstring gives
the rule with the script's line numbers.

The harness's own evaluation does not come through here: it has one prediction per test record, in
record order, and scores them with :func:`tasks.scoring.score`, which gives the same figure then.
"""
from __future__ import annotations

from typing import Mapping

from tasks import declared
from tasks.types import Script, ScoreResult, TaskError
from tasks.official import gqa, grounding, imagenet, ocrvqa, scienceqa, textvqa, vizwiz, vqav2  # noqa: F401
from tasks.official.common import Inputs

# Each task declares its script with the task (its ``script`` in :mod:`tasks`: ``official.<module>.score``
# of one of the modules imported above); this is the view by name.
SCRIPTS: Mapping[str, Script] = declared.by_task(lambda t: t.script)


def score_files(inputs: Inputs) -> ScoreResult:
    """The figure the task's official script prints for these files (``accuracy``, full precision)."""
    if inputs.task not in SCRIPTS:
        raise TaskError(f"unknown task {inputs.task!r} for scoring; valid tasks: {', '.join(SCRIPTS)}")
    return SCRIPTS[inputs.task](inputs)


__all__ = ["Inputs", "SCRIPTS", "score_files"]
