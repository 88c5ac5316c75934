"""``MoELoRALinear``: CoIN's MoELoRA on one linear layer
(zackschen/CoIN ``CoIN/peft/tuners/coinmoelora.py``, ``CoINMOELoraLinear.forward``).

    y = W_0 x + sum_e softmax(R x)_e * (alpha / r) * B_e A_e dropout(x)

with N experts of rank r / N each (A_e: r/N x d_in, B_e: d_out x r/N), a per-linear router
``R = Linear(d_in, N, bias=False)`` applied to the undropped input, dense softmax mixing (every expert
runs for every token, no top-k) and the scale alpha / r of the *total* rank r, as CoIN's
``scaling = lora_alpha / r``. The experts are a ``LoRAExperts`` set, so the mixing is
``LoRAExperts.mix_dense`` (two matmuls for all experts); that set scales by its own ``alpha_e / r_e``,
which is given ``alpha_e = alpha / N`` so that ``alpha_e / r_e = alpha / r``. B_e = 0 at init (the
wrapper starts as the base linear); A_e is N(0, 0.01) by default as in CoIN (``init="kaiming"``: peft's).

This is not an FFN-level MoE (no ``MoEFFN``): each wrapped linear keeps its own experts and router.
In training mode the wrapper also keeps running sums of its mixing weights and their entropy
(diagnostics for the task report; plain attributes, not buffers, so they never enter a checkpoint).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.moe.experts import LoRAExperts
from bench.moe.install import decoder_layers


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus N densely mixed LoRA experts; forward(x [..., d_in]) -> [..., d_out]."""

    def __init__(self, base: nn.Linear, num_experts: int, rank: int, alpha: float, dropout: float = 0.0,
                 init: Literal["kaiming", "normal"] = "normal"):
        super().__init__()
        if rank % num_experts:
            raise ValueError(f"rank {rank} is not divisible by {num_experts} experts")
        self.base = base.requires_grad_(False)
        w = base.weight
        self.num_experts, self.rank, self.alpha, self.scaling = num_experts, rank, alpha, alpha / rank
        self.experts = LoRAExperts(base.in_features, base.out_features, num_experts, r=rank // num_experts,
                                   alpha=alpha / num_experts, init=init, device=w.device, dtype=w.dtype)
        # nn.Linear's default init, as CoIN's lora_router (it is not reset by reset_lora_parameters)
        self.router = nn.Linear(base.in_features, num_experts, bias=False, device=w.device, dtype=w.dtype)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_stats()

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (code that inspects ``.weight`` for dtype / device keeps working)."""
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def mixing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(R x) [N_tokens, N] for flattened tokens x [N_tokens, d_in]."""
        return F.softmax(self.router(x.to(self.router.weight.dtype)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *lead, d = x.shape
        flat = x.reshape(-1, d)
        weights = self.mixing_weights(flat)
        delta = self.experts.mix_dense(self.dropout(flat), weights)
        if self.training:  # the statistics describe training tokens; evaluation skips their cost
            self._accumulate(weights)
        return self.base(x) + delta.view(*lead, -1).to(x.dtype)

    # --- diagnostics ------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        self.weight_sum: torch.Tensor | None = None
        self.entropy_sum: torch.Tensor | None = None
        self.tokens = 0

    @torch.no_grad()
    def _accumulate(self, weights: torch.Tensor) -> None:
        # Summed on the device: no host synchronisation per forward.
        w = weights.detach().float()
        ent = -(w * w.clamp_min(1e-12).log()).sum()
        ws = w.sum(dim=0)
        self.weight_sum = ws if self.weight_sum is None else self.weight_sum + ws
        self.entropy_sum = ent if self.entropy_sum is None else self.entropy_sum + ent
        self.tokens += w.shape[0]

    def mean_weights(self) -> list[float]:
        """Mean mixing weight of each expert since ``reset_stats`` (its share of the LoRA output)."""
        if not self.tokens:
            return [0.0] * self.num_experts
        return [float(v) for v in (self.weight_sum / self.tokens).cpu()]

    def mean_entropy(self) -> float:
        """Mean entropy (nats) of the mixing distribution per token; log N = uniform mixing."""
        return float(self.entropy_sum) / self.tokens if self.tokens else 0.0

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, experts={self.num_experts}, "
                f"rank={self.rank} ({self.rank // self.num_experts} each), scaling={self.scaling:g}")


def inject_moelora(model: nn.Module, targets: tuple[str, ...], num_experts: int, rank: int, alpha: float,
                   dropout: float = 0.0, init: Literal["kaiming", "normal"] = "normal") -> dict[str, MoELoRALinear]:
    """Wrap every ``nn.Linear`` named in ``targets`` inside the decoder layers; returns
    ``{"<layer>.<path>": wrapper}`` in a stable order (e.g. ``"0.self_attn.q_proj"``)."""
    wrapped: dict[str, MoELoRALinear] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for path, parent in list(layer.named_modules()):
            for name, child in list(parent.named_children()):
                if name in targets and type(child) is nn.Linear:
                    wrapper = MoELoRALinear(child, num_experts, rank, alpha, dropout, init)
                    setattr(parent, name, wrapper)
                    wrapped[f"{i}.{path}.{name}" if path else f"{i}.{name}"] = wrapper
    if not wrapped:
        raise ValueError(f"no decoder linear named any of {targets} found")
    return wrapped
