"""Per-task checkpoints (bench/io/checkpoint.py): a finished run keeps one per task, ``load_after_task``
rebuilds the model after task k and re-evaluates to the recorded row, damaged files give a clear error."""
from __future__ import annotations

import json

import pytest

from bench.io import checkpoint

from bench.run import restore
from bench.run.protocol import run
from bench.io.records import read_record


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, session_cache):
    """A two-task moe-llava run (stochastic routing at evaluation: the RNG must be restored too)."""
    from bench.config import Stage0Spec, build_config

    out = tmp_path_factory.mktemp("ckpt-run")
    cfg = build_config("tiny", method="moe-llava", tasks="vqav2,imagenet", steps_per_task=4, batch_size=8,
                       mini_train=32, mini_test=12, eval_batch_size=16, max_new_tokens=6, out=str(out / "results"),
                       cache_dir=session_cache, stage0=Stage0Spec(steps=8, num_records=160, batch_size=8))
    path = run(cfg)
    record = read_record(path)
    return cfg, record, path.parent / record["run_id"]


def test_every_task_leaves_a_checkpoint_next_to_the_record(finished_run):
    cfg, record, run_dir = finished_run
    assert record["run_dir"] == f"runs/{record['run_id']}" and run_dir.is_dir()
    assert checkpoint.finished_tasks(run_dir) == [0, 1]
    assert json.loads((run_dir / "config.json").read_text()) == cfg.to_dict()
    state = json.loads((run_dir / "task-01" / "state.json").read_text())
    assert [[round(r[n]["accuracy"], 4) for n in record["tasks"]] for r in state["progress"]["rows"]] == \
        record["accuracy_matrix"]
    names = checkpoint.load_task_checkpoint(run_dir, 1).tensors
    # the method's tensors only: experts and routers, not the frozen base model
    assert names and all(".mlp.experts." in k or ".mlp.routers." in k for k in names)
    assert not any("vision_tower" in k or "embed_tokens" in k for k in names)


@pytest.mark.parametrize("k", [0, 1])
def test_load_after_task_reproduces_the_recorded_row(finished_run, k):
    cfg, record, run_dir = finished_run
    loaded = restore.load_after_task(run_dir, k, cache_dir=cfg.cache_dir)
    assert loaded.task_names == record["tasks"] and loaded.cfg.to_dict() == cfg.to_dict()
    row = restore.evaluate_loaded(loaded)
    assert [round(row[n]["accuracy"], 4) for n in loaded.task_names] == record["accuracy_matrix"][k + 1]
    assert [row[n]["examples"] for n in loaded.task_names] == \
        [record["scores"][k + 1][n]["examples"] for n in loaded.task_names]


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "method.safetensors").write_bytes((d / "method.safetensors").read_bytes()[:100]), "truncated"),
    (lambda d: (d / "state.json").write_text("{not json"), "corrupted"),
    (lambda d: (d / "method.safetensors").unlink(), "incomplete"),
])
def test_damaged_checkpoint_is_a_clear_error(finished_run, tmp_path, damage, needle):
    import shutil

    _, _, run_dir = finished_run
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    damage(copy / "task-01")
    with pytest.raises(checkpoint.CheckpointError, match=needle):
        checkpoint.load_task_checkpoint(copy, 1)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint after task 5"):
        checkpoint.load_task_checkpoint(copy, 5)
