"""Experts and growable expert sets: full FFN copies and LoRA deltas.

Two kinds of expert, both kept one module per expert so that

* an expert can be frozen on its own (``requires_grad=False`` on its tensors only),
* experts can be appended without replacing any existing ``nn.Parameter`` (an optimizer that holds the
  old parameters keeps its state for them),
* the fast dispatch can run one contiguous matmul chain per expert on a slice of a sorted buffer
  (``FFNExperts`` does all of them as one autograd node, ``bench.moe.grouped``).

``SwiGLUExpert``  a full FFN copy: ``down(act(gate(x)) * up(x))``, exactly LlamaMLP's computation and
                  parameter names (MoE-LLaVA's deep-copied FFN; EvoMoE's evolved experts).
``LoRADelta``     a LoRA delta on a frozen FFN: ``Δ(h) = (alpha / r) · B A h`` with ``A ∈ R^{r×d_in}``,
                  ``B ∈ R^{d_out×r}``, B = 0 at init so a new expert starts as a no-op.

``LoRAExperts`` holds LoRADelta experts in one of two roles: the output-delta expert of an MoE FFN
(``y = FFN(h) + Σ_k w_k Δ_k(h)``, selectable as ``expert_type=delta``; the frozen FFN runs once per
token and each routed expert adds 2·r·d MACs, but it learns little per task on the tiny preset), and
CoIN's MoELoRA per-linear experts (``d_in/d_out = in/out_features``, mixed with
``LoRAExperts.mix_dense``). The default LoRA expert of the MoE methods, the FFN with a LoRA per expert
on gate, up and down, is ``bench.moe.lora_ffn_experts.LoRAFFNExperts``.
"""
from __future__ import annotations

import abc
import copy
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.model.lora import init_lora_A
from bench.moe.grouped import grouped_swiglu


