"""Measuring which experts a task's tokens use, for methods that decide growth from it (LLaVA-CMoE's
probing, copy-initialised expansion): a seeded subset of a task's training records and one
forward-only pass counting top-k assignments over the real tokens.

    f_{l,e} = (1/N_tok) sum_{counted tokens} 1[e in TopK(p_l)]

Which tokens count (``tokens``): "loss" (the default) = the positions whose next token is supervised
(the last prompt token and the answer tokens before the last), i.e. the positions whose top-layer
output the task's loss reads; "all" = every real (attention-mask) token, image and prompt included.
In the top decoder layer a router row receives gradient only from the loss positions, so over all
tokens a top-layer frequency mostly measures how the row was initialised, not what the task asks of
the layer.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from bench.moe.layer import MoEFFN
from bench.train.data import IGNORE

USAGE_TOKENS = ("all", "loss")


def counted_positions(batch: Mapping[str, torch.Tensor], tokens: str) -> torch.Tensor:
    """[B, T] bool: the positions ``measure_usage`` counts (see the module docstring)."""
    real = batch["attention_mask"].bool()
    if tokens == "all":
        return real
    supervised = torch.zeros_like(real)
    supervised[:, :-1] = batch["labels"][:, 1:] != IGNORE  # position t predicts token t + 1
    return supervised & real


def subset_loader(loader: DataLoader, fraction: float, seed: int) -> DataLoader:
    """A loader over a random ``fraction`` of ``loader``'s dataset (at least one record), same batch
    size and collate function, its own shuffling generator (the task loader's order is untouched)."""
    n = len(loader.dataset)
    size = max(1, min(n, math.ceil(fraction * n)))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:size].tolist()
    batch_size = loader.batch_size or 1
    return DataLoader(Subset(loader.dataset, idx), batch_size=batch_size, shuffle=True,
                      drop_last=size >= batch_size, generator=torch.Generator().manual_seed(seed + 1),
                      collate_fn=loader.collate_fn)


@torch.no_grad()
def measure_usage(model: nn.Module, layers: Mapping[int, MoEFFN], loader, device: torch.device,
                  prepare: Callable[[dict[str, Any]], None], tokens: str = "loss") -> dict[int, torch.Tensor]:
    """Per MoE layer, f_{l,e} over the counted tokens (``tokens``: "all" or "loss", module docstring)
    of one pass over ``loader``, with the routers ``prepare(batch)`` selects. Padding is excluded, which
    ``MoEFFN.usage_counts`` cannot do (it counts every position), so the counts come from each
    forward's ``last_output``."""
    if tokens not in USAGE_TOKENS:
        raise ValueError(f"tokens must be one of {', '.join(USAGE_TOKENS)}, got {tokens!r}")
    counts = {i: torch.zeros(m.experts.num_experts, dtype=torch.float64) for i, m in layers.items()}
    total = 0
    inner = getattr(model, "model", model)  # hidden states suffice: skip the LM head
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            prepare(batch)
            kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch}
            inner(**kwargs, use_cache=False)
            real = counted_positions(batch, tokens).reshape(-1)
            total += int(real.sum())
            for i, m in layers.items():
                out = m.last_output
                hit = out.kept & real.unsqueeze(1)
                counts[i] += torch.bincount(out.expert_index[hit], minlength=counts[i].numel()).double().cpu()
    finally:
        model.train(was_training)
    return {i: c / max(1, total) for i, c in counts.items()}
