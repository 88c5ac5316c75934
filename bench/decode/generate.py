"""Batched greedy decoding with a KV cache, the evaluator every method shares.

``generate`` decodes a loader's prompt batches greedily, stops a sample at its end-of-answer token and
returns the generated token ids per record index; ``vision_fingerprint`` decides when a batch's image
features may be reused on a later evaluation row.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from bench.decode.frozen import modules_fingerprint
from bench.decode.kv_cache import KVRooms
from bench.model.lora import merged_for_eval


def vision_fingerprint(model: nn.Module, accelerator) -> tuple | None:
    """Everything the image features of a LLaVA depend on besides the pixels, or None when they
    cannot be proven unchanged (then they are never reused): the identity, class and mode of every
    module of the vision tower and the projector, the identity, storage, version counter (bumped by
    every in-place write: optimiser steps, ``copy_``, ``load_state_dict``), dtype and shape of every
    parameter and buffer, which must all be frozen (``requires_grad`` False: with --train-projector
    nothing is reused), the feature-selection config, precision and thread count. Forward hooks or
    patched ``forward`` methods anywhere on that path also mean None."""
    inner = getattr(model, "model", None)
    tower = getattr(inner, "vision_tower", None)
    projector = getattr(inner, "multi_modal_projector", None)
    if tower is None or projector is None or "mm_encoder_outputs" not in inspect.signature(type(model).forward).parameters:
        return None
    for m in (model, inner):
        if "forward" in m.__dict__ or "get_image_features" in m.__dict__:
            return None
    modules = modules_fingerprint((("tower", tower), ("projector", projector)))
    if modules is None:
        return None
    cfg = model.config
    return (type(model), id(inner), cfg.vision_feature_layer, cfg.vision_feature_select_strategy,
            accelerator.mixed_precision, str(accelerator.device), torch.get_num_threads(), *modules)


def _cache_keyword(model: nn.Module) -> str:
    """transformers 5.24 renamed the KV-cache argument ``past_key_values`` to ``cache`` (the old name
    warns, and goes in 5.40); pass whichever this model's forward declares."""
    inner = getattr(model, "module", model)  # a DDP wrapper's forward takes **kwargs
    return "cache" if "cache" in inspect.signature(type(inner).forward).parameters else "past_key_values"


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _prefill_image_features(out) -> torch.Tensor | None:
    """The projected image features a LLaVA prefill scattered into the prompt, as one tensor that
    ``mm_encoder_outputs`` accepts back (wrapped in a one-element list: the model ``torch.cat``s it).
    transformers moved them from ``image_hidden_states`` (one tensor) to
    ``image_outputs.pooler_output`` (one tensor per image since 5.24); both shapes are accepted."""
    image_outputs = getattr(out, "image_outputs", None)
    pooled = image_outputs.pooler_output if image_outputs is not None else getattr(out, "image_hidden_states", None)
    if isinstance(pooled, (list, tuple)):
        pooled = torch.cat(list(pooled), dim=0) if pooled else None
    return pooled


def _image_rows(input_ids: torch.Tensor, image_token_id: int | None) -> list[int] | None:
    """Cumulative image count before each row ([B + 1]): a batch's ``pixel_values`` hold one image per
    row that has image tokens, in row order, so rows [s, e) own images [starts[s], starts[e])."""
    if image_token_id is None:
        return None
    has = (input_ids == image_token_id).any(1).long()
    return [0, *has.cumsum(0).tolist()]


def method_hooks(method) -> dict[str, Any]:
    """What ``generate`` needs from a ``ContinualMethod``: its prompt hook, its row selection and
    whether its rows may be split (pass as ``**method_hooks(method)``)."""
    return {"before_forward": method.before_forward, "select_rows": method.select_rows,
            "split_rows": method.rows_independent_at_eval}


PREFILL_CHUNK = 32  # prompts per prefill forward; see generate
COMPACT_FRACTION = 0.25  # drop finished rows from the decoding batch once they are this share of it


