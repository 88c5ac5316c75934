"""The continual protocol end to end on a tiny config: determinism, record contents, safe writes."""
from __future__ import annotations

import json

import pytest

from bench.run.protocol import run
from bench.io.records import RecordError, atomic_write_text, decode_scores, per_sample_accuracy, read_record


def test_same_config_and_seed_give_identical_results(tiny_config):
    a = read_record(run(tiny_config()))
    b = read_record(run(tiny_config()))
    assert a["run_id"] != b["run_id"]
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    assert a["parameters"] == b["parameters"]
    assert [t["loss_curve"] for t in a["training"]] == [t["loss_curve"] for t in b["training"]]
    # the record states what was run, with every seed separately
    assert a["seeds"] == {"run": 0, "data": 0, "task_order": None}
    assert a["data"]["source"] == "coin-mini" and a["data"]["splits"]["vqav2"]["train"]["n"] == 48
    assert a["matrix_rows"] == ["base", "vqav2", "imagenet"]
    assert a["backbone"]["stage0"]["key"] and a["backbone"]["config_hash"]
    assert set(a["wall_time"]) >= {"stage0", "data", "training", "evaluation", "total"}
    # every row's entry keeps each test record's score; its mean is the matrix entry
    for row, scores in zip(a["accuracy_matrix"], a["scores"]):
        for name, accuracy in zip(a["tasks"], row):
            decoded = decode_scores(scores[name]["per_sample"])
            assert len(decoded) == a["data"]["splits"][name]["test"]["n"]
            assert per_sample_accuracy(scores[name]["per_sample"]) == pytest.approx(accuracy, abs=1e-4)
    assert [s["imagenet"]["per_sample"] for s in a["scores"]] == [s["imagenet"]["per_sample"] for s in b["scores"]]


def test_task_order_seed_permutes_tasks(tiny_config):
    record = read_record(run(tiny_config(tasks="vqav2,imagenet,gqa", task_order_seed=3, steps_per_task=2)))
    assert record["tasks"] == ["imagenet", "gqa", "vqav2"]  # random.Random(3).shuffle of the given order
    assert record["seeds"]["task_order"] == 3


def test_records_are_never_overwritten(tmp_path):
    path = tmp_path / "runs" / "x.json"
    atomic_write_text(path, json.dumps({"a": 1}), overwrite=False)
    with pytest.raises(RecordError, match="never overwritten"):
        atomic_write_text(path, json.dumps({"a": 2}), overwrite=False)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temp file left behind
