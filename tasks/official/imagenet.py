"""``eval_ImagetNet.py`` (sic), reproduced.

Rule, with the script's lines:

- L16-17 ``answers = [test['answer'] for test in annotations]``: the CoIN test.json, every record
  (each needs ``answer``; ``question_id`` is never read).
- L18, L20 ``total = len(results)``: the denominator is the number of prediction lines.
- L23-26 line ``i`` is compared with record ``i``: alignment by position, not by question id. Records
  past the last line are not scored; a line past the last record is ``answers[index]`` -> IndexError.
- L26 correct iff ``text in label['text'] or label['text'] in text``: case-sensitive substring
  either way, no normalisation, so an empty prediction is correct. A repeated line counts again.
- L32 ``100. * right / total``.

Clean mode instead matches lines to records by ``str(question_id)``, counts every record (missing =
wrong) and asks for a normalised exact match.
"""
from __future__ import annotations

from tasks.types import ScoreResult, TaskError
from tasks.official.common import Inputs, get, line_at, load, nothing_to_score, read_lines, record_at, records, result

SCRIPT = "eval_ImagetNet.py"


def score(inputs: Inputs) -> ScoreResult:
    ann_path = inputs.require_annotations(SCRIPT, "the CoIN test.json (the class name of every record)")
    answers = [get(rec, "answer", record_at(ann_path, i), f"{SCRIPT} line 17")
               for i, rec in records(load(ann_path), ann_path, f"{SCRIPT} line 17")]
    rows = read_lines(inputs.predictions)
    total = len(rows)
    per_sample: list[float] = []
    for index, label in enumerate(rows):
        where = line_at(inputs.predictions, index)
        if index >= len(answers):
            raise TaskError(f"{where}: no record {index} in {ann_path} ({len(answers)} records): {SCRIPT} line 24 "
                            "pairs prediction lines with records by position and raises IndexError")
        text = answers[index]
        pred = get(label, "text", where, f"{SCRIPT} line 26")
        try:
            ok = (text in pred) or (pred in text)
        except TypeError:
            raise TaskError(f"{where}: field 'text': {pred!r:.60} and the answer {text!r:.60} of record {index} "
                            f"cannot be tested for a substring ({SCRIPT} line 26 stops here)") from None
        per_sample.append(float(ok))
    if total == 0:
        raise nothing_to_score(inputs.predictions, f"{SCRIPT} line 32")
    right = int(sum(per_sample))
    return result("imagenet", total, 100. * right / total, per_sample, n_predictions=total,
                  n_annotations=len(answers), missing=max(0, len(answers) - total),
                  inputs=[str(ann_path), str(inputs.predictions)])
