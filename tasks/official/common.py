"""What the eight official CoIN scripts do alike, reproduced once.

Every script (``zackschen/CoIN`` at commit 4122465, ``ETrain/Eval/LLaVA/CoIN/``) reads the prediction
file with ``[json.loads(line) for line in open(result_file)]``, builds plain dicts from the JSON it
loads and indexes them with ``[...]``; the first thing it cannot read stops it with a Python
exception and no figure is printed. The helpers here do the same reads and turn each such stop into
a :class:`TaskError` naming the file, the line (predictions, 1-based) or record (annotations,
0-based), the field and the script line that fails there. They never reject what the script accepts:
nothing is trimmed, converted or validated beyond the script's own operations.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tasks.types import ScoreResult, TaskError
from tasks.coin import load_json

COMMIT = "4122465"


@dataclass(frozen=True)
class Inputs:
    """The files of one ``bench score`` call: the prediction JSONL, the CoIN test/val JSON (None when
    not given) and the official side files by role (see :mod:`tasks.side_files`)."""

    task: str
    predictions: Path
    annotations: Path | None = None
    side: dict[str, Path] = field(default_factory=dict)

    def require_annotations(self, script: str, what: str) -> Path:
        """The annotations path; an error when it was not given and ``script`` reads it."""
        if self.annotations is None:
            raise TaskError(f"{self.task}: --annotations is needed: {script} reads {what}")
        return self.annotations


def read_lines(path: Path) -> list[Any]:
    """``[json.loads(line) for line in open(result_file)]``: one JSON value per line, every line. A
    blank line is invalid JSON there too (``json.loads("\\n")`` raises), so it is an error, not skipped."""
    if not path.is_file():
        raise TaskError(f"predictions file not found: {path} (expected CoIN JSONL with question_id and text per line)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                blank = " (a blank line)" if not line.strip() else ""
                raise TaskError(f"{path}: line {line_no}: invalid JSON{blank}: {e.msg}; the official scripts "
                                "read every line with json.loads and stop here") from None
    return rows


def load(path: Path) -> Any:
    """``json.load(open(path))``."""
    return load_json(path)


def line_at(path: Path, index: int) -> str:
    return f"{path}: line {index + 1}"


def record_at(path: Path, index: int) -> str:
    return f"{path}: record {index}"


def stop(where: str, key: str, problem: str, used_at: str) -> TaskError:
    """The error for a read the official script fails on: ``used_at`` is "<script> line N"."""
    return TaskError(f"{where}: field '{key}': {problem} ({used_at} stops here)")


def get(obj: Any, key: str, where: str, used_at: str) -> Any:
    """``obj[key]`` on a JSON object, as the script indexes it."""
    if not isinstance(obj, dict):
        raise stop(where, key, f"the {type(obj).__name__} {obj!r:.60} is not a JSON object", used_at)
    if key not in obj:
        raise stop(where, key, "missing", used_at)
    return obj[key]


def hashable(value: Any, where: str, key: str, used_at: str) -> Any:
    """A JSON value used as a dict key: lists and objects raise TypeError (unhashable) in the script."""
    if isinstance(value, (list, dict)):
        raise stop(where, key, f"{value!r:.60} cannot be a dict key", used_at)
    return value


def records(data: Any, path: Path, used_at: str) -> Iterable[tuple[int, Any]]:
    """``for annotation in annotations`` over a JSON list of records, with their indices."""
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of records, got {type(data).__name__} ({used_at} iterates it)")
    return enumerate(data)


def keyed(data: Any, path: Path, key: Any, used_at: str) -> dict[Any, tuple[int, Any]]:
    """``{key(a['question_id']): a for a in annotations}``: a later record with the same key replaces
    the earlier one. Values are ``(record index, record)``. ``key`` is ``str`` where the script calls
    ``str()`` and the identity where it does not."""
    table: dict[Any, tuple[int, Any]] = {}
    for i, rec in records(data, path, used_at):
        qid = get(rec, "question_id", record_at(path, i), used_at)
        table[hashable(key(qid), record_at(path, i), "question_id", used_at)] = (i, rec)
    return table


def lookup(table: dict[Any, Any], qid: Any, where: str, source: Path, used_at: str, how: str) -> Any:
    """``table[qid]``; a missing key is the script's KeyError. ``how`` says how the script matches ids
    (e.g. "as it is, without str()"), the usual reason for a miss."""
    hashable(qid, where, "question_id", used_at)
    if qid not in table:
        raise stop(where, "question_id", f"{qid!r} is not a question id of {source} (ids are matched {how}; KeyError)",
                   used_at)
    return table[qid]


def match_lines(inputs: Inputs, table: dict[Any, tuple[int, Any]], source: Path, key: Any, used_at: str,
                how: str) -> list[tuple[str, Any, Any, Any]]:
    """``for result in results: annotation = annotations[key(result['question_id'])]``: every
    prediction line, in file order (a repeated line counts again), with its annotation record.
    Returns ``(where, line object, record, key)`` per line."""
    out = []
    for i, row in enumerate(read_lines(inputs.predictions)):
        where = line_at(inputs.predictions, i)
        qid = key(get(row, "question_id", where, used_at))
        out.append((where, row, lookup(table, qid, where, source, used_at, how)[1], qid))
    return out


def nothing_to_score(path: Path, used_at: str) -> TaskError:
    return TaskError(f"{path}: nothing to score: the denominator is 0 ({used_at} divides by zero)")


def repeated(keys: Iterable[Any]) -> int:
    """How many keys repeat an earlier one (prediction lines for an id already seen)."""
    seen: set[Any] = set()
    count = 0
    for k in keys:
        count += k in seen
        seen.add(k)
    return count


def result(task: str, n: int, accuracy: float, per_sample: list[float], **extras: Any) -> ScoreResult:
    """An official-mode result; ``per_sample`` follows the script's own loop (lines or problems) and
    ``printed`` is the accuracy as the script prints it (``{:.2f}``)."""
    return ScoreResult(task=task, mode="official", n=n, accuracy=accuracy, per_sample=per_sample,
                       extras={"printed": f"{accuracy:.2f}", **extras, "script_commit": COMMIT})


def score_matched(inputs: Inputs, task: str, script: str, annotations_hint: str, key: Any, keyed_at: str,
                  matched_at: str, how: str, correct: Any, total_at: str) -> ScoreResult:
    """The control flow the id-keyed scripts share (VizWiz, VQAv2, OCR-VQA, grounding): key the
    annotation file by ``key`` (a later record replaces an earlier one), look every prediction line up
    in it, score each line with ``correct(where, row, record)`` and print ``100. * right / total`` over
    the prediction lines; no line at all is the script's division by zero (``total_at``)."""
    ann_path = inputs.require_annotations(script, annotations_hint)
    table = keyed(load(ann_path), ann_path, key, keyed_at)
    lines = match_lines(inputs, table, ann_path, key, matched_at, how)
    per_sample = [float(correct(where, row, rec)) for where, row, rec, _ in lines]
    if not lines:
        raise nothing_to_score(inputs.predictions, total_at)
    right = int(sum(per_sample))
    return result(task, len(lines), 100. * right / len(lines), per_sample, n_predictions=len(lines),
                  n_annotations=len(table), missing=len(set(table) - {k for *_, k in lines}),
                  repeated=repeated(k for *_, k in lines), inputs=[str(ann_path), str(inputs.predictions)])
