"""LoRA on `nn.Linear` layers of the decoder (CoIN's recipe: every LLM linear, alpha/r scaling).

``y = W x + (alpha / r) * B A dropout(x)`` with ``B = 0`` so an attached adapter starts as no change,
and ``A`` kaiming-uniform (peft's default, which CoIN's LoRA baseline uses). Why not N(0, 0.01): with
A that small the product B A grows from almost nothing and the tiny decoder barely moves within a
150-step task budget.

At evaluation (``merged_for_eval``) each adapter runs as one linear with ``W + (alpha / r) B A``: the
same function, one matmul instead of three plus an add, 15% of an evaluation row on the tiny preset.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench.model.layers import decoder_layers

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def check_targets(targets: tuple[str, ...]) -> None:
    """A LoRA method's ``targets`` knob: a non-empty subset of the decoder linears."""
    if not targets or set(targets) - set(DECODER_LINEARS):
        raise ValueError(f"targets must be a non-empty subset of {','.join(DECODER_LINEARS)}, got {targets}")


def init_lora_A(weight: torch.Tensor, init: str = "kaiming") -> None:
    """Initialise a LoRA down-projection A in place (B starts at zero, so ``B A = 0`` either way).

    ``kaiming``: kaiming-uniform with a = sqrt(5), peft's default; ``normal``: N(0, 0.01²), CoIN's
    MoELoRA ("0.01" read as the standard deviation)."""
    if init == "kaiming":
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    elif init == "normal":
        nn.init.normal_(weight, std=0.01)
    else:
        raise ValueError(f"unknown LoRA init {init!r}: use 'kaiming' or 'normal'")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        init_lora_A(self.lora_A, "kaiming")
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged: torch.Tensor | None = None  # W + scale * B A while merged_for_eval is active

    @property
    def weight(self) -> torch.Tensor:  # lets code that inspects `.weight` (e.g. dtype checks) keep working
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the merged weight carries no gradient to A and B: only where none is being recorded
        if self.merged is not None and not torch.is_grad_enabled():
            return F.linear(x, self.merged, self.base.bias)
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale


@contextmanager
def merged_for_eval(model: nn.Module) -> Iterator[int]:
    """Within the block, every ``LoRALinear`` of ``model`` in eval mode computes ``x (W + s B A)^T + b``
    in one linear whenever autograd is off; the weights themselves are never written, so nothing
    can drift, and the merged copies are dropped on exit. Yields the number of adapters merged."""
    adapters = [m for m in model.modules() if isinstance(m, LoRALinear) and not m.training]
    with torch.no_grad():
        for a in adapters:
            a.merged = torch.addmm(a.base.weight, a.lora_B, a.lora_A, alpha=a.scale)
    try:
        yield len(adapters)
    finally:
        for a in adapters:
            a.merged = None


@dataclass
class LoRASpec:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DECODER_LINEARS


def inject_lora(model: nn.Module, spec: LoRASpec) -> list[LoRALinear]:
    """Wrap every target linear of every decoder layer; returns the adapters (in a stable order)."""
    adapters: list[LoRALinear] = []
    for layer in decoder_layers(model):
        for parent in layer.modules():
            for name, child in list(parent.named_children()):
                if name in spec.targets and isinstance(child, nn.Linear):
                    adapter = LoRALinear(child, spec.rank, spec.alpha, spec.dropout)
                    setattr(parent, name, adapter)
                    adapters.append(adapter)
    if not adapters:
        raise ValueError(f"no decoder linear named any of {spec.targets} found")
    return adapters
