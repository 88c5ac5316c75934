"""Per-sample scores in the run record: the packed encoding round-trips, every scorer's accuracy is
the mean of its decoded scores (GQA: of the counted, balanced questions), and validation rejects a
field that disagrees with the entry's denominator."""
from __future__ import annotations

import copy

import pytest

from bench.io import records
from tasks import scoring


def test_round_trip_keeps_exact_and_soft_scores_and_the_not_counted_marker():
    scores = [0.0, 1.0] + [k / 30 for k in range(31)] + [0.5, 0.25]
    counted = [True] * len(scores)
    counted[3] = False
    text = records.encode_scores(scores, counted)
    assert text.startswith(records.PER_SAMPLE_PREFIX)
    decoded = records.decode_scores(text)
    assert len(decoded) == len(scores) and decoded[3] is None
    assert all(d == pytest.approx(s, abs=1e-12) for i, (d, s) in enumerate(zip(decoded, scores)) if i != 3)
    assert records.decode_scores(records.encode_scores([])) == []
    # one byte per record: 200 test records take 272 characters
    assert len(records.encode_scores([1.0] * 200)) == len(records.PER_SAMPLE_PREFIX) + 268


def test_bad_scores_and_bad_text_are_refused():
    with pytest.raises(ValueError, match="outside"):
        records.encode_scores([1.5])
    with pytest.raises(ValueError, match="counted flags"):
        records.encode_scores([1.0, 0.0], [True])
    with pytest.raises(records.RecordError, match="starting"):
        records.decode_scores("AAAA")
    with pytest.raises(records.RecordError, match="base64"):
        records.decode_scores(records.PER_SAMPLE_PREFIX + "!!")
    with pytest.raises(records.RecordError, match="neither"):
        records.decode_scores(records.PER_SAMPLE_PREFIX + "+A==")  # byte 248


TEXTVQA_REFS = [{"answer": "red", "answers": ["red"] * 2 + ["blue"] * 8},
                {"answer": "cat", "answers": ["cat"] * 10},
                {"answer": "a b", "answers": ["a b"] * 1 + ["x"] * 9}]


@pytest.mark.parametrize("task,predictions,references", [
    ("textvqa", ["red", "dog", "a b"], TEXTVQA_REFS),
    ("scienceqa", ["A", "B", None, "C"], [{"answer": "A"}, {"answer": "A"}, {"answer": "B"}, {"answer": "C"}]),
    ("gqa", ["yes", "no", "no", "yes"], [{"answer": "yes"}, {"answer": "no", "is_balanced": False},
                                         {"answer": "yes"}, {"answer": "yes", "is_balanced": True}]),
    ("imagenet", ["tabby cat", "dog"], [{"answer": "tabby cat"}, {"answer": "goldfish"}]),
])
@pytest.mark.parametrize("mode", ["official", "clean"])
def test_accuracy_is_the_mean_of_the_decoded_counted_scores(task, predictions, references, mode):
    result = scoring.score(task, predictions, references, mode=mode)
    text = records.encode_scores(result.per_sample, result.counted)
    decoded = records.decode_scores(text)
    assert len(decoded) == len(references)  # one entry per test record, in record order
    assert sum(v is not None for v in decoded) == result.n
    assert records.per_sample_accuracy(text) == pytest.approx(result.accuracy, abs=1e-9)
    assert 0 < result.accuracy < 100  # the cases mix right and wrong answers


def test_gqa_unbalanced_questions_are_kept_in_order_but_not_counted():
    refs = [{"answer": "yes"}, {"answer": "no", "is_balanced": False}, {"answer": "yes"}]
    result = scoring.score("gqa", ["yes", "no", "no"], refs)
    assert records.decode_scores(records.encode_scores(result.per_sample, result.counted)) == [1.0, None, 0.0]
    assert result.accuracy == 50.0  # counting the unbalanced right answer would give 66.7


def _record(entry: dict) -> dict:
    record = {k: None for k in records.REQUIRED_KEYS}
    record.update(run_id="r", tasks=["t"], joint_training=True, accuracy_matrix=[[50.0], [50.0]],
                  scores=[{"t": copy.deepcopy(entry)}, {"t": copy.deepcopy(entry)}])
    return record


def test_validation_accepts_matching_and_missing_fields_and_rejects_a_wrong_count():
    good = {"accuracy": 50.0, "n": 2, "per_sample": records.encode_scores([1.0, 0.0])}
    records.validate(_record(good))
    records.validate(_record({"accuracy": 50.0, "n": 2}))  # older records have no per-sample field
    with pytest.raises(records.RecordError, match="counted per-sample scores for n = 3"):
        records.validate(_record({**good, "n": 3}))
