"""``eval_textvqa.py`` + ``m4c_evaluator.py`` (``TextVQAAccuracyEvaluator``), reproduced.

Rule, with the script's lines:

- eval_textvqa.py L36-37 the annotations are the side file ``TextVQA_0.5.1_val.json``:
  ``json.load(...)['data']`` keyed by ``str(question_id)``; a later entry with the same key replaces
  the earlier one. The CoIN val.json is not read.
- L38-46 every prediction line, in file order, is looked up with ``str(result['question_id'])``
  (``31`` and ``"31"`` match; a miss is a KeyError) and paired with the entry's ``answers``. A
  repeated line counts again; entries without a prediction do not count.
- L49 ``100. * evaluator.eval_pred_list(pred_list)``; the denominator is the number of lines.
- m4c_evaluator.py L248-257: per line, the EvalAI-processed prediction looked up in the soft scores
  of the processed answers (0 when absent); the mean over lines.
- m4c_evaluator.py L225-246: the ten answers, each processed (L229), must be exactly ten (L230
  assert); the score of an answer is the mean over the ten leave-one-out subsets of
  min(1, matches / 3).
- m4c_evaluator.py L181-218: the EvalAI processor exactly as published, applied to the prediction and
  to every reference (see :func:`tasks.scoring.evalai_normalize` for its quirks).

Without the side file (not the official input) the CoIN val.json stands in for it: each record's
``answer`` repeated ten times, keyed by ``str(question_id)``; the result says so in ``fallback``.
Clean mode counts every CoIN record (missing = wrong) with a de-bugged normalisation.
"""
from __future__ import annotations

from typing import Any

from tasks.types import ScoreResult, TaskError
from tasks.official.common import (
    Inputs, get, keyed, load, match_lines, nothing_to_score, record_at, records, repeated, result,
)
from tasks.scoring import evalai_normalize, vqa_soft_scores

SCRIPT = "eval_textvqa.py"
EVALUATOR = "m4c_evaluator.py"


def _side_table(path: Any) -> dict[Any, tuple[int, Any]]:
    """L36-37: ``json.load(open(annotation_file))['data']`` keyed by ``str(question_id)``."""
    data = load(path)
    if not isinstance(data, dict) or "data" not in data:
        raise TaskError(f"{path}: expected an object with a 'data' list (TextVQA 0.5.1 format; {SCRIPT} line 36 "
                        "stops here)")
    return keyed(data["data"], path, str, f"{SCRIPT} line 37")


def _fallback_table(path: Any) -> dict[Any, tuple[int, Any]]:
    """The CoIN val.json standing in for the side file: ten copies of each record's answer."""
    table = {}
    for i, rec in records(load(path), path, "the fallback"):
        qid = get(rec, "question_id", record_at(path, i), "the fallback")
        table[str(qid)] = (i, {"answers": [get(rec, "answer", record_at(path, i), "the fallback")] * 10})
    return table


def _processed(where: str, value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{where}: field '{key}': {value!r:.60} is not a string ({EVALUATOR} line 182 lower-cases it "
                        "and stops here)")
    return evalai_normalize(value)


def _soft_score(where: str, row: Any, entry: Any) -> float:
    """m4c_evaluator.py L251-253 for one line."""
    pred = _processed(where, get(row, "text", where, f"{SCRIPT} line 44"), "text")
    raw = get(entry, "answers", f"{where}: its annotation", f"{SCRIPT} line 45")
    if not isinstance(raw, list):
        raise TaskError(f"{where}: its annotation: field 'answers': expected a list, got {raw!r:.60} "
                        f"({EVALUATOR} line 229 stops here)")
    answers = [_processed(f"{where}: its annotation", a, "answers") for a in raw]
    if len(answers) != 10:
        raise TaskError(f"{where}: its annotation: field 'answers': {len(answers)} answers, not 10 "
                        f"({EVALUATOR} line 230 asserts ten)")
    return vqa_soft_scores(answers).get(pred, 0.0)


def score(inputs: Inputs) -> ScoreResult:
    side = inputs.side.get("answers")
    if side is not None:
        source, table, fallback = side, _side_table(side), None
    else:
        source = inputs.require_annotations(SCRIPT, "TextVQA_0.5.1_val.json; without it --annotations "
                                            "(the CoIN val.json) stands in")
        table = _fallback_table(source)
        fallback = "no TextVQA_0.5.1_val.json: each CoIN answer stands for the ten human answers"
    lines = match_lines(inputs, table, source, str, f"{SCRIPT} line 42", "as str() of both ids")
    # L40-46 builds the whole list before scoring it, so a missing id stops the script before any score.
    per_sample = [_soft_score(where, row, entry) for where, row, entry, _ in lines]
    if not lines:
        raise nothing_to_score(inputs.predictions, f"{EVALUATOR} line 256")
    accuracy = sum(per_sample) / len(per_sample)
    extras: dict[str, Any] = {"n_predictions": len(lines), "n_annotations": len(table),
                              "missing": len(set(table) - {k for *_, k in lines}),
                              "repeated": repeated(k for *_, k in lines),
                              "inputs": [str(source), str(inputs.predictions)]}
    if fallback:
        extras["fallback"] = fallback
        extras["single_answer_fallback"] = len(lines)
    return result("textvqa", len(lines), 100. * accuracy, per_sample, **extras)