# --------------------------------------------------------------------------------------------------
# single experts
# --------------------------------------------------------------------------------------------------
class SwiGLUExpert(nn.Module):
    """A LlamaMLP-shaped FFN: ``down_proj(act(gate_proj(x)) * up_proj(x))``.

    Parameter names match ``LlamaMLP`` so ``expert.load_state_dict(mlp.state_dict())`` copies an FFN.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, act_fn: nn.Module | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(d_model, d_ff, **kw)
        self.up_proj = nn.Linear(d_model, d_ff, **kw)
        self.down_proj = nn.Linear(d_ff, d_model, **kw)
        self.act_fn = act_fn if act_fn is not None else nn.SiLU()

    @classmethod
    def from_mlp(cls, mlp: nn.Module) -> "SwiGLUExpert":
        """A copy (new tensors) of a LlamaMLP-like module with gate_proj / up_proj / down_proj / act_fn."""
        w = mlp.gate_proj.weight
        expert = cls(mlp.gate_proj.in_features, mlp.gate_proj.out_features,
                     bias=mlp.gate_proj.bias is not None, act_fn=copy.deepcopy(mlp.act_fn),
                     device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("gate_proj", "up_proj", "down_proj"):
                src, dst = getattr(mlp, name), getattr(expert, name)
                dst.weight.copy_(src.weight)
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
        return expert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LoRADelta(nn.Module):
    """One LoRA expert: ``Δ(x) = (alpha / r) · B (A x)``; A is r×d_in, B is d_out×r.

    Init (CoIN MoELoRA / peft): B = 0 so the expert adds nothing until trained;
    A is ``kaiming`` (peft's default: kaiming-uniform with a=sqrt(5)) or ``normal`` (N(0, 0.01²),
    CoIN's MoELoRA; "0.01" read as the standard deviation).
    """

    def __init__(self, d_in: int, d_out: int, r: int, alpha: float,
                 init: Literal["kaiming", "normal"] = "kaiming",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, d_in, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, device=device, dtype=dtype))
        init_lora_A(self.lora_A, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling


def _is_silu(act: nn.Module) -> bool:
    # transformers' ACT2FN["silu"] is its own SiLUActivation (plain F.silu), not nn.SiLU
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def _fusable(expert: nn.Module) -> bool:
    """A SwiGLUExpert the fused grouped kernel computes exactly: SiLU, no biases, plain Linears."""
    return (type(expert) is SwiGLUExpert and _is_silu(expert.act_fn)
            and all(type(getattr(expert, n)) is nn.Linear and getattr(expert, n).bias is None
                    for n in ("gate_proj", "up_proj", "down_proj")))


# --------------------------------------------------------------------------------------------------
# expert sets
# --------------------------------------------------------------------------------------------------
class ExpertSet(nn.Module, abc.ABC):
    """An ordered, growable list of experts (one ``nn.Module`` each in ``self.experts``).

    Subclasses define ``_new_expert()``. Expert ids are positions in the list; appending never touches
    the modules (or Parameter objects) already in it.
    """

    d_in: int
    d_out: int

    def __init__(self, experts: Iterable[nn.Module]):
        super().__init__()
        self.experts = nn.ModuleList(experts)

    # --- size -------------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def __len__(self) -> int:
        return len(self.experts)

    # --- compute ----------------------------------------------------------------------------------
    def expert_forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens ``x`` [n, d_in] -> [n, d_out]."""
        return self.experts[e](x)

    def forward_grouped(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Tokens sorted by expert: rows ``[sum(counts[:e]), sum(counts[:e+1]))`` go to expert e.

        One contiguous matmul chain per non-empty expert; ``split`` returns views, so no copies.
        """
        outs = [self.experts[e](xe) for e, xe in enumerate(x_sorted.split(counts)) if counts[e]]
        if not outs:
            return x_sorted.new_zeros(0, self.d_out)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen FFN that delta experts are added to (residual-base mode); None for full experts."""
        return None

    # --- growth -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _new_expert(self) -> nn.Module:
        """A fresh expert of this set's kind (each concrete set defines its own init)."""

    def append(self, n: int = 1, copy_from: int | None = None) -> list[int]:
        """Append ``n`` experts, fresh or copies of expert ``copy_from``; returns their ids.

        Copies are new tensors and trainable even if the source is frozen (LLaVA-CMoE's "copy the most
        used expert" makes a new trainable expert).
        """
        ids = []
        for _ in range(n):
            if copy_from is None:
                expert = self._new_expert()
            else:
                expert = copy.deepcopy(self.experts[copy_from])
                for p in expert.parameters():
                    p.grad = None
                    p.requires_grad_(True)
            self.experts.append(expert)
            ids.append(len(self.experts) - 1)
        return ids

    def pop(self, n: int = 1) -> None:
        """Remove the last ``n`` experts (LLaVA-CMoE discards its probe experts after probing)."""
        if not 0 <= n <= len(self.experts):
            raise ValueError(f"cannot pop {n} of {len(self.experts)} experts")
        for _ in range(n):
            del self.experts[len(self.experts) - 1]

    # --- freezing ---------------------------------------------------------------------------------
    def _ids(self, experts: int | Iterable[int] | None) -> list[int]:
        if experts is None:
            return list(range(len(self.experts)))
        return [experts] if isinstance(experts, int) else list(experts)

    def freeze(self, experts: int | Iterable[int] | None = None) -> None:
        """Stop training the given experts (default: all current ones).

        Also drops their ``.grad``: an optimizer skips parameters whose grad is None, so a frozen expert
        is neither updated nor weight-decayed even by AdamW.
        """
        for e in self._ids(experts):
            for p in self.experts[e].parameters():
                p.requires_grad_(False)
                p.grad = None

    def unfreeze(self, experts: int | Iterable[int] | None = None) -> None:
        for e in self._ids(experts):
            self.experts[e].requires_grad_(True)

    def is_frozen(self, e: int) -> bool:
        return not any(p.requires_grad for p in self.experts[e].parameters())

    def expert_parameters(self, e: int) -> list[nn.Parameter]:
        return list(self.experts[e].parameters())

    def expert_numel(self, e: int) -> int:
        """Parameters of one expert (for the per-task parameter reports)."""
        return sum(p.numel() for p in self.experts[e].parameters())


class FFNExperts(ExpertSet):
    """Full-FFN experts (MoE-LLaVA's E copies of the FFN; EvoMoE's trained + evolved experts)."""

    def __init__(self, experts: Iterable[SwiGLUExpert]):
        super().__init__(experts)
        if len(self.experts) == 0:
            raise ValueError("FFNExperts needs at least one expert (its shape defines the set)")
        first = self.experts[0]
        self.d_in = self.d_out = first.gate_proj.in_features
        self.d_ff = first.gate_proj.out_features

    @classmethod
    def from_mlp(cls, mlp: nn.Module, num_experts: int) -> "FFNExperts":
        """``num_experts`` independent copies of a dense FFN (DeepSpeed MoE deep-copies the FFN E times)."""
        return cls(SwiGLUExpert.from_mlp(mlp) for _ in range(num_experts))

    def forward_grouped(self, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """All experts as one autograd node (``bench.moe.grouped``) when they are plain bias-free SiLU
        SwiGLUs, the common Llama case; otherwise the module-by-module loop."""
        w = self.experts[0].gate_proj.weight
        # The fused node calls torch.mm directly, so it only runs where F.linear would not have cast:
        # same dtype as the weights and no autocast region.
        if (x_sorted.dtype == w.dtype and not torch.is_autocast_enabled(x_sorted.device.type)
                and all(_fusable(ex) for ex in self.experts)):
            return grouped_swiglu(x_sorted, counts, [(ex.gate_proj.weight, ex.up_proj.weight,
                                                      ex.down_proj.weight) for ex in self.experts])
        return super().forward_grouped(x_sorted, counts)

    def _new_expert(self) -> SwiGLUExpert:
        ref = self.experts[0]
        w = ref.gate_proj.weight
        return SwiGLUExpert(self.d_in, self.d_ff, bias=ref.gate_proj.bias is not None,
                            act_fn=copy.deepcopy(ref.act_fn), device=w.device, dtype=w.dtype)


class LoRAExperts(ExpertSet):
    """LoRA-delta experts on a frozen base module.

    With ``base`` set (residual-base mode) the MoE layer computes ``y = base(h) + Σ_k w_k Δ_k(h)``
    (LLaVA-CMoE's experts: LoRA deltas on the shared frozen FFN). The base is frozen here and never trained by this set.
    """

    def __init__(self, d_in: int, d_out: int, num_experts: int, r: int, alpha: float,
                 base: nn.Module | None = None, init: Literal["kaiming", "normal"] = "kaiming",
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if base is not None:
            p = next(base.parameters(), None)
            if p is not None:
                device = p.device if device is None else device
                dtype = p.dtype if dtype is None else dtype
        self.d_in, self.d_out, self.r, self.alpha, self.init = d_in, d_out, r, alpha, init
        self._factory = dict(device=device, dtype=dtype)
        super().__init__(self._new_expert() for _ in range(num_experts))
        self.base = base
        if base is not None:
            base.requires_grad_(False)

    @classmethod
    def on_mlp(cls, mlp: nn.Module, num_experts: int, r: int, alpha: float,
               init: Literal["kaiming", "normal"] = "kaiming") -> "LoRAExperts":
        """LoRA experts on a decoder FFN: d_in = d_out = hidden size; the FFN becomes the frozen base."""
        d = mlp.gate_proj.in_features
        return cls(d, d, num_experts, r, alpha, base=mlp, init=init)

    def _new_expert(self) -> LoRADelta:
        return LoRADelta(self.d_in, self.d_out, self.r, self.alpha, init=self.init, **self._factory)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.base is None else self.base(x)

    def mix_dense(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Dense soft mixing ``Σ_e weights[:, e] · Δ_e(x)`` (CoIN MoELoRA).

        Stacks the (small) LoRA factors so all experts run as two matmuls:
        ``H = x A_all^T`` [N, E·r], scaled per expert by its weight, then ``H B_all^T``.
        """
        n, E, r = x.shape[0], len(self.experts), self.r
        a_all = torch.cat([ex.lora_A for ex in self.experts])            # [E·r, d_in]
        b_all = torch.cat([ex.lora_B for ex in self.experts], dim=1)     # [d_out, E·r]
        h = F.linear(x, a_all).view(n, E, r) * weights.to(x.dtype).unsqueeze(-1)
        return F.linear(h.view(n, E * r), b_all) * (self.alpha / r)
