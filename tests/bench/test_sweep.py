"""bench.sweeps.sweep: method/seed resolution, the skip index, the dry-run listing, and a real two-method sweep
whose records equal standalone runs in a separate process (no state leaks from one run to the next)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.config import ConfigError, Stage0Spec, build_config
from bench.io.records import read_record
from bench.sweeps.sweep import config_key, describe_plan, existing_records, parse_seeds, plan, resolve_methods, run_sweep
from methods import MethodError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def tiny(session_cache: str, out: Path) -> dict:
    """The budget of conftest's tiny_config, as build_config overrides (without method and seed)."""
    return dict(tasks="vqav2,imagenet", steps_per_task=6, batch_size=8, mini_train=48, mini_test=16,
                eval_batch_size=16, max_new_tokens=8, out=str(out), cache_dir=session_cache,
                stage0=Stage0Spec(steps=8, num_records=160, batch_size=8))


def test_resolve_methods_and_seeds():
    import methods

    assert resolve_methods("all") == methods.names()
    assert resolve_methods("multitask, seq-ft,multitask") == ["multitask", "seq-ft"]
    with pytest.raises(MethodError, match="unknown method 'nope'.*seq-ft"):
        resolve_methods("seq-ft,nope")
    assert parse_seeds("2,0,2") == [2, 0]
    for bad in ("", "0,x"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_unknown_method_on_the_cli_lists_valid_ones(tmp_path, capsys):
    assert main(["sweep", "--methods", "seq-ft,nope", "--out", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "multitask" in err


def _fake_record(path: Path, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": path.stem, "config": config}, indent=1, sort_keys=True))


def test_dry_run_skips_records_and_resumes_interrupted_runs_of_the_same_resolved_config(tmp_path, capsys):
    out = tmp_path / "results"
    flags = dict(tasks="vqav2,imagenet", steps_per_task=3)
    same = build_config("tiny", method="seq-ft", seed=0, out="elsewhere", cache_dir="/other/cache", **flags)
    # out/cache_dir are not part of the key; a field added to RunConfig after the record was written
    # (here train_projector) counts as its default
    record = {k: v for k, v in same.to_dict().items() if k != "train_projector"}
    _fake_record(out / "runs" / "a-seq-ft-s0.json", record)
    other_budget = build_config("tiny", method="multitask", seed=0, tasks="vqav2,imagenet", steps_per_task=4)
    _fake_record(out / "runs" / "b-multitask-s0.json", other_budget.to_dict())
    nested = build_config("tiny", method="multitask", seed=1, **flags)
    _fake_record(out / "runs" / "c-multitask-s1" / "c.json", nested.to_dict())  # inside a run directory: no record
    (out / "runs" / "broken.json").write_text("{not json")
    # interrupted runs: multitask seed 1 finished a task (resumed); seq-ft seed 1 finished none (run afresh)
    (out / "runs" / "c-multitask-s1" / "config.json").write_text(json.dumps(nested.to_dict()))
    (out / "runs" / "c-multitask-s1" / "task-00").mkdir()
    (out / "runs" / "d-seq-ft-s1").mkdir()
    (out / "runs" / "d-seq-ft-s1" / "config.json").write_text(
        json.dumps(build_config("tiny", method="seq-ft", seed=1, **flags).to_dict()))

    code = main(["sweep", "--methods", "seq-ft,multitask", "--seeds", "0,1", "--tasks", "vqav2,imagenet",
                 "--steps-per-task", "3", "--out", str(out), "--dry-run"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["skip  seq-ft seed 0  (record a-seq-ft-s0.json)", "run   seq-ft seed 1",
                     "run   multitask seed 0", "resume multitask seed 1  (run directory c-multitask-s1)",
                     "3 to run, 1 to skip"]
    assert sorted(p.name for p in (out / "runs").glob("*.json")) == ["a-seq-ft-s0.json", "b-multitask-s0.json",
                                                                     "broken.json"]  # nothing written


def test_config_key_ignores_key_order_and_json_types():
    assert config_key({"b": (1, 2), "a": {"y": 1, "x": None}}) == config_key({"a": {"x": None, "y": 1}, "b": [1, 2]})
    assert config_key({"seed": 0}) != config_key({"seed": 1})


def test_sweep_equals_standalone_runs_and_skips_on_rerun(session_cache, tmp_path):
    out = tmp_path / "results"
    budget = tiny(session_cache, out)
    planned = plan(["moe-llava", "seq-ft"], [0], "tiny", budget)
    assert [(p.method, p.seed, p.existing) for p in planned] == [("moe-llava", 0, None), ("seq-ft", 0, None)]
    written, board = run_sweep(planned, out, plots=False, progress=False)
    assert len(written) == 2 and board["records"] == 2
    swept = {r["method"]: r for r in map(read_record, written)}
    assert "moe-llava" in (out / "LEADERBOARD.md").read_text() and "seq-ft" in (out / "leaderboard.csv").read_text()

    # seq-ft ran after moe-llava had rebuilt the model's FFNs into experts; a fresh process must agree.
    alone_out = tmp_path / "alone"
    script = ("import sys; from bench.config import Stage0Spec, build_config; from bench.run.protocol import run; "
              f"print(run(build_config('tiny', method='seq-ft', seed=0, **{{**{_literal(budget)}, "
              f"'out': {str(alone_out)!r}, 'stage0': Stage0Spec(steps=8, num_records=160, batch_size=8)}})))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1); " + script], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    alone = read_record(Path(res.stdout.strip().splitlines()[-1]))
    for key in ("accuracy_matrix", "parameters", "metrics", "config"):
        assert alone[key] == swept["seq-ft"][key], key
    assert [t["loss_curve"] for t in alone["training"]] == [t["loss_curve"] for t in swept["seq-ft"]["training"]]

    # rerun with one more seed: the two finished runs are skipped, only the new ones would run
    again = plan(["moe-llava", "seq-ft"], [0, 1], "tiny", budget)
    assert {(p.method, p.seed): p.existing for p in again} == {
        ("moe-llava", 0): Path(written[0]), ("seq-ft", 0): Path(written[1]),
        ("moe-llava", 1): None, ("seq-ft", 1): None}
    assert describe_plan(again).splitlines()[-1] == "2 to run, 2 to skip"
    again[-1].resume = tmp_path / "interrupted"
    ran = []
    run_sweep(again, out, plots=False, progress=False,
              runner=lambda cfg, resume=None: ran.append((cfg.method, cfg.seed, resume)) or written[0])
    assert ran == [("moe-llava", 1, None), ("seq-ft", 1, tmp_path / "interrupted")]
    assert set(existing_records(out / "runs").values()) == set(map(Path, written))


def _literal(budget: dict) -> str:
    """The budget as a Python literal for the subprocess (stage0 is passed separately)."""
    return repr({k: v for k, v in budget.items() if k != "stage0"})
