"""bench tune: equal trials per method, drawn reproducibly from the declared space, scored on the
validation protocol only; a test split replaced by garbage leaves every tuning result unchanged."""
from __future__ import annotations

import dataclasses
import json

import pytest

import methods
import tasks
from bench.config import Stage0Spec, build_config
from bench.sweeps.tune import plan_tuning, trial_settings, tune
from methods.base import search_space
from tasks.types import DataSpec, TaskSplit
from tasks.validation import VALIDATION_FRACTION, held_out_indices


def test_every_method_declares_a_search_space_its_hparams_accept():
    for name in methods.names():
        hp_cls = methods.get(name).HParams
        space = search_space(hp_cls)
        assert "lr_scale" in space, name  # the learning rate is always tuned
        fields = {f.name for f in dataclasses.fields(hp_cls)}
        for key, values in space.items():
            assert key in fields, (name, key)
            assert len(values) >= 2 and len(set(values)) == len(values), (name, key)
            for v in values:
                dataclasses.replace(hp_cls(), **{key: v}).validate()


def test_trials_are_the_defaults_then_distinct_draws_reproducible_by_seed():
    for name in methods.names():
        a = trial_settings(name, 4, tune_seed=0)
        assert a == trial_settings(name, 4, tune_seed=0)
        assert a[0] == {} and len(a) == 4
        assert all(s for s in a[1:]) and len({json.dumps(s, sort_keys=True) for s in a}) == 4
    assert any(trial_settings(n, 4, 0) != trial_settings(n, 4, 1) for n in methods.names())
    with pytest.raises(Exception, match="--trials"):
        trial_settings("seq-ft", 0, 0)


def test_held_out_part_is_seeded_disjoint_and_a_tenth():
    idx = held_out_indices("gqa", 200, data_seed=3)
    assert idx == held_out_indices("gqa", 200, data_seed=3) and idx == sorted(set(idx))
    assert len(idx) == round(VALIDATION_FRACTION * 200)
    assert idx != held_out_indices("gqa", 200, data_seed=4) and idx != held_out_indices("vqav2", 200, data_seed=3)


def test_validation_spec_never_loads_the_test_split(session_cache):
    task = tasks.get("vqav2")
    spec = DataSpec(mini_train=40, mini_test=16, cache_dir=session_cache + "/coin-mini", validation=True)
    train, val = task.load("train", spec), task.load("test", spec)
    full = task.load("train", dataclasses.replace(spec, validation=False))
    assert len(train) + len(val) == len(full) == 40 and val.split == "validation"
    assert not {r.question_id for r in train} & {r.question_id for r in val}
    test_ids = {r.question_id for r in task.load("test", dataclasses.replace(spec, validation=False))}
    assert {r.question_id for r in val} <= {r.question_id for r in full} and not test_ids & {r.question_id for r in val}


def _garbage_test_splits(monkeypatch):
    """Every task's coin-mini test split replaced by records whose answers are wrong; counts the reads."""
    reads = []

    def wrap(generate):
        def load(task, split, spec):
            part = generate(task, split, spec)
            if split != "test":
                return part
            reads.append(task.name)
            bad = part.dataset.map(lambda row: {"answer": "garbage " + row["answer"][::-1]})
            return TaskSplit(part.task, split, bad, part.source)
        return load

    for name in tasks.names():
        t = tasks.get(name)
        monkeypatch.setitem(tasks._TASKS, name, dataclasses.replace(t, generate=wrap(t.generate)))
    return reads


def _tiny_overrides(tmp_path, session_cache, out):
    return dict(tasks="vqav2,imagenet", steps_per_task=6, batch_size=8, mini_train=48, mini_test=16,
                eval_batch_size=16, max_new_tokens=8, out=str(tmp_path / out), cache_dir=session_cache,
                stage0=Stage0Spec(steps=8, num_records=160, batch_size=8))


@pytest.mark.integration
def test_tuning_reproduces_and_ignores_a_garbage_test_split(tmp_path, session_cache, monkeypatch):
    def run_tuning(out):
        planned = plan_tuning(["seq-ft"], 2, 0, "tiny", 0, _tiny_overrides(tmp_path, session_cache, out))
        chosen = json.loads(tune(planned, tmp_path / out, progress=False).read_text())["seq-ft"]
        for row in chosen["trials"]:
            row.pop("record")  # run ids hold a timestamp
        return planned, chosen

    planned, clean = run_tuning("a")
    cfg = planned[0].run.config
    assert cfg.validation and cfg.to_dict()["validation"] and cfg.out.endswith("tune")
    assert [t.settings for t in planned] == trial_settings("seq-ft", 2, 0)
    assert clean["trial"] in (0, 1) and len(clean["trials"]) == 2
    reads = _garbage_test_splits(monkeypatch)
    test_cfg = build_config("tiny", method="seq-ft", **_tiny_overrides(tmp_path, session_cache, "c"))
    assert "validation" not in test_cfg.to_dict()  # a test-protocol config keeps its old record key
    assert tasks.get("vqav2").load("test", test_cfg.data_spec())[0].answer.startswith("garbage")
    reads.clear()
    _, garbage = run_tuning("b")
    assert reads == []  # no test record was read
    assert garbage == clean  # same trials, same validation scores, same choice
