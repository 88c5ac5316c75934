"""Shared set-up of the `python -m bench perf ...` benchmarks: the tiny preset's backbone on the
coin-mini data, without ever training stage 0 as a side effect (stage-0 weights are loaded when the
cache holds them, else the randomly initialised tiny LLaVA is used and the output says so), plus
the timing helpers every benchmark uses (interleaved repeats, medians, load average warning)."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def tiny_backbone(cfg, task_list, *, stage0: bool = True):
    """(backbone, description of the weights). The tokenizer comes from (or goes to) the cache as in
    a run; stage-0 weights only when already cached (a benchmark never trains stage 0)."""
    from safetensors.torch import load_file

    from bench import base_model
    from bench.backbone import Backbone, build_tiny, describe, load_or_train_tokenizer, tiny_image_processor
    from bench.config import stable_hash

    cache = Path(cfg.cache_dir)
    tok_tasks = base_model._tokenizer_tasks(cfg, task_list)
    pretrain_source = base_model._pretrain_split(cfg).source
    data_key = {"corpus": "templated-conversations-v2", "pretrain": pretrain_source, "source": cfg.data_spec().source,
                "data_root": cfg.data_root, "data_seed": cfg.data_seed, "mini_train": cfg.mini_train,
                "instructions": cfg.instructions, "tasks": [t.name for t in tok_tasks],
                "stage0_data": [cfg.stage0.num_records, cfg.stage0.data_seed, cfg.backbone.image_size]}
    tokenizer, tok_path = load_or_train_tokenizer(cfg.backbone, base_model._tokenizer_corpus(cfg, tok_tasks),
                                                  data_key, cache)
    model, config = build_tiny(cfg.backbone, tokenizer, seed=0)
    desc = describe(cfg.backbone, config, tok_path.name)
    key = stable_hash({"backbone": desc["config_hash"], "stage0": cfg.stage0.__dict__, "data": pretrain_source,
                       "version": 1})
    path = cache / "stage0" / f"{key}.safetensors"
    weights = "random init (stage 0 not cached)"
    if stage0 and path.exists():
        model.load_state_dict(load_file(str(path)), strict=True)
        weights = f"stage 0 {key}"
    for p in model.parameters():
        p.requires_grad_(False)
    bb = Backbone(model=model, tokenizer=tokenizer, image_processor=tiny_image_processor(cfg.backbone),
                  num_image_tokens=config.image_seq_length, description=desc)
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
