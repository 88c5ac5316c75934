"""``eval_grounding.py``, reproduced.

Rule, with the script's lines:

- L54-55 ``{grounding_test['question_id']: grounding_test ...}``: the CoIN test.json keyed by the id
  *as stored*; a later record with the same id replaces the earlier one.
- L56, L59 ``total = len(results)``: the denominator is the number of prediction lines; annotation
  records without a prediction do not count. A repeated line counts again.
- L62 ``annotations[result['question_id']]``: the id as it is (no ``str()``; a miss is a KeyError).
- L63-66 the ground truth: ``answer_bbox`` with the brackets removed, split on ``,``, ``float()``
  each part, and ``size``, read for every line (a malformed box stops the script).
- L68-75 the prediction: ``text.replace('[', '').replace(']', '')``, then ``[1:-1]`` drops the first
  and last *characters*, split on ``,``, ``float()`` each part; anything but four floats, or any
  exception (a text that is not a string), skips the line: wrong, still in the denominator. Nothing
  is trimmed first: ``"[0.12, 0.34, 0.56, 0.78]"`` reads as (0.12, 0.34, 0.56, 0.7), a leading
  ``1.0`` becomes ``.0``, and a leading space is the character dropped instead of the first digit.
- L79-84 both boxes are multiplied by ``max(size)``; correct iff IoU > 0.5 (strict; the scaling
  decides boxes at exactly 0.5 in floating point).
- L97 ``100. * right / total``.

Clean mode counts every annotation record (missing = wrong), matches ``str(question_id)``, reads the
first four numbers of the prediction and takes the IoU of the normalised boxes.
"""
from __future__ import annotations

from typing import Any

from tasks.types import ScoreResult, TaskError
from tasks.official.common import Inputs, get, score_matched
from tasks.scoring import box_iou, grounding_parse_official

SCRIPT = "eval_grounding.py"


def _ground_truth(where: str, record: Any) -> tuple[list[float], Any]:
    """L63-66: ``[float(x) for x in answer_bbox.replace('[', '').replace(']', '').split(',')]``, ``size``."""
    box = get(record, "answer_bbox", f"{where}: its annotation", f"{SCRIPT} line 63")
    try:
        values = [float(x) for x in box.replace('[', '').replace(']', '').split(',')]
    except (AttributeError, ValueError):
        raise TaskError(f"{where}: its annotation: field 'answer_bbox': {box!r:.60} is not a list of numbers "
                        f"({SCRIPT} line 65 stops here)") from None
    return values, get(record, "size", f"{where}: its annotation", f"{SCRIPT} line 66")


def _correct(where: str, row: Any, record: Any) -> bool:
    gt, size = _ground_truth(where, record)
    text = get(row, "text", where, f"{SCRIPT} line 68")
    # L69-75: every exception of the parse is caught (bare except), so a non-string text is skipped.
    pred = grounding_parse_official(text) if isinstance(text, str) else None
    if pred is None:
        return False
    try:
        max_wh = max(size)
        pred_scaled = [x * max_wh for x in pred]
        gt_scaled = [x * max_wh for x in gt]
        return box_iou(pred_scaled, gt_scaled) > 0.5
    except (TypeError, ValueError):
        raise TaskError(f"{where}: its annotation: 'size' {size!r:.40} or 'answer_bbox' {gt!r:.60} cannot be used "
                        f"(max(size) and a box of four numbers; {SCRIPT} lines 79-83 stop here)") from None


def score(inputs: Inputs) -> ScoreResult:
    return score_matched(inputs, "grounding", SCRIPT,
                         "the CoIN test.json (question_id, answer_bbox and size)", lambda q: q,
                         f"{SCRIPT} line 55", f"{SCRIPT} line 62", "as they are, without str()", _correct,
                         f"{SCRIPT} line 97")
