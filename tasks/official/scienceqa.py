"""``eval_science_qa.py`` (``--split test``), reproduced.

Rule, with the script's lines:

- L43-44 the inputs are the side files: ``pid_splits.json['test']`` and ``problems.json``; the CoIN
  test.json is not read.
- L45-46 ``{pred['question_id']: pred for pred in predictions}``: one prediction per id, the *last*
  line wins; the id is kept as it is.
- L47 ``{idx: problems[idx] for idx in split_indices}``: every test problem once (a repeated id in
  the split counts once); the denominator is their number.
- L57-63 a problem without a prediction is the text ``'FAILED'``: wrong, still in the denominator.
  The split's ids are strings, so a prediction whose id is the integer ``4`` never finds problem
  ``"4"``; predictions for other problems are ignored.
- L65-75 the letter: the text itself if it is one of A-E; else ``X`` for ``"X. ..."``; else the
  first single-character word (``\\b(\\w)\\b``) upper-cased (``"a cat"`` reads as A, ``"3 cats"`` as
  3); else ``FAILED``.
- L28-35, L78 a letter past the problem's number of choices is -1; L83 indexes the options with the
  problem's ``answer``; L84-86 read the matched prediction's ``prompt``.
- L92 correct iff the letter's index equals ``answer``; L106 ``correct / total * 100``.

Without the side files (not the official input) the CoIN test.json stands in for both: its records,
in order, are the test problems, ids as ``str(question_id)`` (the split file's ids are strings),
each with five choices and its letter as the answer; the result says so in ``fallback``. Clean mode
matches ``str(question_id)``, refuses repeated ids and reads the letter with a stricter parser.
"""
from __future__ import annotations

from typing import Any

from tasks.types import ScoreResult, TaskError
from tasks.official.common import (
    Inputs, get, hashable, line_at, load, read_lines, record_at, records, repeated, result,
)
from tasks.scoring import SCIENCEQA_OPTIONS, scienceqa_parse_official

SCRIPT = "eval_science_qa.py"
OPTIONS = list(SCIENCEQA_OPTIONS)  # L15 --options default


def _side_problems(inputs: Inputs) -> tuple[dict[Any, Any], list[str]]:
    """L43, L44, L47: the test problems in split order, a repeated id once."""
    splits_path, problems_path = inputs.side["splits"], inputs.side["problems"]
    splits = load(splits_path)
    if not isinstance(splits, dict) or not isinstance(splits.get("test"), list):
        raise TaskError(f"{splits_path}: expected an object with a 'test' list of problem ids ({SCRIPT} line 43)")
    problems = load(problems_path)
    if not isinstance(problems, dict):
        raise TaskError(f"{problems_path}: expected an object keyed by problem id ({SCRIPT} line 44)")
    split: dict[Any, Any] = {}
    for i, idx in enumerate(splits["test"]):
        hashable(idx, f"{splits_path}: 'test' entry {i}", "test", f"{SCRIPT} line 47")
        if idx not in problems:
            raise TaskError(f"{splits_path}: 'test' entry {i}: problem id {idx!r} is not in {problems_path} "
                            f"({SCRIPT} line 47 stops here)")
        split[idx] = problems[idx]
    return split, [str(splits_path), str(problems_path)]


def _fallback_problems(path: Any) -> dict[Any, Any]:
    split: dict[Any, Any] = {}
    for i, rec in records(load(path), path, "the fallback"):
        qid = get(rec, "question_id", record_at(path, i), "the fallback")
        letter = get(rec, "answer", record_at(path, i), "the fallback")
        if letter not in OPTIONS:
            raise TaskError(f"{record_at(path, i)}: field 'answer': expected an option letter A-E, got {letter!r:.40}")
        split[str(qid)] = {"choices": [None] * len(OPTIONS), "answer": OPTIONS.index(letter)}
    return split


def _pred_idx(letter: str, choices: Any, where: str) -> int:
    """L28-35 ``get_pred_idx``: the letter's index when it is among the first len(choices) options."""
    try:
        valid = OPTIONS[:len(choices)]
    except TypeError:
        raise TaskError(f"{where}: field 'choices': {choices!r:.60} has no length ({SCRIPT} line 32 stops here)") from None
    return OPTIONS.index(letter) if letter in valid else -1


def _correct(prob_id: Any, prob: Any, row: Any, where: str, source: str) -> bool:
    """L57-95 for one problem; ``row`` is the matched prediction or None."""
    pred_text = 'FAILED' if row is None else get(row, "text", where, f"{SCRIPT} line 63")
    if not isinstance(pred_text, str):
        raise TaskError(f"{where}: field 'text': {pred_text!r:.60} is not a string ({SCRIPT} lines 65-71 stop here)")
    answer = scienceqa_parse_official(pred_text)
    problem_at = f"{source}: problem {prob_id!r}"
    pred_idx = _pred_idx(answer, get(prob, "choices", problem_at, f"{SCRIPT} line 78"), problem_at)
    gold = get(prob, "answer", problem_at, f"{SCRIPT} line 83")
    try:
        OPTIONS[gold]  # L83: 'ground_truth': args.options[prob['answer']]
    except (IndexError, TypeError):
        raise TaskError(f"{problem_at}: field 'answer': {gold!r:.40} is not an option index ({SCRIPT} line 83 stops "
                        "here)") from None
    if row is not None:
        prompt = get(row, "prompt", where, f"{SCRIPT} line 84")
        try:
            '<image>' in prompt  # L86: 'is_multimodal'
        except TypeError:
            raise TaskError(f"{where}: field 'prompt': {prompt!r:.60} cannot hold '<image>' ({SCRIPT} line 86 stops "
                            "here)") from None
    return pred_idx == gold


def score(inputs: Inputs) -> ScoreResult:
    if "problems" in inputs.side:
        split_problems, read = _side_problems(inputs)
        source, fallback = str(inputs.side["problems"]), None
    else:
        path = inputs.require_annotations(SCRIPT, "problems.json and pid_splits.json; without them --annotations "
                                          "(the CoIN test.json) stands in")
        split_problems, read, source = _fallback_problems(path), [str(path)], str(path)
        fallback = "no problems.json / pid_splits.json: the CoIN test records stand for the test problems"
    rows = read_lines(inputs.predictions)
    predictions: dict[Any, tuple[str, Any]] = {}
    for i, pred in enumerate(rows):
        where = line_at(inputs.predictions, i)
        qid = hashable(get(pred, "question_id", where, f"{SCRIPT} line 46"), where, "question_id",
                       f"{SCRIPT} line 46")
        predictions[qid] = (where, pred)
    per_sample: list[float] = []
    missing = 0
    for prob_id, prob in split_problems.items():
        where, row = predictions.get(prob_id, (f"problem {prob_id!r} (no prediction)", None))
        missing += row is None
        per_sample.append(float(_correct(prob_id, prob, row, where, source)))
    total = len(per_sample)
    if total == 0:
        raise TaskError(f"{source}: no test problems: the denominator is 0 ({SCRIPT} line 106 divides by zero)")
    correct = int(sum(per_sample))
    extras: dict[str, Any] = {"correct": correct, "n_predictions": len(rows), "n_annotations": total,
                              "missing": missing, "repeated": repeated(q for q in (r.get("question_id") for r in rows)),
                              "inputs": read + [str(inputs.predictions)]}
    if fallback:
        extras["fallback"] = fallback
    return result("scienceqa", total, correct / total * 100, per_sample, **extras)
