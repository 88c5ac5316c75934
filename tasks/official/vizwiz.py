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
from tasks.official.common import Inputs, keyed, load, match_lines, nothing_to_score, repeated, result
from tasks.official.upper import upper_equal

SCRIPT = "eval_vizwiz.py"


def score(inputs: Inputs) -> ScoreResult:
    ann_path = inputs.require_annotations(SCRIPT, "the CoIN val.json (question_id and answer)")
    table = keyed(load(ann_path), ann_path, lambda q: q, f"{SCRIPT} line 18")
    lines = match_lines(inputs, table, ann_path, lambda q: q, f"{SCRIPT} line 25", "as they are, without str()")
    per_sample = [float(upper_equal(where, row, rec, f"{SCRIPT} line 26-28")) for where, row, rec, _ in lines]
    if not lines:
        raise nothing_to_score(inputs.predictions, f"{SCRIPT} line 31")
    right = int(sum(per_sample))
    return result("vizwiz", len(lines), 100. * right / len(lines), per_sample, n_predictions=len(lines),
                  n_annotations=len(table), missing=len(set(table) - {k for *_, k in lines}),
                  repeated=repeated(k for *_, k in lines), inputs=[str(ann_path), str(inputs.predictions)])
