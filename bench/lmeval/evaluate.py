"""Running lm-eval tasks on a ``bench.lmeval.model.CMBLM``: offline task discovery, one evaluation call and
flat metrics (tracking them along a run: ``bench.lmeval.track``).

Tasks come from the folder the project ships (``bench/lmeval/tasks``: the eight CoIN tasks, group
``coin``, and the text-only ``retention`` tasks) plus any ``include`` folders; lm-eval's built-in tasks
are indexed only when asked for (``builtin=True``), so nothing is ever looked up online.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from lm_eval.utils import make_table

from bench.run.rng import preserved_rng

TASKS_DIR = Path(__file__).parent / "tasks"


def task_manager(include: Sequence[str] = (), builtin: bool = False, metadata: dict[str, Any] | None = None):
    """An lm-eval TaskManager over the shipped task folder (+ ``include`` folders, + lm-eval's own
    tasks when ``builtin``)."""
    paths = [str(TASKS_DIR), *[str(p) for p in include]]
    return TaskManager(include_defaults=builtin, include_path=paths, metadata=metadata or None)


def evaluate(lm, tasks: Sequence[str], *, manager=None, limit: int | float | None = None,
             log_samples: bool = False, gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``lm`` with seeding left to the caller (no global reseed) and no
    bootstrap (stderr "N/A"); returns lm-eval's results dict."""
    with preserved_rng():
        return simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager or task_manager(), limit=limit,
                               log_samples=log_samples, gen_kwargs=gen_kwargs, bootstrap_iters=0,
                               random_seed=None, numpy_random_seed=None, torch_random_seed=None,
                               fewshot_random_seed=None)


def flat_metrics(results: dict[str, Any], name: str) -> dict[str, float]:
    """``{"exact_match": 0.41, ...}`` of one task or group (stderr and alias dropped; a filter other
    than ``none`` stays in the name, e.g. ``exact_match,strict``)."""
    out: dict[str, float] = {}
    for key, value in results["results"][name].items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else key] = round(float(value), 6)
    return out


def table(results: dict[str, Any]) -> str:
    """lm-eval's markdown results table (tasks, then groups)."""
    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text
