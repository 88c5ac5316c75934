"""bench.analysis.check: the comparison rules on hand-made baselines, the leaderboard freshness check, the
learnability gate on hand-made records (its row in the table and the exit code), and one real method
checked in-process on a tiny config — a fresh baseline passes on a rerun, while a perturbed baseline and a
deliberately broken method both fail."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.analysis.check import (TOLERANCE, MethodResult, check_leaderboard, check_learnability, compare, format_table,
                         run_check)
from bench.config import Stage0Spec

BASE = {
    "config": {"method": "seq-ft", "steps_per_task": 6}, "tasks": ["vqav2", "imagenet"],
    "matrix_rows": ["base", "vqav2", "imagenet"], "accuracy_matrix": [[0.0, 0.0], [40.0, 10.0], [20.0, 50.0]],
    "parameters": [{"after": "vqav2", "total": 100, "trained": 10, "evolved": 0, "activated_per_token": 90},
                   {"after": "imagenet", "total": 100, "trained": 10, "evolved": 0, "activated_per_token": 90}],
    "loss_curves": [[[3, 2.5], [6, 1.25]], [[3, 3.0], [6, 2.0]]],
    "stage0_key": "abc",
}


def _with(**changes) -> dict:
    b = copy.deepcopy(BASE)
    b.update(changes)
    return b


def test_compare_tolerance_parameters_and_config():
    assert TOLERANCE == 2.0
    assert compare(BASE, copy.deepcopy(BASE)) == []
    inside = _with(accuracy_matrix=[[0.0, 2.0], [38.0, 10.0], [20.0, 50.0]])
    assert compare(BASE, inside) == []
    outside = _with(accuracy_matrix=[[0.0, 0.0], [40.0, 10.0], [20.0, 47.5]])
    (problem,) = compare(BASE, outside)
    assert "after imagenet on imagenet: 47.5 (baseline 50.0, |diff| 2.5 > 2)" in problem
    grown = _with(parameters=[BASE["parameters"][0], {**BASE["parameters"][1], "total": 120}])
    assert compare(BASE, grown) == ["parameters after imagenet: total 120 (baseline 100)"]
    stale = _with(config={"method": "seq-ft", "steps_per_task": 8})
    (problem,) = compare(BASE, stale)
    assert "another configuration" in problem and "steps_per_task" in problem and "--update" in problem
    moved = _with(accuracy_matrix=[[0.0, 0.0], [0.0, 10.0], [20.0, 50.0]], stage0_key="def")
    assert any("stage-0" in p for p in compare(BASE, moved))


def test_compare_training_loss_within_relative_tolerance():
    assert compare(BASE, _with(loss_curves=[[[3, 2.5], [6, 1.2505]], [[3, 3.0], [6, 2.0]]])) == []  # 4e-4
    (problem,) = compare(BASE, _with(loss_curves=[[[3, 2.5], [6, 1.25]], [[3, 3.0], [6, 2.01]]]))  # 5e-3
    assert problem.startswith("training loss of imagenet at step 6: 2.01000 (baseline 2.00000")


def test_leaderboard_must_match_the_records(tmp_path):
    from test_leaderboard import _A, _record  # tests/bench is on sys.path (rootdir-less test modules)

    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    record = _record("seq-ft", 0, _A([10, 20, 30]))
    (runs / f"{record['run_id']}.json").write_text(json.dumps(record))
    from bench.analysis.leaderboard import generate

    generate(runs, tmp_path / "results", plots=False)
    assert check_leaderboard(runs, tmp_path / "results").status == "PASS"
    md = tmp_path / "results" / "LEADERBOARD.md"
    md.write_text(md.read_text() + "\n")
    res = check_leaderboard(runs, tmp_path / "results")
    assert res.status == "FAIL" and "LEADERBOARD.md" in res.problems[0] and "bench leaderboard" in res.problems[0]
    generate(runs, tmp_path / "results", plots=False)
    (tmp_path / "results" / "leaderboard.csv").unlink()
    assert check_leaderboard(runs, tmp_path / "results").status == "FAIL"


def _learnability_runs(tmp_path, *, learned: bool) -> Path:
    from test_leaderboard import _record, _write

    # chance 25 / 10 / 5: the textvqa diagonal cell (15.0) is at chance + 5 unless learned
    textvqa = 20.0 if learned else 15.0
    A = [[0, 0, 0], [40.0, 0, 0], [30, textvqa, 0], [30, 10, 15.0]]
    runs = _write(tmp_path / "results" / "runs", _record("seq-ft", 0, A), _record("seq-ft", 1, A),
                  _record("cmoe", 0, [[0, 0, 0], [0.0, 0, 0], [0, 0.0, 0], [0, 0, 0.0]], hparams={"probing": False}))
    from bench.analysis.leaderboard import generate

    generate(runs, tmp_path / "results", plots=False)
    return runs


def test_learnability_row(tmp_path):
    runs = _learnability_runs(tmp_path, learned=False)
    results = [check_leaderboard(runs, tmp_path / "results"), check_learnability(runs)]
    assert [(r.method, r.status) for r in results] == [("leaderboard", "PASS"), ("learnability", "FAIL")]
    table = format_table(results)
    assert "learnability  FAIL" in table and "seq-ft: 1 of 3 task(s) at or below chance + 5" in table
    assert "textvqa 15.0 (chance 10.0)" in table and "cmoe [probing=False]" not in table  # an ablation is exempt
    assert check_learnability(runs, ["cmoe"]).status == "PASS"  # only the checked methods are gated

    learned = _learnability_runs(tmp_path / "ok", learned=True)
    res = check_learnability(learned, ["seq-ft"])
    assert res.status == "PASS" and res.detail.startswith("1 default configuration(s) above chance + 5")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_learnability(empty).status == "PASS"


def test_learnability_failure_fails_the_command(tmp_path, monkeypatch, capsys):
    import bench.analysis.check

    runs = _learnability_runs(tmp_path, learned=False)
    monkeypatch.setattr(bench.analysis.check, "check_method",
                        lambda method, *a, **k: MethodResult(method, "PASS", detail="stub"))
    argv = ["check", "--methods", "seq-ft", "--runs", str(runs), "--results", str(tmp_path / "results"),
            "--baselines", str(tmp_path / "baselines")]
    # report mode: the FAIL row is printed, the check passes
    assert main(argv + ["--learnability", "report"]) == 0
    out = capsys.readouterr().out
    assert "learnability  FAIL" in out and "reported, not fatal" in out
    assert main(argv + ["--learnability", "fail"]) == 1
    out = capsys.readouterr().out
    assert "seq-ft        PASS" in out and "leaderboard   PASS" in out  # the table: methods, leaderboard, gate
    assert "learnability  FAIL" in out and "A learnability failure is no regression" in out
    runs = _learnability_runs(tmp_path / "ok", learned=True)
    argv[4], argv[6] = str(runs), str(tmp_path / "ok" / "results")
    assert main(argv) == 0
    assert "learnability  PASS" in capsys.readouterr().out


def test_unknown_method_is_a_user_error(capsys):
    assert main(["check", "--methods", "nope"]) == 2
    assert "valid methods" in capsys.readouterr().err


@pytest.fixture
def tiny_overrides(session_cache):
    return dict(tasks="vqav2,imagenet", steps_per_task=6, batch_size=8, mini_train=48, mini_test=16,
                eval_batch_size=16, max_new_tokens=8, cache_dir=session_cache,
                stage0=Stage0Spec(steps=8, num_records=160, batch_size=8))


def test_check_passes_on_rerun_and_catches_perturbed_baseline_and_broken_method(tiny_overrides, tmp_path,
                                                                              monkeypatch):
    from bench.run.protocol import run

    baselines = tmp_path / "baselines"
    kept: list[Path] = []

    def keeping_runner(cfg):  # keep a copy of the record: the check writes into a temporary folder
        path = run(cfg)
        kept.append(Path(shutil.copy(path, tmp_path / path.name)))
        return path

    (updated,) = run_check(["seq-ft"], baseline_dir=baselines, update=True, runs_dir=None,
                           overrides=tiny_overrides, runner=keeping_runner)
    assert updated.status == "UPDATED"
    baseline = json.loads((baselines / "seq-ft.json").read_text())
    assert baseline["config"]["steps_per_task"] == 6 and baseline["tolerance_points"] == TOLERANCE
    assert "run_id" not in baseline and "wall_time" not in baseline  # only deterministic content

    # a real rerun of the same method reproduces its baseline
    (passed,) = run_check(["seq-ft"], baseline_dir=baselines, runs_dir=None, overrides=tiny_overrides)
    assert passed.status == "PASS", passed.problems
    assert "max |acc diff| 0.0" in passed.detail

    # a perturbed baseline (one cell moved by 10 points) fails, replaying the kept record
    perturbed = copy.deepcopy(baseline)
    perturbed["accuracy_matrix"][-1][0] += 10.0
    (baselines / "seq-ft.json").write_text(json.dumps(perturbed))
    (failed,) = run_check(["seq-ft"], baseline_dir=baselines, runs_dir=None, overrides=tiny_overrides,
                          runner=lambda cfg: kept[0])
    assert failed.status == "FAIL" and f"accuracy after imagenet on vqav2" in failed.problems[0]
    assert "FAIL" in format_table([failed])
    (baselines / "seq-ft.json").write_text(json.dumps(baseline))

    # a deliberately broken method: seq-ft's LoRA rank silently halved
    import methods

    cls = methods.get("seq-ft")
    monkeypatch.setattr(cls.HParams, "__init__", _forcing_rank(cls.HParams.__init__, 8))
    (broken,) = run_check(["seq-ft"], baseline_dir=baselines, runs_dir=None, overrides=tiny_overrides)
    assert broken.status == "FAIL"
    assert any(p.startswith("parameters after vqav2: total") for p in broken.problems), broken.problems

    # a method that crashes fails the check instead of aborting it
    monkeypatch.setattr(cls, "training_phases", lambda self, *args: iter(()))
    (crashed,) = run_check(["seq-ft"], baseline_dir=baselines, runs_dir=None, overrides=tiny_overrides)
    assert crashed.status == "FAIL" and "the run raised RuntimeError" in crashed.problems[0]


def _forcing_rank(init, rank: int):
    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.rank = rank

    return patched
