"""Tracking lm-eval tasks along a continual run (``--track lmeval:TASK``): the trackers the command line
hands to ``bench.run.protocol.run``, each scoring its tasks on the model after row 0 and after every
stage (the record's ``tracked``)."""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

from bench.config import RunConfig
from bench.lmeval.evaluate import evaluate, flat_metrics, task_manager
from bench.lmeval.model import CMBLM
from bench.run.tracking import Tracker

TRACK_PREFIX = "lmeval:"


def trackers(cfg: RunConfig) -> list[Tracker]:
    """The trackers of ``cfg.track`` (none when it is empty): one that scores every tracked task."""
    if not cfg.track:
        return []
    return [Tracker(names=tuple(cfg.track), evaluate=functools.partial(track_row, cfg))]


@functools.lru_cache(maxsize=4)
def _tracking_manager(include: tuple[str, ...], metadata_json: str):
    return task_manager(include, metadata=json.loads(metadata_json))


def track_row(cfg: RunConfig, model, method, backbone, accelerator) -> dict[str, dict[str, Any]]:
    """The tracked lm-eval tasks of ``cfg.track`` (``lmeval:TASK``) on the model as it is now:
    ``{"lmeval:TASK": {metric: value, ..., "method": report}}`` (``method`` only when the method reports
    on that evaluation, e.g. CMoE's routing). The run calls it (as the tracker of ``trackers``) after
    every row of the accuracy matrix; generators are left untouched, so tracking never changes the
    run's own results. CoIN tasks read the run's own data spec; tasks from ``cfg.lmeval_include``
    folders work the same way."""
    if not cfg.track:
        return {}
    manager = _tracking_manager(tuple(cfg.lmeval_include),
                                json.dumps({**dataclasses.asdict(cfg.data_spec()), "cache_dir": cfg.cache_dir},
                                           sort_keys=True))
    lm = CMBLM(backbone=backbone, model=model, method=method, cfg=cfg, accelerator=accelerator)
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    out: dict[str, dict[str, Any]] = {}
    try:
        for item in cfg.track:
            name = item[len(TRACK_PREFIX):]
            row: dict[str, Any] = flat_metrics(evaluate(lm, [name], manager=manager, limit=cfg.track_limit), name)
            report = method.evaluation_report(item)
            if report:
                row["method"] = report
            out[item] = row
    finally:
        quiet.setLevel(level)
    return out
