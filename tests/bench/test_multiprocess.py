"""Multi-process runs: ``accelerate launch --multi_gpu --num_processes 2`` on a CPU
machine (torchrun + gloo) trains data-parallel, evaluates sharded and writes exactly one record and one
set of checkpoints. Tolerance against the single-process run: every matrix entry within 15 points
(each rank draws its own batches, so the effective batch doubles and the data order differs; the
tiny tasks' accuracies are coarse). ~40 s on 2 cores; ``CMB_SKIP_MULTIPROCESS=1`` skips it where a
machine cannot open a local gloo port."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.io import checkpoint
from bench.run.protocol import run
from bench.io.records import decode_scores, per_sample_accuracy, read_record
from net import free_port  # tests/ is on sys.path through its conftest.py

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 15.0
START = """
import json, sys
from bench.config import RunConfig
from bench.run.protocol import run
run(RunConfig.from_dict(json.loads(sys.argv[1]), out=sys.argv[2], cache_dir=sys.argv[3]))
"""


@pytest.mark.skipif(bool(os.environ.get("CMB_SKIP_MULTIPROCESS")), reason="CMB_SKIP_MULTIPROCESS is set")
def test_two_processes_write_one_record_close_to_the_single_process_run(tiny_config, tmp_path):
    cfg = tiny_config(mixed_precision="no")
    single = read_record(run(cfg))  # also fills the stage-0 cache
    script = tmp_path / "start.py"
    script.write_text(START)
    out = tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                          str(script), json.dumps(cfg.to_dict()), str(out), cfg.cache_dir],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    records = list((out / "runs").glob("*.json"))
    assert len(records) == 1
    multi = read_record(records[0])
    assert multi["budget"]["processes"] == 2
    assert checkpoint.finished_tasks(out / "runs" / multi["run_id"]) == [0, 1]
    assert [sorted(r) for r in multi["scores"]] == [sorted(r) for r in single["scores"]]
    assert all(multi["scores"][i][n]["n"] == single["scores"][i][n]["n"] for i in range(3) for n in single["tasks"])
    # the gathered predictions are scored in the test split's order: one per-sample score per record,
    # whose mean is the matrix entry
    for row, scores in zip(multi["accuracy_matrix"], multi["scores"]):
        for name, accuracy in zip(multi["tasks"], row):
            assert len(decode_scores(scores[name]["per_sample"])) == len(decode_scores(
                single["scores"][0][name]["per_sample"]))
            assert per_sample_accuracy(scores[name]["per_sample"]) == pytest.approx(accuracy, abs=1e-4)
    for a, b in zip(multi["accuracy_matrix"], single["accuracy_matrix"]):
        assert all(abs(x - y) <= TOLERANCE for x, y in zip(a, b)), (multi["accuracy_matrix"], single["accuracy_matrix"])
