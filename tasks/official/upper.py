"""The comparison ``eval_vizwiz.py`` and ``eval_vqav2.py`` share (their lines 26-28)::

    pred = result['text']
    ground_truth = annotation['answer']
    if pred.upper() == ground_truth.upper(): right += 1
"""
from __future__ import annotations

from typing import Any

from tasks.types import TaskError
from tasks.official.common import get


def upper_equal(where: str, row: Any, record: Any, used_at: str) -> bool:
    """``pred.upper() == ground_truth.upper()``; a value without ``.upper()`` stops the script."""
    pred = get(row, "text", where, used_at)
    answer = get(record, "answer", f"{where}: its annotation", used_at)
    if not isinstance(pred, str) or not isinstance(answer, str):
        bad = "text" if not isinstance(pred, str) else "answer"
        raise TaskError(f"{where}: field '{bad}': not a string, so .upper() fails ({used_at} stops here)")
    return pred.upper() == answer.upper()
