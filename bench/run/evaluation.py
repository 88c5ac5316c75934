"""Evaluation: greedy answers for every test record of every task, scored by each task's official rule.

Evaluation is task-agnostic: the model sees only the prompt and the image (oracle ablations, which the
record marks, are told the task). With several processes each rank decodes its own shard.
"""
from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import gather_object

from bench.io import records
from bench.config import RunConfig
from bench.train.data import EncodedSplit, encode_split, eval_loader
from bench.decode.generate import generate, method_hooks


def evaluate_all(model, method, backbone, test_sets: dict[str, tuple[Any, EncodedSplit]], cfg: RunConfig,
                 accelerator) -> dict[str, dict[str, Any]]:
    """Greedy answers for every test record of every task, scored by the task's official rule.

    With several processes each rank decodes its own shard of every test set and the predictions are
    gathered on every rank before scoring, so all ranks score the same full set. Each task's entry holds
    the accuracy, the denominator ``n``, three example answers and every test record's score in the
    test split's order (``per_sample``, packed by ``bench.io.records.encode_scores``)."""
    out = {}
    for index, (name, (task, encoded)) in enumerate(test_sets.items()):
        loader = eval_loader(backbone, encoded, cfg.eval_batch_size, indices=_shard(len(encoded), accelerator))
        if method.oracle:  # upper-bound ablations only; the record marks them (oracle_task_id)
            method.eval_task = index
        ids = generate(model, loader, eos_id=backbone.eos_id, max_new_tokens=cfg.max_new_tokens,
                       accelerator=accelerator, **method_hooks(method))
        if accelerator.num_processes > 1:
            ids = {i: seq for part in gather_object([ids]) for i, seq in part.items()}
        if method.oracle:
            method.eval_task = None
        predictions = [backbone.decode(ids[i]) for i in range(len(encoded))]
        result = task.score(predictions, encoded.split, mode=cfg.scoring_mode)
        out[name] = {"accuracy": result.accuracy, "n": result.n, "examples": predictions[:3],
                     "per_sample": records.encode_scores(result.per_sample, result.counted)}
        report = method.evaluation_report(name)
        if report:
            out[name]["method"] = report
    return out


def encode_test_sets(cfg: RunConfig, task_list: list, backbone) -> dict[str, tuple[Any, EncodedSplit]]:
    """The test split of every task, encoded for ``evaluate_all`` (the same data a run evaluates on)."""
    spec = cfg.data_spec()
    return {t.name: (t, encode_split(backbone, t.load("test", spec))) for t in task_list}


def warm_eval_batches(test_sets: dict[str, tuple[Any, EncodedSplit]], backbone, cfg: RunConfig, accelerator) -> None:
    """Collate every test split's evaluation batches now, without touching the global RNG.

    A DataLoader draws its base seed from torch's global RNG each time it is iterated, and the eval
    batches are collated once (at row 0) and replayed afterwards. A process that restores a run's RNG
    state mid-stream (``--resume``, ``bench.run.restore.evaluate_loaded``) must not draw again when it first
    evaluates, or every later draw (router noise, new experts) would differ from the uninterrupted
    run's; warming the cache here, inside a forked RNG, makes its evaluations draw-free too."""
    with torch.random.fork_rng(devices=[]):
        for _, encoded in test_sets.values():
            for _ in eval_loader(backbone, encoded, cfg.eval_batch_size, indices=_shard(len(encoded), accelerator)):
                pass


def _shard(n: int, accelerator) -> list[int] | None:
    """This rank's record indices of an n-record test set (None = all, single process)."""
    if accelerator.num_processes == 1:
        return None
    with accelerator.split_between_processes(list(range(n))) as part:
        return list(part)