@torch.no_grad()
def generate(model: nn.Module, loader, *, eos_id: int, max_new_tokens: int, accelerator,
             before_forward: Callable[[dict, str], None] = lambda b, p: None,
             select_rows: Callable[[torch.Tensor | None], None] = lambda rows: None,
             split_rows: bool = True, prefill_chunk: int = PREFILL_CHUNK) -> dict[int, list[int]]:
    """Batched greedy decoding with a KV cache. Returns generated token ids (without eos) per record
    index. Prompts are left-padded, so positions come from the attention mask, and every sample
    appends its next token in the same column; the batch stops when all samples are done.

    Four things make it fast without changing what a sample computes (each row's attention and
    matmuls see only that row: the predictions are checked against ``model.generate`` one record at a
    time by ``python -m bench perf eval``):

    * the prompt batch is prefilled ``prefill_chunk`` prompts at a time into one shared KV buffer
      (``bench.decode.kv_cache.KVRooms``): a chunk's activations stay in cache between the matmuls and the
      elementwise steps (RMSNorm, rotary, SiLU), the whole-batch prefill streams them from memory;
    * rows whose sample emitted eos are dropped from the decoding batch (KV buffers included) once they
      are ``COMPACT_FRACTION`` of it, so late steps run on the samples still generating only;
    * no autograd graph is recorded (a method's trainable parameters keep ``requires_grad``);
    * LoRA adapters (``bench.model.lora``) run merged into their linear (``merged_for_eval``).

    The method sees the whole prompt batch once (``before_forward(batch, "prefill")``), then
    ``select_rows(rows)`` tells it which rows of that batch the next forwards run on (a prefill chunk,
    the rows still decoding; None: all), so per-sample state such as PTL's router choice or the
    image-token mask follows its rows. ``split_rows=False`` (a method whose rows interact within a
    forward, e.g. MoE capacity: ``method.rows_independent_at_eval``) keeps the batch whole: one
    prefill forward, and every row decoded until the last sample is done.

    When ``loader`` is a cached ``bench.train.data.EvalBatches`` (the same batches every evaluation row),
    the image features each batch's prefill computed are kept and passed back to the model
    (``mm_encoder_outputs``) on later rows instead of running the vision tower and projector again,
    but only while ``vision_fingerprint`` proves that path unchanged; the features are the exact
    tensors the first prefill scattered into the prompt, so the predictions are identical."""
    model.eval()
    with merged_for_eval(model):
        return _generate(model, loader, eos_id=eos_id, max_new_tokens=max_new_tokens, accelerator=accelerator,
                         before_forward=before_forward, select_rows=select_rows, split_rows=split_rows,
                         prefill_chunk=prefill_chunk)


