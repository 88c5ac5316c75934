"""lm-eval documents and metrics for the eight CoIN tasks, from the project's own task adapters.

The task configs in ``bench/lmeval/tasks/coin/`` call these functions through ``!function`` hooks:

- ``load_coin(task=..., **metadata)`` (``custom_dataset``): the records of ``tasks.get(task).load("test",
  spec)``, i.e. exactly the test split the harness evaluates. The data spec is, by precedence:
  metadata keys named like ``tasks.DataSpec`` fields (``data_root``, ``instructions``, ``limit_test``,
  ``data_seed``, ``mini_test``, ``image_size``; ``cache_dir`` = the harness cache root) > the ``CMB_DATA_ROOT`` /
  ``CMB_INSTRUCTIONS`` environment variables > the config of ``run`` (lm-eval passes the model args
  ``run=RUN_DIR`` on as metadata, so a run is scored on its own test split) > coin-mini defaults.
- ``process_results`` / ``aggregate_official`` / ``aggregate_clean``: each document contributes
  ``(task, prediction, reference)``; the aggregation calls ``Task.score`` once on the whole list, so
  corpus-level rules (GQA's balanced subset, ScienceQA's denominators) hold. ``accuracy`` is the
  percentage the harness records (official scoring), ``accuracy_clean`` the ``--mode clean`` one.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

from bench.io.checkpoint import read_run_config
from bench.config import default_cache_dir
from tasks import DataSpec
import tasks

SPEC_FIELDS = ("data_root", "instructions", "limit_train", "limit_test", "data_seed", "mini_train", "mini_test",
               "image_size", "cache_dir")
_INT_FIELDS = {"limit_train", "limit_test", "data_seed", "mini_train", "mini_test", "image_size"}


def data_spec(run: str | None = None, **metadata: Any):
    """The ``tasks.DataSpec`` a CoIN task config reads (see the module docstring for the precedence).
    ``cache_dir`` is the harness's cache root (as ``RunConfig.cache_dir`` / ``CMB_CACHE``; coin-mini
    lives in its ``coin-mini/`` folder), so the same model arg serves the model and the tasks."""
    cache_root = metadata.get("cache_dir") or None
    values: dict[str, Any] = {"cache_dir": str(Path(cache_root or default_cache_dir()) / "coin-mini")}
    if run:
        values.update(dataclasses.asdict(read_run_config(run, cache_root).data_spec()))
    if os.environ.get("CMB_DATA_ROOT"):
        values["data_root"] = os.environ["CMB_DATA_ROOT"]
    if os.environ.get("CMB_INSTRUCTIONS"):
        values["instructions"] = os.environ["CMB_INSTRUCTIONS"]
    for key in SPEC_FIELDS:
        if key != "cache_dir" and metadata.get(key) not in (None, ""):
            values[key] = int(metadata[key]) if key in _INT_FIELDS else metadata[key]
    return DataSpec(**values)


def load_coin(task: str, run: str | None = None, **metadata: Any) -> dict[str, Any]:
    """``custom_dataset`` hook: ``{"test": datasets.Dataset}`` of one CoIN task's test records with the
    columns question_id, prompt, answer, image, refs (JSON) and task."""
    split = tasks.get(task).load("test", data_spec(run, **metadata))
    dataset = split.dataset
    return {"test": dataset.add_column("task", [task] * len(dataset))}


def doc_to_image(doc: dict[str, Any]) -> list:
    """The record's image as lm-eval's ``visual`` list (empty for text-only records)."""
    image = doc.get("image")
    if image is None:
        return []
    return [image.convert("RGB") if image.mode != "RGB" else image]


def reference(doc: dict[str, Any]) -> dict[str, Any]:
    """What ``TaskSplit.references`` gives the scorer for this record."""
    return {"question_id": doc["question_id"], "answer": doc["answer"], **json.loads(doc["refs"] or "{}")}


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, tuple]:
    item = (doc["task"], results[0], reference(doc))
    return {"accuracy": item, "accuracy_clean": item}


def _aggregate(items: Sequence[tuple], mode: str) -> float:
    names = {name for name, _, _ in items}
    if len(names) != 1:
        raise ValueError(f"one CoIN task per aggregation, got {sorted(names)}")
    task = tasks.get(names.pop())
    return task.score([p for _, p, _ in items], [r for _, _, r in items], mode=mode).accuracy


def aggregate_official(items: Sequence[tuple]) -> float:
    return _aggregate(items, "official")


def aggregate_clean(items: Sequence[tuple]) -> float:
    return _aggregate(items, "clean")
