"""``eval_ocrvqa.py``, reproduced.

Rule, with the script's lines:

- L17-18 ``annotations = {data['question_id']: data for data in annotations}``: the CoIN test.json
  keyed by the id *as stored*; a later record with the same id replaces the earlier one.
- L19, L22 ``total = len(results)``: the denominator is the number of prediction lines; annotation
  records without a prediction do not count. A repeated line counts again.
- L25 ``annotations[result['question_id']]``: the id as it is (no ``str()``; a miss is a KeyError).
- L26 the record's ``answer`` is read for every line, before the next test.
- L27-28 a prediction containing ``'Unanswerable'`` (case-sensitive substring) is skipped: wrong,
  still in the denominator, even when the answer itself contains the word.
- L29 otherwise correct iff ``text.lower() == answer.lower()``; no trimming.
- L32 ``100. * right / total`` (it prints ``Samples: 0``, the length of an unused list; the accuracy
  is unaffected).

Clean mode counts every annotation record (missing = wrong), matches ``str(question_id)``, drops the
"Unanswerable" skip and asks for a normalised exact match.
"""
from __future__ import annotations

from typing import Any

from tasks.types import ScoreResult, TaskError
from tasks.official.common import Inputs, get, score_matched

SCRIPT = "eval_ocrvqa.py"


def _correct(where: str, row: Any, record: Any) -> bool:
    answer = get(record, "answer", f"{where}: its annotation", f"{SCRIPT} line 26")
    text = get(row, "text", where, f"{SCRIPT} line 27")
    try:
        if 'Unanswerable' in text:
            return False
        return text.lower() == answer.lower()
    except (TypeError, AttributeError):
        raise TaskError(f"{where}: field 'text' {text!r:.60} or its answer {answer!r:.60}: not a string "
                        f"({SCRIPT} lines 27-29 stop here)") from None


def score(inputs: Inputs) -> ScoreResult:
    return score_matched(inputs, "ocrvqa", SCRIPT,
                         "the CoIN test.json (question_id and answer)", lambda q: q,
                         f"{SCRIPT} line 18", f"{SCRIPT} line 25", "as they are, without str()", _correct,
                         f"{SCRIPT} line 32")
