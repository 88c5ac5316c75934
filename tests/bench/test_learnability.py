"""bench.analysis.learnability on hand-made records: chance levels (a record's own, computed from its coin-mini data
spec and cached, unknown for real data or another generator version), the judged accuracies (diagonal;
Last row for joint training), the margin boundary, and the gate's rules (default configurations of
registered methods, oracle included; ablations and unregistered methods exempt)."""
from __future__ import annotations

from bench.analysis.leaderboard import build_groups
from bench.analysis.learnability import (LEARNABILITY_MARGIN, at_or_below, gate, record_chance, row_learnability,
                                stream_accuracies)
from test_leaderboard import CHANCE, _record  # tests/bench is on sys.path (rootdir-less test modules)

# chance 25 / 10 / 5 -> a diagonal cell must exceed 30 / 15 / 10
LEARNED = [[0, 0, 0], [40.0, 0, 0], [30, 20.0, 0], [30, 20, 15.0]]
NOT_TEXTVQA = [[0, 0, 0], [40.0, 0, 0], [30, 15.0, 0], [30, 10, 15.0]]


def test_margin_and_boundary() -> None:
    assert LEARNABILITY_MARGIN == 5.0
    assert at_or_below(15.0, 10.0) and not at_or_below(15.01, 10.0)
    assert at_or_below((0.1 + 0.2) * 50, 10.0)  # 15.000000000000002: float noise of a mean is no "above"
    assert at_or_below(0.0, 0.0) and not at_or_below(5.5, 0.0)


def test_stream_accuracies() -> None:
    assert stream_accuracies(_record("seq-ft", 0, LEARNED)) == {"scienceqa": 40.0, "textvqa": 20.0, "imagenet": 15.0}
    joint = _record("multitask", 0, [[1, 2, 3], [60.0, 12.0, 50.0]], joint=True, totals=(9,), trained=(9,))
    assert stream_accuracies(joint) == {"scienceqa": 60.0, "textvqa": 12.0, "imagenet": 50.0}
    reordered = _record("seq-ft", 1, LEARNED)
    reordered["tasks"] = ["imagenet", "scienceqa", "textvqa"]  # another task order: the diagonal follows the tasks
    assert stream_accuracies(reordered) == {"imagenet": 40.0, "scienceqa": 20.0, "textvqa": 15.0}


def test_record_chance_sources(session_cache, monkeypatch) -> None:
    from tasks.base import DataSpec
    from tasks.chance import _chance_of, majority_baseline
    from tasks.synthetic import GENERATOR_VERSION, draw

    monkeypatch.setenv("CMB_CACHE", session_cache)
    assert record_chance(_record("seq-ft", 0, LEARNED)).levels == CHANCE  # the record's own tasks_chance

    r = _record("seq-ft", 0, LEARNED, chance=None)
    r["tasks"] = ["vqav2", "imagenet"]
    r["data"].update({"mini_train": 48, "mini_test": 16, "limit_train": None, "limit_test": None,
                      "splits": {t: {"test": {"generator_version": GENERATOR_VERSION, "image_size": 64}}
                                 for t in r["tasks"]}})
    computed = record_chance(r)
    expected = majority_baseline(DataSpec(mini_train=48, mini_test=16, cache_dir=f"{session_cache}/coin-mini"),
                                 ["vqav2", "imagenet"])
    assert computed.levels == expected and computed.reason is None
    renders, hits = draw.render_count, _chance_of.cache_info().hits
    assert record_chance(r).levels == expected  # cached: nothing rendered or loaded again
    assert draw.render_count == renders and _chance_of.cache_info().hits == hits + 2

    stale = dict(r, data={**r["data"], "splits": {"vqav2": {"test": {"generator_version": "0"}}}})
    res = record_chance(stale)
    assert res.levels is None and res.stale and "generator v0" in res.reason
    real = dict(r, data={**r["data"], "source": "coin"})
    res = record_chance(real)
    assert res.levels is None and not res.stale and "'coin'" in res.reason
    assert record_chance(dict(real, tasks_chance={"vqav2": 19.5})).levels == {"vqav2": 19.5}


def _groups(*records):
    return build_groups(list(records))


