"""LoRA-FFN experts: expert e is the frozen FFN with its own rank-r LoRA on gate, up and down.

    gate_e(x) = W_g x + (α/r) B_g^e A_g^e x          up_e(x) = W_u x + (α/r) B_u^e A_u^e x
    FFN_e(x)  = W_d h + (α/r) B_d^e A_d^e h,   h = act(gate_e(x)) * up_e(x)

This is what "LoRA expert" means in the MoE-LoRA line of work LLaVA-CMoE builds on (MoELoRA, LoRAMoE:
each expert is a LoRA of the FFN's linear maps, sharing the frozen FFN). The layer
output is ``Σ_{e ∈ TopK} w_e FFN_e(x)`` with the top-k weights renormalised to 1, so a set whose LoRA
factors are all zero computes the dense FFN exactly. Per-expert weights are never materialised: the
frozen W_g, W_u (and W_d) run once over the expert-sorted buffer, and each expert adds its low-rank
terms on its own slice. A token routed to k experts costs k FFN evaluations (the down projection sees
an expert-specific activation), the price of an expert that can change the FFN's non-linear map; the
output-delta expert (``bench.moe.LoRAExperts``) costs one FFN plus 2·r·d per expert but, measured on
the tiny preset, learns little per task.

Parameters per expert: ``r · (d + d_ff)`` for each of gate and up and ``r · (d_ff + d)`` for down,
i.e. ``3 r (d + d_ff)``, the same as one LoRA on the three FFN linears.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.moe.experts import ExpertSet, LoRADelta


class LoRAFFNExpert(nn.Module):
    """The LoRA factors of one expert (``gate_proj`` / ``up_proj`` / ``down_proj``, each a
    ``LoRADelta``); the frozen FFN is the set's and is passed in, never copied."""

    def __init__(self, d_model: int, d_ff: int, r: int, alpha: float, init: Literal["kaiming", "normal"] = "kaiming",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kw = dict(init=init, device=device, dtype=dtype)
        self.gate_proj = LoRADelta(d_model, d_ff, r, alpha, **kw)
        self.up_proj = LoRADelta(d_model, d_ff, r, alpha, **kw)
        self.down_proj = LoRADelta(d_ff, d_model, r, alpha, **kw)

    def forward(self, x: torch.Tensor, base: nn.Module) -> torch.Tensor:
        h = base.act_fn(base.gate_proj(x) + self.gate_proj(x)) * (base.up_proj(x) + self.up_proj(x))
        return base.down_proj(h) + self.down_proj(h)


class LoRAFFNExperts(ExpertSet):
    """A growable set of LoRA-FFN experts on one frozen decoder FFN (``base``, LlamaMLP-shaped).

    ``base`` is registered here (as ``experts.base``) and frozen; ``base_forward`` is None because
    every expert already contains the FFN (the layer adds nothing on top of the routed experts)."""

    def __init__(self, base: nn.Module, num_experts: int, r: int, alpha: float,
                 init: Literal["kaiming", "normal"] = "kaiming"):
        w = base.gate_proj.weight
        self.d_in = self.d_out = base.gate_proj.in_features
        self.d_ff = base.gate_proj.out_features
        self.r, self.alpha, self.init = r, alpha, init
        self._factory = dict(device=w.device, dtype=w.dtype)
        super().__init__(self._new_expert() for _ in range(num_experts))
        self.base = base
        base.requires_grad_(False)

    @classmethod
    def on_mlp(cls, mlp: nn.Module, num_experts: int, r: int, alpha: float,
               init: Literal["kaiming", "normal"] = "kaiming") -> "LoRAFFNExperts":
        return cls(mlp, num_experts, r, alpha, init=init)

    def _new_expert(self) -> LoRAFFNExpert:
        return LoRAFFNExpert(self.d_in, self.d_ff, self.r, self.alpha, init=self.init, **self._factory)

    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x, self.base)

    def forward_grouped(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The frozen projections once over the whole sorted buffer; each expert that received rows
        adds its low-rank terms on its own slice, ``(α/r) (X_e A_e^T) B_e^T``, and the slices are
        concatenated back in order. A row costs ``r (d_in + d_out)`` per projection whatever the
        number of experts (stacking every live expert's factors and masking the other experts'
        columns costs ``L r (d_in + d_out)``: 4.5x slower at 16 experts, ``python -m bench perf lora-ffn``),
        and a frozen expert's factors get no gradient computed."""
        if x_sorted.shape[0] == 0:
            return x_sorted.new_zeros(0, self.d_out)
        base = self.base
        live = [e for e, c in enumerate(counts) if c]
        sizes = [counts[e] for e in live]

        def lora(x: torch.Tensor, proj: str) -> torch.Tensor:
            parts = []
            for e, rows in zip(live, x.split(sizes)):
                m = getattr(self.experts[e], proj)
                parts.append(F.linear(F.linear(rows, m.lora_A.to(x.dtype)), m.lora_B.to(x.dtype)) * m.scaling)
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        g = base.gate_proj(x_sorted) + lora(x_sorted, "gate_proj")
        u = base.up_proj(x_sorted) + lora(x_sorted, "up_proj")
        h = base.act_fn(g) * u
        return base.down_proj(h) + lora(h, "down_proj")
