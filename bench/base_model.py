"""Stage 0: the shared dense starting point every method and seed begins from.

CoIN starts from a LLaVA that has seen only alignment pretraining, never the eight tasks (coin.md
Part B 1). The tiny analogue: build the tiny LLaVA from configs and train it densely on a
caption-style mix (``tasks.synthetic.captions``) that is not one of the eight tasks. The weights are
cached by a hash of everything that determines them (backbone config, tokenizer, stage-0 recipe,
data), in safetensors, so every later run reuses them. A local checkpoint (``--model``) is its own
stage 0 and is used as is.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bench.backbone import Backbone, build_tiny, describe, load_local, load_or_train_tokenizer, tiny_image_processor
from bench.config import RunConfig, stable_hash
from bench.data import encode_split, train_loader
from bench.trainer import train_steps

log = logging.getLogger(__name__)


def _pretrain_split(cfg: RunConfig):
    from tasks.synthetic.captions import pretrain_records

    return pretrain_records(cfg.stage0.num_records, cfg.stage0.data_seed, cfg.backbone.image_size,
                            cache_dir=cfg.data_spec().cache_dir)


def _tokenizer_tasks(cfg: RunConfig, task_list) -> list:
    """coin-mini: always all eight tasks, so one tokenizer and one stage 0 serve every task subset and
    order; real CoIN files: the tasks the run reads (others may be absent from the data root)."""
    import tasks

    return list(task_list) if cfg.data_root else tasks.suite("coin")


def _tokenizer_corpus(cfg: RunConfig, task_list):
    """The suite's own text, as the model will read it: every stage-0 caption and every task training
    record rendered through the conversation template. Training on the templated text matters: BPE
    then learns the merges the model really sees (" ASSISTANT:", " B", " Red"); trained on bare
    answers it splits " B" into a lone space plus "B", and the lone space is a token stage 0 never
    predicts, which no LoRA can cheaply teach it to predict later."""
    from bench.backbone import conversation_text

    def corpus():
        spec = cfg.data_spec()
        for split in [_pretrain_split(cfg)] + [task.load("train", spec) for task in task_list]:
            prompts, answers = split.texts()
            yield from (conversation_text(p, a) for p, a in zip(prompts, answers))

    return corpus


def load_base(cfg: RunConfig, task_list, accelerator) -> tuple[Backbone, dict]:
    """The stage-0 backbone (trained or loaded from cache) and a description for the run record."""
    if cfg.backbone.model_path:
        backbone = load_local(cfg.backbone)
        return backbone, {"cached": True, "seconds": 0.0, "source": "checkpoint"}
    cache = Path(cfg.cache_dir)
    task_list = _tokenizer_tasks(cfg, task_list)
    pretrain_source = _pretrain_split(cfg).source  # what stage 0 trains on, generator code included
    data_key = {"corpus": "templated-conversations-v2", "pretrain": pretrain_source, "source": cfg.data_spec().source, "data_root": cfg.data_root, "data_seed": cfg.data_seed,
                "mini_train": cfg.mini_train, "instructions": cfg.instructions, "tasks": [t.name for t in task_list],
                "stage0_data": [cfg.stage0.num_records, cfg.stage0.data_seed, cfg.backbone.image_size]}
    tokenizer, tok_path = load_or_train_tokenizer(cfg.backbone, _tokenizer_corpus(cfg, task_list), data_key, cache)
    tokenizer_hash = tok_path.name
    model, config = build_tiny(cfg.backbone, tokenizer, seed=0)
    desc = describe(cfg.backbone, config, tokenizer_hash)
    backbone = Backbone(model=model, tokenizer=tokenizer, image_processor=tiny_image_processor(cfg.backbone),
                        num_image_tokens=config.image_seq_length, description=desc)
    key = stable_hash({"backbone": desc["config_hash"], "stage0": cfg.stage0.__dict__, "data": pretrain_source,
                       "version": 1})
    path = cache / "stage0" / f"{key}.safetensors"
    info = {"key": key, "path": str(path), "recipe": dict(cfg.stage0.__dict__), "data": pretrain_source}
    if path.exists():
        model.load_state_dict(load_file(str(path)), strict=True)
        info.update(cached=True, seconds=0.0, **json.loads(path.with_suffix(".json").read_text()))
        return backbone, info
    start = time.perf_counter()
    model.to(accelerator.device)
    encoded = encode_split(backbone, _pretrain_split(cfg))
    loader = train_loader(backbone, encoded, cfg.stage0.batch_size, seed=cfg.stage0.data_seed)
    for p in model.parameters():
        p.requires_grad_(True)
    stats = train_steps(model, model.parameters(), loader, cfg.stage0.steps, accelerator=accelerator,
                        lr=cfg.stage0.lr, warmup_ratio=cfg.stage0.warmup_ratio, weight_decay=0.0,
                        desc="stage 0 (captions)")
    for p in model.parameters():
        p.requires_grad_(False)
    meta = {"train_seconds": stats.seconds, "final_loss": stats.final_loss, "steps": stats.steps}
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        path.with_suffix(".json").write_text(json.dumps(meta))
        tmp.replace(path)
    accelerator.wait_for_everyone()
    info.update(cached=False, seconds=time.perf_counter() - start, **meta)
    return backbone, info