def test_row_means_over_seeds_and_chance() -> None:
    ((_k, (row,)),) = _groups(_record("seq-ft", 0, LEARNED), _record("seq-ft", 1, NOT_TEXTVQA))
    info = row_learnability(row)
    assert info.values == {"scienceqa": 40.0, "textvqa": 17.5, "imagenet": 15.0}
    assert info.chance == CHANCE and info.failing() == [] and info.learned() == 3
    ((_k, (row,)),) = _groups(_record("seq-ft", 0, NOT_TEXTVQA), _record("seq-ft", 1, NOT_TEXTVQA))
    assert row_learnability(row).failing() == ["textvqa"]
    partial = _record("seq-ft", 0, NOT_TEXTVQA, chance={"scienceqa": 25.0})  # no chance for two tasks
    ((_k, (row,)),) = _groups(partial)
    info = row_learnability(row)
    assert info.judged() == ["scienceqa"] and info.learned() == 1


def test_gate_rules() -> None:
    oracle = _record("cmoe-oracle", 0, NOT_TEXTVQA, oracle=True)
    ablation = _record("cmoe", 0, NOT_TEXTVQA, hparams={"probing": False})
    joint_bad = _record("multitask", 0, [[0, 0, 0], [60.0, 12.0, 50.0]], joint=True, totals=(9,), trained=(9,))
    unregistered = _record("seq-ft", 0, NOT_TEXTVQA)
    unregistered.update(method="not-a-method", run_id="x-not-a-method")
    groups = _groups(_record("seq-ft", 0, NOT_TEXTVQA), _record("moelora", 0, LEARNED), oracle, ablation,
                     joint_bad, unregistered)
    res = gate(groups)
    assert len(res.problems) == 3 and res.judged == 4, res.problems
    text = "\n".join(res.problems)
    assert "seq-ft: 1 of 3 task(s) at or below chance + 5 right after training: textvqa 15.0 (chance 10.0)" in text
    assert "cmoe-oracle (oracle): 1 of 3" in text  # oracle rows are default configurations too
    assert "multitask: 1 of 3 task(s) at or below chance + 5 after joint training: textvqa 12.0" in text
    assert "probing" not in text and "not-a-method" not in text  # ablations and unregistered methods exempt
    assert any("no record of the default configuration of" in n and "cmoe," in n for n in res.notes)

    only = gate(groups, ["moelora", "cmoe"])  # --methods limits the gate
    assert only.problems == [] and only.judged == 1 and only.notes == ["no record of the default configuration of cmoe"]


def test_gate_unknown_chance() -> None:
    real = _record("seq-ft", 0, NOT_TEXTVQA, chance=None)
    real["data"]["source"] = "coin"
    res = gate(_groups(real), ["seq-ft"])
    assert res.problems == [] and res.judged == 0 and "seq-ft not judged" in res.notes[0]
    stale = _record("seq-ft", 0, LEARNED, chance=None)
    stale["data"]["splits"] = {"scienceqa": {"test": {"generator_version": "0"}}}
    (problem,) = gate(_groups(stale), ["seq-ft"]).problems
    assert problem.startswith("seq-ft: chance level unknown: made on coin-mini generator v0")


def test_gate_names_groups() -> None:
    other = _record("seq-ft", 1, NOT_TEXTVQA)
    other["budget"] = {**other["budget"], "lr": 0.01}
    res = gate(_groups(_record("seq-ft", 0, LEARNED), other), ["seq-ft"])
    (problem,) = res.problems
    assert problem.startswith("seq-ft (group 2): ")


def test_gate_keeps_records_run_at_since_changed_defaults() -> None:
    # records run without --set carry the defaults of their time: labelled from the record alone they are
    # the method's default configuration whatever today's defaults are, so they stay gated
    drifted = _record("cmoe", 0, NOT_TEXTVQA, hparams={"probing": False})
    drifted["config"] = {"method_set": {}}
    (problem,) = gate(_groups(drifted), ["cmoe"]).problems
    assert problem.startswith("cmoe: 1 of 3")
    chosen = _record("cmoe", 0, NOT_TEXTVQA, hparams={"probing": False})
    chosen["config"] = {"method_set": {"probing": "false"}}  # a deliberate ablation
    res = gate(_groups(chosen), ["cmoe"])
    assert res.problems == [] and res.notes == ["no record of the default configuration of cmoe"]
