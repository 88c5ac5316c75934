"""Shared set-up of the `python -m bench perf ...` benchmarks: the tiny preset's backbone on the
coin-mini data, without ever training stage 0 as a side effect (stage-0 weights are loaded when the
cache or the shipped base holds them, else the randomly initialised tiny LLaVA is used and the output
says so), plus the timing helpers every benchmark uses (interleaved repeats, medians, load average warning)."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch

from bench.model import base_model


def tiny_backbone(cfg, task_list, *, stage0: bool = True):
    """(backbone, description of the weights). The tokenizer comes from the cache or the shipped base
    (or is trained and cached) as in a run; stage-0 weights only when cached or shipped (a benchmark
    never trains stage 0)."""
    plan = base_model.ensure_tokenizer(cfg, task_list, base_model.plan_base(cfg, task_list))
    bb = base_model.tiny_backbone(cfg, plan)
    weights = "random init (stage 0 neither cached nor shipped)"
    if stage0 and plan.source in ("cached", "shipped"):
        base_model.load_weights(bb.model, plan)
        weights = f"stage 0 {plan.key} ({plan.source})"
    for p in bb.model.parameters():
        p.requires_grad_(False)
    return bb, weights


def interleaved(variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every variant once per round, ``warmup + repeats`` rounds; each call returns its own
    seconds. Interleaving spreads other processes' load over all variants."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + repeats):
        for name, fn in variants.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def header(what: str) -> str:
    load = os.getloadavg()[0]
    line = (f"# {what}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} CPUs, load average {load:.1f}")
    if load > 1.0:
        line += ("\n# note: other processes share this machine (load average above 1); absolute times are noisy, "
                 "the ratios are measured side by side (interleaved rounds, medians)")
    return line


def clock() -> float:
    return time.perf_counter()
