"""Every registered method gets the same tiny two-task end-to-end run: a valid record with finite
metrics, parameters the method did not expose for training are bit-identical after each task, and the
run's last checkpoint restores the method bit-identically into a fresh model (tests/roundtrip_check.py)."""
from __future__ import annotations

import math

import pytest
from frozen_check import FrozenCheck  # tests/ is on sys.path through its conftest.py
from roundtrip_check import assert_round_trip

import methods
from bench.protocol import run
from bench.records import read_record


@pytest.mark.parametrize("name", methods.names())
def test_method_runs_two_tasks(name, tiny_config):
    cfg = tiny_config(method=name)
    hooks = FrozenCheck()
    live = {}
    hooks.before_train = lambda t, method, model, _before=hooks.before_train: (
        live.update(method=method, model=model), _before(t, method, model))
    record = read_record(run(cfg, hooks))
    expected_stages = 1 if methods.get(name).joint_training else 2
    assert hooks.checked == expected_stages
    assert record["method"] == name and record["tasks"] == ["vqav2", "imagenet"]
    assert len(record["accuracy_matrix"]) == expected_stages + 1
    for key in ("last", "maa", "bwt", "forgetting", "fwt", "mft"):
        value = record["metrics"][key]
        assert value is None or math.isfinite(value)
    assert math.isfinite(record["metrics"]["last"])
    assert len(record["parameters"]) == expected_stages
    for counts in record["parameters"]:
        assert 0 < counts["trained"] <= counts["total"]
        assert 0 < counts["activated_per_token"] <= counts["total"]
    assert record["wall_time"]["training"] > 0 and record["wall_time"]["evaluation"] > 0
    assert_round_trip(cfg, record, live["method"], live["model"])
