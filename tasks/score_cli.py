"""``python -m bench score``: score a CoIN prediction file as the official scripts would
(spec coin.md Part A "Scoring").

    python -m bench score --task textvqa --predictions merge.jsonl --annotations val.json \\
        [--side-file cl_dataset/TextVQA/TextVQA_0.5.1_val.json] [--mode official|clean]

Predictions are CoIN's JSONL (one object per line with ``question_id`` and ``text``; other keys such as
``prompt`` are ignored). They are matched to the annotations on ``str(question_id)``, except ImageNet,
which ``eval_ImagetNet.py`` aligns by line position. A reference without a prediction counts wrong
(for ScienceQA with ``problems.json`` the references are all test problems, as ``eval_science_qa.py``
iterates them); a prediction whose id is not in the annotations is an error. The result is printed as
one JSON line (task, mode, n, accuracy, extras); nothing is written. Any error prints one paragraph on
stderr and returns 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tasks
from tasks import coin, scoring
from tasks.base import TaskError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench score", description="Score a CoIN prediction file (JSONL) with the official CoIN rules.")
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(tasks.names())}")
    parser.add_argument("--predictions", required=True, help="CoIN prediction JSONL (question_id, text, ...)")
    parser.add_argument("--annotations", required=True, help="the CoIN test.json / val.json of the task")
    parser.add_argument("--side-file", default=None,
                        help="official side file: TextVQA_0.5.1_val.json, GQA testdev_balanced_questions.json, "
                             "or ScienceQA problems.json (pid_splits.json beside it) or its folder")
    parser.add_argument("--mode", default="official", help=f"one of: {', '.join(scoring.MODES)} (default official)")
    return parser


def read_predictions(path: str | Path) -> list[tuple[str, str]]:
    """``(str(question_id), text)`` per non-blank line, in file order; a malformed line is a TaskError
    naming the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"predictions file not found: {path} (expected CoIN JSONL with question_id and text per line)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}: line {line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TaskError(f"{path}: line {line_no}: expected a JSON object")
            qid = obj.get("question_id")
            if isinstance(qid, bool) or not isinstance(qid, (str, int)):
                raise TaskError(f"{path}: line {line_no}: field 'question_id': missing or not a string/int")
            text = obj.get("text")
            if not isinstance(text, str):
                raise TaskError(f"{path}: line {line_no}: field 'text': missing or not a string")
            rows.append((str(qid), text))
    return rows


def align_predictions(task: str, predictions: list[tuple[str, str]], references: list[dict[str, Any]],
                      path: str | Path) -> list[str | None]:
    """Prediction text per reference (None where missing). ImageNet: by position, as the official
    script. Others: by ``str(question_id)``; when both files list the same ids in the same order they
    are paired by position, which also keeps repeated ids unambiguous."""
    if task == "imagenet":
        if len(predictions) > len(references):
            raise TaskError(f"{path}: {len(predictions)} predictions for {len(references)} ImageNet annotations; "
                            "ImageNet predictions are aligned by line position and cannot outnumber the annotations")
        return [text for _, text in predictions] + [None] * (len(references) - len(predictions))
    ref_ids = [r["question_id"] for r in references]
    if [qid for qid, _ in predictions] == ref_ids:
        return [text for _, text in predictions]
    position: dict[str, int] = {}
    for i, qid in enumerate(ref_ids):
        if qid in position:
            raise TaskError(f"annotations: question_id {qid!r} appears twice (records {position[qid]} and {i}); "
                            "predictions cannot be matched to it unambiguously")
        position[qid] = i
    aligned: list[str | None] = [None] * len(references)
    seen: dict[str, int] = {}
    for n, (qid, text) in enumerate(predictions, start=1):
        if qid not in position:
            raise TaskError(f"{path}: prediction {n}: field 'question_id': {qid!r} is not in the annotations")
        if qid in seen:
            raise TaskError(f"{path}: prediction {n}: field 'question_id': {qid!r} repeats prediction {seen[qid]}")
        seen[qid] = n
        aligned[position[qid]] = text
    return aligned


def run(task_name: str, predictions_path: str, annotations_path: str, side_file: str | None,
        mode: str) -> dict[str, Any]:
    """Score one prediction file; returns the JSON object printed by :func:`main`."""
    task = tasks.get(task_name)
    if mode not in scoring.MODES:
        raise TaskError(f"unknown scoring mode {mode!r}; valid modes: {', '.join(scoring.MODES)}")
    references = coin.read_annotations(task, annotations_path, side_file)
    predictions = read_predictions(predictions_path)
    aligned = align_predictions(task.name, predictions, references, predictions_path)
    result = scoring.score(task.name, aligned, references, mode=mode)
    return {**result.to_json(), "n_predictions": len(predictions), "n_references": len(references)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench score``; ``argv`` may start with the word ``score``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["score"]:
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse has printed its usage message
        return int(exit_.code or 0)
    try:
        out = run(args.task, args.predictions, args.annotations, args.side_file, args.mode)
    except (TaskError, OSError, UnicodeDecodeError) as e:
        print(f"bench score: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
