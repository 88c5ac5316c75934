"""``python -m bench score``: score a CoIN prediction file, by default exactly as the official script.

    python -m bench score --task textvqa --predictions merge.jsonl [--annotations val.json] \\
        [--side-file cl_dataset/TextVQA/TextVQA_0.5.1_val.json ...] [--mode official|clean]

``--mode official`` (default) runs the task's official CoIN script as :mod:`tasks.official` reproduces
it: the files it reads, what it divides by, how it matches ids and which repeated line wins, so a
partial or sharded prediction file gets the figure the script prints. ``--annotations`` is the CoIN
test/val JSON; ScienceQA, TextVQA and GQA read their side files instead when given (``--side-file``,
repeatable: ScienceQA takes ``problems.json`` and ``pid_splits.json``), and the annotations stand in
for them otherwise (the output says ``fallback``).

``--mode clean`` is the principled variant: every annotation record counts (a record without a
prediction is wrong), predictions are matched on ``str(question_id)`` for every task, and a repeated
or unknown prediction id is an error; each record is then scored with the clean rules of
:mod:`tasks.scoring`.

The result is printed as one JSON line (task, mode, n = the denominator, accuracy, extras); nothing
is written. Any error prints one paragraph on stderr and returns 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import tasks
from tasks import coin, official, scoring, side_files
from tasks.types import ScoreResult, TaskError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench score", description="Score a CoIN prediction file (JSONL) as the official CoIN scripts do.")
    parser.add_argument("--task", required=True, help=f"one of: {', '.join(tasks.names())}")
    parser.add_argument("--predictions", required=True, help="CoIN prediction JSONL (question_id, text, ...)")
    parser.add_argument("--annotations", default=None,
                        help="the CoIN test.json / val.json of the task (needed except where the official "
                             "script reads only its side files)")
    parser.add_argument("--side-file", action="append", default=[],
                        help="official side file, repeatable: TextVQA_0.5.1_val.json, GQA "
                             "testdev_balanced_questions.json, ScienceQA problems.json and pid_splits.json "
                             "(or their folder)")
    parser.add_argument("--mode", default="official", help=f"one of: {', '.join(scoring.MODES)} (default official)")
    return parser


def read_predictions(path: str | Path) -> list[tuple[str, str]]:
    """Clean mode: ``(str(question_id), text)`` per non-blank line, in file order; a malformed line is a
    TaskError naming the file, the line and the field."""
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


def align_predictions(predictions: list[tuple[str, str]], references: list[dict[str, Any]],
                      path: str | Path) -> list[str | None]:
    """Clean mode: the prediction text per reference (None where missing), matched on
    ``str(question_id)``; a repeated or unknown prediction id is an error."""
    position: dict[str, int] = {}
    for i, ref in enumerate(references):
        qid = ref["question_id"]
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
            raise TaskError(f"{path}: prediction {n}: field 'question_id': {qid!r} repeats prediction {seen[qid]} "
                            "(--mode clean takes one prediction per record; --mode official counts repeats as "
                            "the official script does)")
        seen[qid] = n
        aligned[position[qid]] = text
    return aligned


def score_clean(task_name: str, predictions_path: str | Path, annotations_path: str | Path | None,
                side: list[str]) -> tuple[ScoreResult, dict[str, Any]]:
    """Every annotation record counts; missing = wrong; the clean per-record rules."""
    if annotations_path is None:
        raise TaskError(f"{task_name}: --annotations is needed in --mode clean (every record of the CoIN "
                        "test/val JSON is scored)")
    references = coin.read_annotations(tasks.get(task_name), annotations_path, side)
    predictions = read_predictions(predictions_path)
    aligned = align_predictions(predictions, references, predictions_path)
    result = scoring.score(task_name, aligned, references, mode="clean")
    return result, {"n_predictions": len(predictions), "n_references": len(references)}


def run(task_name: str, predictions_path: str, annotations_path: str | None, side: list[str] | str | None,
        mode: str) -> dict[str, Any]:
    """Score one prediction file; returns the JSON object printed by :func:`main`."""
    task = tasks.get(task_name)
    if mode not in scoring.MODES:
        raise TaskError(f"unknown scoring mode {mode!r}; valid modes: {', '.join(scoring.MODES)}")
    side_list = [side] if isinstance(side, str) else list(side or [])
    if mode == "clean":
        result, counts = score_clean(task.name, predictions_path, annotations_path, side_list)
        return {**result.to_json(), **counts}
    inputs = official.Inputs(task=task.name, predictions=Path(predictions_path),
                             annotations=None if annotations_path is None else Path(annotations_path),
                             side=side_files.resolve(task.name, side_list))
    return official.score_files(inputs).to_json()


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
