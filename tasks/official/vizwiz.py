"""``eval_vizwiz.py``, reproduced.

Rule, with the script's lines:

- L17-18 ``annotations = {annotation['question_id']: annotation for annotation in annotations}``:
  the CoIN val.json keyed by the id *as stored* (no ``str()``); a later record with the same id
  replaces the earlier one.
- L19, L22 ``total = len(results)``: the denominator is the number of prediction lines; annotation
  records without a prediction do not count. A repeated line counts again.
- L25 ``annotations[result['question_id']]``: the id as it is, so a string ``"5"`` does not find the
  integer ``5`` (KeyError: the script stops).
- L26-28 correct iff ``pred.upper() == ground_truth.upper()`` against the single CoIN ``answer``:
  no trimming, no punctuation or article rule, no VQA soft score (``"ß".upper() == "SS"`` included).
- L31 ``100. * right / total``.

Clean mode counts every annotation record (missing = wrong), matches ``str(question_id)`` and asks
for a normalised exact match (VQA soft accuracy where ten answers are given).
"""
from __future__ import annotations

from tasks.types import ScoreResult
from tasks.official.common import Inputs, score_matched
from tasks.official.upper import upper_equal

SCRIPT = "eval_vizwiz.py"


def score(inputs: Inputs) -> ScoreResult:
    return score_matched(inputs, "vizwiz", SCRIPT,
                         "the CoIN val.json (question_id and answer)", lambda q: q,
                         f"{SCRIPT} line 18", f"{SCRIPT} line 25", "as they are, without str()", lambda where, row, rec: upper_equal(where, row, rec, f"{SCRIPT} line 26-28"),
                         f"{SCRIPT} line 31")
