"""Sharded training on CPU: the shipped FSDP config (``bench/configs/fsdp-8gpu.yaml``, FSDP2 through
accelerate) on 2 processes with gloo trains cmoe (a probe phase then the task phase, new experts per task,
frozen old experts, per-task routers, the PTL locator), is killed with SIGKILL during task 1, resumes from
its checkpoint under FSDP and writes one record. Tolerance against the single-process run: every matrix
entry within 15 points (each rank draws its own batches, so the effective batch doubles, as in the
data-parallel test), and the trained LoRA factors after task 0 closer to the single-process run's than to
their zero start (relative L2 < 0.8; measured 0.42; an FSDP run whose optimizer missed the shards would
be at 1.0). The FSDP checkpoint also loads in one process (full tensors) and reproduces its recorded row.
Also the refusals (FSDP1, a method that changes parameters outside the optimizer).
``CMB_SKIP_MULTIPROCESS=1`` skips the 2-process part."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.io import checkpoint

from bench.run import restore
from bench.io.records import read_record
from net import free_port  # tests/ is on sys.path through its conftest.py

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "bench" / "configs" / "fsdp-8gpu.yaml"
TOLERANCE = 15.0
# Rank 0 SIGKILLs itself right after task 1's first training phase (torchrun then ends rank 1); every
# sharded phase checks that the model really was sharded (DTensor parameters) before it is restored.
START = """
import json, os, signal, sys
import torch
from torch.distributed.tensor import DTensor
from bench.train import sharding
from bench.config import RunConfig
from bench.run.protocol import Hooks, run

restore = sharding.ShardedPhase.restore
def checked(self):
    assert any(isinstance(p, DTensor) for p in self.model.parameters()), "the phase ran unsharded"
    print("SHARDED_PHASE", flush=True)
    restore(self)
sharding.ShardedPhase.restore = checked

def after_train(t, method, model, phase):
    if sys.argv[4] == "kill" and t == 1 and int(os.environ.get("RANK", "0")) == 0:
        os.kill(os.getpid(), signal.SIGKILL)

cfg = RunConfig.from_dict(json.loads(sys.argv[1]), out=sys.argv[2], cache_dir=sys.argv[3])
run(cfg, Hooks(after_train=after_train), resume=sys.argv[5] if len(sys.argv) > 5 else None)
"""


def _launch(script: Path, cfg, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["accelerate", "launch", "--config_file", str(CONFIG), "--num_processes", "2",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
                           str(script), json.dumps(cfg.to_dict()), str(out), cfg.cache_dir, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _lora_b(run_dir: Path, k: int) -> dict[str, torch.Tensor]:
    tensors = checkpoint.load_task_checkpoint(run_dir, k).tensors
    return {n: t.float() for n, t in tensors.items() if "lora_B" in n}


@pytest.mark.skipif(bool(os.environ.get("CMB_SKIP_MULTIPROCESS")), reason="CMB_SKIP_MULTIPROCESS is set")
def test_fsdp_two_processes_kill_resume_match_one_process(tiny_config, tmp_path):
    from bench.run.protocol import run

    cfg = tiny_config(method="cmoe", mixed_precision="no")
    single = read_record(run(cfg))  # also fills the stage-0 cache
    single_dir = tmp_path / "results" / "runs" / single["run_id"]
    script = tmp_path / "start.py"
    script.write_text(START)
    out = tmp_path / "fsdp"

    killed = _launch(script, cfg, out, "kill")
    assert killed.returncode != 0 and not list((out / "runs").glob("*.json")), killed.stderr[-3000:]
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert checkpoint.finished_tasks(run_dir) == [0]
    assert killed.stdout.count("SHARDED_PHASE") >= 2  # task 0 and task 1's probe (rank 0's lines)

    resumed = _launch(script, cfg, out, "keep", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("SHARDED_PHASE") >= 1
    (record,) = [read_record(p) for p in (out / "runs").glob("*.json")]
    assert record["resumed_after_task"] == 0 and checkpoint.finished_tasks(run_dir) == [0, 1]
    assert record["budget"]["processes"] == 2 and record["budget"]["sharding"] == "fsdp2"
    assert [p["total"] for p in record["parameters"]] == [p["total"] for p in single["parameters"]]
    for a, b in zip(record["accuracy_matrix"], single["accuracy_matrix"]):
        assert all(abs(x - y) <= TOLERANCE for x, y in zip(a, b)), (record["accuracy_matrix"], single["accuracy_matrix"])

    sharded, alone = _lora_b(run_dir, 0), _lora_b(single_dir, 0)
    assert sharded.keys() == alone.keys() and alone
    distance = sum(((sharded[n] - alone[n]) ** 2).sum() for n in alone).sqrt()
    size = sum((alone[n] ** 2).sum() for n in alone).sqrt()
    assert size > 0 and distance / size < 0.8, float(distance / size)

    # the sharded run's checkpoint holds full tensors: one process rebuilds the model after task 1
    loaded = restore.load_after_task(run_dir, 1, cache_dir=cfg.cache_dir)
    row = restore.evaluate_loaded(loaded)
    recorded = loaded.state["progress"]["rows"][loaded.task_index + 1]   # the row the run recorded
    assert {n: row[n]["accuracy"] for n in loaded.task_names} == {n: recorded[n]["accuracy"] for n in loaded.task_names}


def test_fsdp_refusals(tiny_config, monkeypatch):
    """FSDP1 and a method updating parameters outside the optimizer are refused before any work."""
    from accelerate.utils import DistributedType

    import methods
    from bench.train import sharding
    from bench.config import ConfigError

    class Plugin:
        fsdp_version, cpu_ram_efficient_loading, activation_checkpointing = 1, False, False

    class State:
        distributed_type, fsdp_plugin = DistributedType.FSDP, Plugin()

    class Acc:
        state = State()
        distributed_type = DistributedType.FSDP

    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        sharding.check_accelerator(Acc())
    Plugin.fsdp_version = 2
    sharding.check_accelerator(Acc())
    with pytest.raises(ConfigError, match="evomoe .*outside the optimizer.*ddp-8gpu.yaml"):
        sharding.check_method(methods.build("evomoe", {}), Acc())
    sharding.check_method(methods.build("cmoe", {}), Acc())
    assert sharding.describe(Acc()) == "fsdp2"
