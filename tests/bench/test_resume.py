"""Resume: a real run killed with SIGKILL during task 3 and resumed with
``python -m bench run --resume RUN_DIR`` ends with exactly the record of an uninterrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.io import checkpoint
from bench.__main__ import main
from bench.run.protocol import run
from bench.io.records import read_record

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
START = """
import json, sys
from bench.config import RunConfig
from bench.run.protocol import run
run(RunConfig.from_dict(json.loads(sys.argv[1]), out=sys.argv[2], cache_dir=sys.argv[3]))
"""


def _env(cache: str) -> dict[str, str]:
    return {**os.environ, "CMB_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _kill_after_task(cfg, out: Path, k: int) -> Path:
    """Start the run in a subprocess, SIGKILL it as soon as task k's checkpoint exists."""
    proc = subprocess.Popen([sys.executable, "-c", START, json.dumps(cfg.to_dict()), str(out), cfg.cache_dir],
                            cwd=ROOT, env=_env(cfg.cache_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = list((out / "runs").glob(f"*/task-{k:02d}"))
            if dirs:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return dirs[0].parent
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError(f"the run never wrote task {k}'s checkpoint: {proc.stderr.read().decode()[-2000:]}")


def test_sigkill_during_task_3_then_resume_equals_uninterrupted_run(tiny_config, tmp_path, capsys):
    cfg = tiny_config(method="naive-expansion", tasks="vqav2,imagenet,gqa,vizwiz", steps_per_task=6,
                      mini_train=32, mini_test=8)
    reference = read_record(run(cfg))  # also fills the stage-0 cache the subprocesses reuse

    out = tmp_path / "killed"
    run_dir = _kill_after_task(cfg, out, 1)
    assert not list((out / "runs").glob("*.json")), "the run finished before it could be killed"
    assert checkpoint.finished_tasks(run_dir)[-1] in (1, 2)  # killed during task 3 (index 2), at the latest

    # a flag that contradicts the run's config is a user error, and nothing is written
    capsys.readouterr()
    assert main(["run", "--resume", str(run_dir), "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--seed=5" in err and "(the run has 0)" in err

    res = subprocess.run([sys.executable, "-m", "bench", "run", "--resume", str(run_dir), "--steps-per-task", "6"],
                         cwd=ROOT, env=_env(cfg.cache_dir), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = read_record(out / "runs" / f"{run_dir.name}.json")
    assert resumed["resumed_after_task"] in (1, 2) and resumed["run_id"] == run_dir.name
    assert resumed["accuracy_matrix"] == reference["accuracy_matrix"]
    assert resumed["parameters"] == reference["parameters"]
    assert [t["loss_curve"] for t in resumed["training"]] == [t["loss_curve"] for t in reference["training"]]
    assert resumed["scores"] == reference["scores"]
    assert checkpoint.finished_tasks(run_dir) == [0, 1, 2, 3]

    # a finished run cannot be resumed again
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "already finished" in capsys.readouterr().err
