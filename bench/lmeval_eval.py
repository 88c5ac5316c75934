"""Running lm-eval tasks on a ``bench.lmeval.CMBLM``: offline task discovery, one evaluation call, flat
metrics, and tracking lm-eval tasks after every row of a continual run (``--track lmeval:TASK``).

Tasks come from the folder the project ships (``bench/lmeval_tasks``: the eight CoIN tasks, group
``coin``, and the text-only ``retention`` tasks) plus any ``include`` folders; lm-eval's built-in tasks
are indexed only when asked for (``builtin=True``), so nothing is ever looked up online.
"""
from __future__ import annotations

import dataclasses
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

TASKS_DIR = Path(__file__).parent / "lmeval_tasks"
TRACK_PREFIX = "lmeval:"


def task_manager(include: Sequence[str] = (), builtin: bool = False, metadata: dict[str, Any] | None = None):
    """An lm-eval TaskManager over the shipped task folder (+ ``include`` folders, + lm-eval's own
    tasks when ``builtin``)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *[str(p) for p in include]]
    return TaskManager(include_defaults=builtin, include_path=paths, metadata=metadata or None)


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Leave python/numpy/torch generators as they were (a tracked evaluation must not change training)."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def evaluate(lm, tasks: Sequence[str], *, manager=None, limit: int | float | None = None,
             log_samples: bool = False, gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``lm`` with seeding left to the caller (no global reseed) and no
    bootstrap (stderr "N/A"); returns lm-eval's results dict."""
    from lm_eval import simple_evaluate

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
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


class Tracker:
    """lm-eval tasks evaluated after row 0 and after every task of a run (``RunConfig.track``).

    ``add_row`` is called by the protocol right after a row of the accuracy matrix; ``record()`` gives
    ``{"lmeval:TASK": [row0 metrics, row1 metrics, ...]}`` for the run record. Each entry is the task's
    flat metrics, plus ``"method"`` when the method reports on that evaluation (e.g. CMoE's routing)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.names = [t[len(TRACK_PREFIX):] for t in cfg.track]
        self.rows: dict[str, list[dict[str, Any]]] = {t: [] for t in cfg.track}
        self._manager = None

    def __bool__(self) -> bool:
        return bool(self.names)

    def add_row(self, model, method, backbone, accelerator) -> None:
        if not self.names:
            return
        from bench.lmeval import CMBLM

        if self._manager is None:  # the run's own data spec for CoIN tasks; user tasks ignore it
            self._manager = task_manager(self.cfg.lmeval_include, metadata=dataclasses.asdict(self.cfg.data_spec()))
        lm = CMBLM(backbone=backbone, model=model, method=method, cfg=self.cfg, accelerator=accelerator)
        quiet = logging.getLogger("lm_eval")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            for name in self.names:
                results = evaluate(lm, [name], manager=self._manager)
                row: dict[str, Any] = flat_metrics(results, name)
                report = method.evaluation_report(TRACK_PREFIX + name)
                if report:
                    row["method"] = report
                self.rows[TRACK_PREFIX + name].append(row)
        finally:
            quiet.setLevel(level)
        model.eval()

    def record(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self.rows)
