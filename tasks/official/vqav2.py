"""``eval_vqav2.py``, reproduced.

Rule, with the script's lines:

- L18-19 ``{str(annotation['question_id']): annotation ...}``: the CoIN val.json keyed by ``str()``
  of the id; a later record with the same key replaces the earlier one.
- L20, L22 ``total = len(results)``: the denominator is the number of prediction lines; annotation
  records without a prediction do not count. A repeated line counts again.
- L25 ``annotations[str(result['question_id'])]``: ``str()`` on both sides, so ``5`` and ``"5"``
  match, while ``5.0`` becomes ``"5.0"`` and does not (KeyError: the script stops).
- L26-28 correct iff ``pred.upper() == ground_truth.upper()`` against the single CoIN ``answer``,
  not the ten-annotator VQA accuracy; no trimming.
- L31 ``100. * right / total``.

Clean mode counts every annotation record (missing = wrong) and asks for a normalised exact match
(VQA soft accuracy where ten answers are given).
"""
from __future__ import annotations

from tasks.types import ScoreResult
from tasks.official.common import Inputs, score_matched
from tasks.official.upper import upper_equal

SCRIPT = "eval_vqav2.py"


def score(inputs: Inputs) -> ScoreResult:
    return score_matched(inputs, "vqav2", SCRIPT,
                         "the CoIN val.json (question_id and answer)", str,
                         f"{SCRIPT} line 19", f"{SCRIPT} line 25", "as str() of both ids", lambda where, row, rec: upper_equal(where, row, rec, f"{SCRIPT} line 26-28"),
                         f"{SCRIPT} line 31")
