"""Restoring a run: the model, method and generators of a finished or interrupted run as they were after
task k, from its run directory (``bench.io.checkpoint`` reads and writes the files; this module rebuilds
the run from them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from bench.model.base_model import load_base
from bench.io.checkpoint import (CheckpointError, base_identity, check_base, finished_tasks, load_task_checkpoint,
                              read_run_config, restore_method)
from bench.config import RunConfig
from bench.run.evaluation import encode_test_sets, evaluate_all, warm_eval_batches
from bench.run.rng import set_rng_state
from bench.run.setup import attach_method, make_accelerator, ordered_tasks


@dataclass
class LoadedRun:
    """The model of a run as it was after stage ``task_index`` (0-based), ready for evaluation."""

    cfg: RunConfig
    backbone: Any                 # bench.model.backbone.Backbone (its .model is ``model``)
    model: torch.nn.Module
    method: Any                   # the restored ContinualMethod, attached to ``model``
    task_names: list[str]         # the run's task order (matrix columns)
    tasks: list[Any]              # the tasks.Task objects, same order
    task_index: int
    accelerator: Any
    state: dict[str, Any] = field(repr=False, default_factory=dict)  # the checkpoint's state.json


def evaluate_loaded(loaded: LoadedRun) -> dict[str, dict[str, Any]]:
    """Evaluate the loaded model on every task's test split exactly as the run did (one row)."""
    test_sets = encode_test_sets(loaded.cfg, loaded.tasks, loaded.backbone)
    warm_eval_batches(test_sets, loaded.backbone, loaded.cfg, loaded.accelerator)  # as after row 0
    return evaluate_all(loaded.model, loaded.method, loaded.backbone, test_sets, loaded.cfg,
                                 loaded.accelerator)


def load_after_task(run_dir: str | Path, k: int | None = None, *, accelerator=None,
                    cache_dir: str | None = None) -> LoadedRun:
    """Rebuild the run's stage-0 base model from its config.json (the stage-0 cache is reused),
    attach the method and restore its state after stage ``k`` (default: the last finished one).

    The RNG is left as it was when the run evaluated stage ``k``, so evaluating every task with
    ``bench.run.evaluation.evaluate_all`` reproduces the recorded row (stochastic routing included)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, cache_dir)
    done = finished_tasks(run_dir)
    if k is None:
        if not done:
            raise CheckpointError(f"{run_dir} has no finished task yet.")
        k = done[-1]
    ckpt = load_task_checkpoint(run_dir, k)
    task_list = ordered_tasks(cfg)
    accelerator = accelerator or make_accelerator(cfg)
    set_seed(cfg.seed)
    backbone, stage0 = load_base(cfg, task_list, accelerator)
    check_base(ckpt, base_identity(backbone, stage0))
    model = backbone.model.to(accelerator.device)
    method, _ = attach_method(cfg, backbone, model, task_list, accelerator)
    restore_method(method, ckpt)
    model.eval()
    set_rng_state(ckpt.state["rng_before_eval"])
    return LoadedRun(cfg=cfg, backbone=backbone, model=model, method=method, task_names=[t.name for t in task_list],
                     tasks=task_list, task_index=k, accelerator=accelerator, state=ckpt.state)
