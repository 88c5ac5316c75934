"""``convert_gqa_for_eval.py`` then ``eval_gqa.py`` (``--tier testdev_balanced``), reproduced.

Rule, with the scripts' lines:

- convert_gqa_for_eval.py L11-15: every prediction line becomes ``{"questionId": question_id,
  "prediction": text.rstrip('.').lower()}``; the id is kept as it is and nothing else is trimmed
  (``" yes"`` keeps its space, ``"yes. "`` keeps its period).
- eval_gqa.py L123 the questions are the side file ``testdev_balanced_questions.json`` (an object
  keyed by question id, so the keys are strings); the CoIN test.json is not read.
- L133-134 ``{p["questionId"]: p["prediction"] for p in predictions}``: one prediction per id, the
  *last* line wins, in the order ids first appear.
- L348-356 for every predicted id: ``questions[qid]`` (an integer id never finds a string key:
  KeyError), correct iff ``predicted == question["answer"]`` exactly; the word and step counts read
  ``question`` and ``semantic`` of every predicted question.
- L359-367 only ``isBalanced`` questions enter the accuracy, the binary/open split (``open`` where
  the structural type is ``query``) and the per-type tables; unbalanced predictions are ignored and
  balanced questions without a prediction do not count.
- L384-393 the answer distribution over the balanced questions with a non-null global group;
  ``chiSquare`` divides by their number, so the script stops when there is none.
- L423-425 ``avg(l) * 100``: the denominator is the number of balanced questions with a prediction.
  The accuracy is printed (L433-442) before the per-type tables are sorted (L456), so type names
  that cannot be sorted cost only the tables.

Without the side file (not the official input) the CoIN test.json stands in for it: every record
balanced, keyed by ``str(question_id)`` as JSON object keys are, gold = the CoIN ``answer``, no
breakdowns; the result says so in ``fallback``. Clean mode counts every balanced annotation record
(missing = wrong) with a normalised exact match.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from tasks.types import ScoreResult, TaskError
from tasks.official.common import (
    Inputs, get, hashable, line_at, load, lookup, nothing_to_score, read_lines, record_at, records, repeated,
    result,
)

SCRIPT = "eval_gqa.py"
CONVERT = "convert_gqa_for_eval.py"


def convert(inputs: Inputs) -> list[tuple[str, Any, str]]:
    """convert_gqa_for_eval.py L11-15: ``(where, questionId, prediction)`` per line."""
    out = []
    for i, res in enumerate(read_lines(inputs.predictions)):
        where = line_at(inputs.predictions, i)
        qid = get(res, "question_id", where, f"{CONVERT} line 13")
        text = get(res, "text", where, f"{CONVERT} line 14")
        if not isinstance(text, str):
            raise TaskError(f"{where}: field 'text': {text!r:.60} is not a string ({CONVERT} line 14 stops here)")
        out.append((where, qid, text.rstrip('.').lower()))
    return out


def _fallback_questions(path: Any) -> dict[str, Any]:
    table = {}
    for i, rec in records(load(path), path, "the fallback"):
        qid = get(rec, "question_id", record_at(path, i), "the fallback")
        table[str(qid)] = {"answer": get(rec, "answer", record_at(path, i), "the fallback"), "isBalanced": True}
    return table


def _steps(question: dict[str, Any]) -> int:
    """L199-201 ``getStepsNum``: the semantic steps that are not a final exist / name query."""
    return len([c for c in question["semantic"] if not (any([o in "{}: {}".format(c["operation"], c["argument"])
                                                            for o in ["exist", "query: name", "choose name"]]))])


def _avg(values: list[float]) -> float:
    """L158-161 ``avg``."""
    if len(values) == 0:
        return 0
    return float(sum(values)) / len(values)


def _chi_square(gold: dict[Any, dict[Any, int]], predicted: dict[Any, dict[Any, int]], path: Any) -> float:
    """L324-341 ``chiSquare``."""
    sum_score, sum_overall = 0, 0
    for group in gold:
        score, overall = 0, 0
        for ans in gold[group]:
            e = gold[group][ans]
            o = predicted[group].get(ans, 0)
            score += ((float(o - e) ** 2) / e)
            overall += gold[group][ans]
        sum_score += score * overall
        sum_overall += overall
    if sum_overall == 0:
        raise TaskError(f"{path}: no balanced predicted question has a global group, so the answer distribution "
                        f"divides by zero ({SCRIPT} line 339 stops here before printing the accuracy)")
    return float(sum_score) / sum_overall


def _table(groups: dict[Any, list[float]]) -> dict[str, list[float]]:
    """L427-429 and L456: ``[avg * 100, count]`` per key, keys sorted as the script prints them."""
    return {str(t): [_avg(groups[t]) * 100, len(groups[t])] for t in sorted(list(groups.keys()))}


def score(inputs: Inputs) -> ScoreResult:
    side = inputs.side.get("questions")
    if side is not None:
        source, questions, fallback = side, load(side), None
        if not isinstance(questions, dict):
            raise TaskError(f"{side}: expected an object keyed by question id (GQA questions format)")
    else:
        source = inputs.require_annotations(SCRIPT, "testdev_balanced_questions.json; without it --annotations "
                                            "(the CoIN test.json) stands in")
        questions, fallback = _fallback_questions(source), "no testdev_balanced_questions.json: every CoIN record " \
            "stands for a balanced question with its CoIN answer"
    converted = convert(inputs)
    predictions: dict[Any, tuple[str, str]] = {}
    for where, qid, text in converted:
        predictions[hashable(qid, where, "question_id", f"{SCRIPT} line 134")] = (where, text)

    scores: dict[str, Any] = {"accuracy": [], "binary": [], "open": []}
    per_type: dict[str, dict[Any, list[float]]] = {k: defaultdict(list) for k in ("structural", "semantic",
                                                                                   "steps", "length")}
    dist: dict[str, Any] = {"gold": defaultdict(lambda: defaultdict(int)),
                            "predicted": defaultdict(lambda: defaultdict(int))}
    for qid, (where, predicted) in predictions.items():
        question = lookup(questions, qid, where, source, f"{SCRIPT} line 349",
                          "as they are (the questions file's keys are strings)")
        try:
            gold = question["answer"]
            score = float(1 if predicted == gold else 0)
            if fallback is None:
                words, steps = len(question["question"].split()), _steps(question)
            if not question["isBalanced"]:
                continue
            scores["accuracy"].append(score)
            if fallback is None:
                per_type["length"][words].append(score)
                per_type["steps"][steps].append(score)
                per_type["structural"][question["types"]["structural"]].append(score)
                per_type["semantic"][question["types"]["semantic"]].append(score)
                scores["open" if question["types"]["structural"] == "query" else "binary"].append(score)
                global_group = question["groups"]["global"]
                if global_group is not None:
                    dist["gold"][global_group][gold] += 1
                    dist["predicted"][global_group][predicted] += 1
        except (KeyError, TypeError, AttributeError) as e:
            raise TaskError(f"{source}: question {qid!r}: cannot read {e!s:.60} ({SCRIPT} lines 350-387 read "
                            "answer, question, semantic, isBalanced, types and groups; the script stops here)") from None

    accuracy = _avg(scores["accuracy"]) * 100
    extras: dict[str, Any] = {"n_predictions": len(converted), "n_annotations": len(questions),
                              "repeated": repeated(q for _, q, _ in converted),
                              "n_unbalanced": len(predictions) - len(scores["accuracy"]),
                              "missing": sum(1 for k, q in questions.items() if k not in predictions
                                             and isinstance(q, dict) and q.get("isBalanced")),
                              "inputs": [str(source), str(inputs.predictions)]}
    if fallback is None:
        distribution = _chi_square(dist["gold"], dist["predicted"], source) / 100
        extras.update(binary=_avg(scores["binary"]) * 100, open=_avg(scores["open"]) * 100, distribution=distribution)
        try:
            extras.update({f"per_{k}_type" if k in ("structural", "semantic") else f"per_{k}": _table(v)
                           for k, v in per_type.items()})
        except TypeError:  # L456 sorts the type names after the accuracy is printed: the figure stands
            extras["breakdown"] = "not printed: the script cannot sort these type names (line 456)"
    else:
        if not scores["accuracy"]:
            raise nothing_to_score(inputs.predictions, "the fallback (no side file)")
        extras["fallback"] = fallback
    per_sample = scores["accuracy"]
    return result("gqa", len(per_sample), accuracy, per_sample, **extras)