def _generate(model: nn.Module, loader, *, eos_id: int, max_new_tokens: int, accelerator,
              before_forward: Callable[[dict, str], None], select_rows: Callable[[torch.Tensor | None], None],
              split_rows: bool, prefill_chunk: int) -> dict[int, list[int]]:
    device = accelerator.device
    results: dict[int, list[int]] = {}
    features = getattr(loader, "features", None)
    reuse = features is not None and getattr(loader, "cached", False)
    fingerprint = vision_fingerprint(model, accelerator) if features is not None else None
    if fingerprint is None and features:
        features.clear()
    # keep features only for a split whose batches are (or are becoming) cached, within its byte budget
    store = fingerprint is not None and not getattr(loader, "too_big", True)
    cache_kw = _cache_keyword(model)
    image_token_id = getattr(getattr(model, "module", model).config, "image_token_id", None)
    for position, batch in enumerate(loader):
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        ids, mask = batch["input_ids"], batch["attention_mask"]
        B = ids.shape[0]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        before_forward(batch, "prefill")
        pixels = batch.get("pixel_values")
        kept = features.get(position) if reuse and fingerprint is not None and pixels is not None else None
        reused = kept[1] if kept is not None and kept[0] == fingerprint else None
        chunk = max(1, min(prefill_chunk, B)) if split_rows else B
        image_starts = _image_rows(ids, image_token_id) if pixels is not None and chunk < B else None
        if pixels is not None and image_starts is None:
            chunk = B  # which rows own which images is unknown: one forward over the whole batch
        rooms = KVRooms(B, max_new_tokens)
        logits, computed = [], []
        try:
            for s in range(0, B, chunk):
                rows = slice(s, min(B, s + chunk))
                a, b = (image_starts[rows.start], image_starts[rows.stop]) if image_starts else (0, None)
                image: dict[str, Any] = {}
                if pixels is not None and (b is None or b > a):
                    if reused is not None:
                        per_image = reused.shape[0] // pixels.shape[0]
                        part = reused if b is None else reused[a * per_image: b * per_image]
                        image = {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=[part])}}
                    else:
                        image = {"pixel_values": pixels if b is None else pixels[a:b]}
                if chunk < B:
                    select_rows(torch.arange(rows.start, rows.stop, device=device))
                with accelerator.autocast():
                    out = model(input_ids=ids[rows], attention_mask=mask[rows], position_ids=positions[rows],
                                use_cache=True, logits_to_keep=1, **{cache_kw: rooms.chunk_cache(rows)}, **image)
                logits.append(out.logits[:, -1])
                if "pixel_values" in image:
                    computed.append(_prefill_image_features(out))
            if chunk < B:
                select_rows(None)
            if store and computed and all(f is not None for f in computed):
                new = computed[0] if len(computed) == 1 else torch.cat(computed)
                kept_bytes = sum(f.numel() * f.element_size() for p, (_, f) in features.items() if p != position)
                if kept_bytes + new.numel() * new.element_size() <= loader.budget:
                    features[position] = (fingerprint, new)
            results.update(_decode(model, rooms.batch_cache(), torch.cat(logits).argmax(-1), mask,
                                   positions[:, -1:], batch["index"], eos_id=eos_id, max_new_tokens=max_new_tokens,
                                   accelerator=accelerator, cache_kw=cache_kw, before_forward=before_forward,
                                   select_rows=select_rows, compact=split_rows))
        finally:
            select_rows(None)
    return results


def _decode(model: nn.Module, past, token: torch.Tensor, mask: torch.Tensor, last_pos: torch.Tensor,
            index: torch.Tensor, *, eos_id: int, max_new_tokens: int, accelerator, cache_kw: str,
            before_forward: Callable[[dict, str], None], select_rows: Callable[[torch.Tensor | None], None],
            compact: bool) -> dict[int, list[int]]:
    """Greedy decoding of one prefilled batch from its first tokens ``token`` [B]; see ``generate``."""
    B = token.shape[0]
    out_tokens = torch.full((B, max_new_tokens), eos_id, dtype=torch.long, device=token.device)
    out_tokens[:, 0] = token
    alive = torch.arange(B, device=token.device)  # the batch rows still in the decoding batch
    done = token == eos_id
    for step in range(1, max_new_tokens):
        n_done = int(done.sum())  # the one host sync per generated token (evaluation only)
        if n_done == alive.numel():
            break
        if compact and n_done and n_done >= COMPACT_FRACTION * alive.numel():
            keep = (~done).nonzero().squeeze(1)
            alive, token, mask, last_pos, done = alive[keep], token[keep], mask[keep], last_pos[keep], done[keep]
            past.batch_select_indices(keep)
            select_rows(alive)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last_pos = last_pos + 1
        before_forward({"input_ids": token[:, None], "attention_mask": mask}, "decode")
        with accelerator.autocast():
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last_pos, use_cache=True,
                        **{cache_kw: past})
        past = _returned_cache(out)
        token = out.logits[:, -1].argmax(-1)
        out_tokens[alive, step] = token
        done = done | (token == eos_id)
    results = {}
    for idx, seq in zip(index.tolist(), out_tokens.tolist()):
        results[idx] = seq[: seq.index(eos_id)] if eos_id in seq else seq
    return results
