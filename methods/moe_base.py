"""What every MoE method shares on top of ``bench.moe``: installing MoE layers in the chosen decoder
layers, the weighted load-balancing loss, the image-token mask for token-aware routers, expert
utilisation reports and the per-token activated-parameter count.

Subclasses implement ``build_layer(index, mlp)`` (the MoEFFN replacing one decoder FFN) and their own
task lifecycle; they differ only in the mechanism their paper adds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.moe import (ExpertSet, LinearRouter, LoRAExperts, LoRAFFNExperts, MoEFFN, collect_aux_loss, decoder_layers,
                       install_moe, select_moe_layers, set_token_types)
from methods.base import ContinualMethod, MethodHParams


@dataclass
class MoEHParams(MethodHParams):
    moe_layers: str = "alternate"  # "alternate" (MoE-LLaVA's every other layer), "all", or "0,2,3"
    top_k: int = 2
    aux_loss_coef: float = 0.01  # Switch load balancing E * sum_e f_e P_e, summed over MoE layers
    dispatch: str = "fast"  # "fast" (sorted) or "eager" (reference)
    search: ClassVar[dict[str, tuple]] = {"aux_loss_coef": (0.001, 0.01, 0.1)}

    def validate(self) -> None:
        super().validate()
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.aux_loss_coef < 0:
            raise ValueError(f"aux_loss_coef must be >= 0, got {self.aux_loss_coef}")
        if self.dispatch not in ("fast", "eager"):
            raise ValueError(f"dispatch must be 'fast' or 'eager', got {self.dispatch!r}")
        if self.moe_layers not in ("alternate", "all"):
            try:
                [int(x) for x in self.moe_layers.split(",")]
            except ValueError:
                raise ValueError(f"moe_layers must be 'alternate', 'all' or comma-separated layer ids, "
                                 f"got {self.moe_layers!r}") from None


EXPERT_TYPES = ("lora-ffn", "delta")


@dataclass
class LoRAExpertHParams(MoEHParams):
    """Methods whose experts are LoRA experts on the frozen FFN (cmoe, naive-expansion).

    expert_type  "lora-ffn": the frozen FFN with the expert's own LoRA on gate, up and down
                 (``bench.moe.LoRAFFNExperts``; a token's output is the weighted sum of its experts' FFNs);
                 "delta": one LoRA map from the FFN input added to the FFN output
                 (``bench.moe.LoRAExperts``), which learns little per task on the tiny preset.
    moe_layers   "all": every decoder layer, so probing has layers to choose between.
    lora_rank / lora_alpha / lora_init   r, α (scale α/r, CoIN's α = 2r) and A's init (B = 0). r = 32 is
                 seq-ft's rank: a rank-16 LoRA on the FFN alone stays at OCR-VQA's constant answer.
    """

    moe_layers: str = "all"
    expert_type: str = "lora-ffn"
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_init: str = "kaiming"
    search: ClassVar[dict[str, tuple]] = {"lora_rank": (16, 32, 64)}

    def validate(self) -> None:
        super().validate()
        if self.expert_type not in EXPERT_TYPES:
            raise ValueError(f"expert_type must be one of {', '.join(EXPERT_TYPES)}, got {self.expert_type!r}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_init not in ("kaiming", "normal"):
            raise ValueError(f"lora_init must be 'kaiming' or 'normal', got {self.lora_init!r}")


def router_with_groups(d: int, sizes: list[int], device: torch.device) -> LinearRouter:
    """A fresh linear router whose rows come in groups of ``sizes`` (each group frozen as a whole), the
    shape a saved router with those groups loads into."""
    router = LinearRouter(d, sizes[0], device=device)
    for n in sizes[1:]:
        router.append_rows(n)
    return router


def lora_experts(mlp: nn.Module, num_experts: int, hp: LoRAExpertHParams) -> ExpertSet:
    """``num_experts`` fresh LoRA experts of ``hp.expert_type`` on the frozen FFN ``mlp``."""
    kind = LoRAFFNExperts if hp.expert_type == "lora-ffn" else LoRAExperts
    return kind.on_mlp(mlp, num_experts, hp.lora_rank, hp.lora_alpha, init=hp.lora_init)


class MoEMethod(ContinualMethod):
    HParams = MoEHParams

    def __init__(self, hparams=None):
        super().__init__(hparams)
        self.layers: dict[int, MoEFFN] = {}

    # --- installation ----------------------------------------------------------------------------
    def layer_ids(self, model: nn.Module) -> list[int]:
        spec = self.hp.moe_layers
        n = len(decoder_layers(model))
        return select_moe_layers(n, spec if spec in ("alternate", "all") else [int(x) for x in spec.split(",")])

    def install(self, model: nn.Module) -> None:
        """Replace the FFN of every selected decoder layer by ``self.build_layer(i, mlp)`` (each subclass
        defines ``build_layer(index, mlp) -> MoEFFN``)."""
        ids = self.layer_ids(model)
        install_moe(model, self.build_layer, ids)
        layers = decoder_layers(model)
        self.layers = {i: layers[i].mlp for i in ids}

    def install_if_saved(self, installed: bool) -> None:
        """On resume, on a freshly attached method: install the MoE layers when the saved method had
        them, so the saved tensors find their parameters."""
        if installed and not self.layers:
            self.install(self.model)

    def check_saved_layers(self, saved: list[int]) -> None:
        """A restored method must have its MoE in exactly the saved decoder layers."""
        if sorted(self.layers) != list(saved):
            raise ValueError(f"saved MoE layers {saved} != installed {sorted(self.layers)}")

    def regrow_layers(self, experts_per_layer: dict[str, int], router_groups: dict[str, list[list[int]]]) -> None:
        """On resume: grow every installed layer to the saved number of experts and rebuild its routers
        from their saved row-group sizes (``router_with_groups``), so the saved tensors, masks and
        per-group frozen flags load into the same shapes. Keys are layer ids as strings (JSON)."""
        for i, layer in self.layers.items():
            grow = experts_per_layer[str(i)] - layer.experts.num_experts
            if grow < 0:
                raise ValueError(f"layer {i} already has more experts than the saved state")
            layer.experts.append(grow)
            groups = router_groups[str(i)]
            device = layer.routers[0].row_mask.device
            while len(layer.routers) > 1:
                layer.pop_router()
            layer.routers[0] = router_with_groups(layer.experts.d_in, groups[0], device)
            for g in groups[1:]:
                layer.add_router(router_with_groups(layer.experts.d_in, g, device))

    def set_moe_trainable(self, on: bool) -> None:
        """Freeze (``on=False``: what a method that grows does before adding the new task's part) or
        unfreeze every expert and every router row group of every MoE layer."""
        for layer in self.layers.values():
            if on:
                layer.experts.unfreeze()
            else:
                layer.experts.freeze()
            for router in layer.routers:
                if on:
                    router.unfreeze()
                else:
                    router.freeze()

    def freeze_moe(self) -> None:
        """Freeze every expert and every router row group of every MoE layer."""
        self.set_moe_trainable(False)

    # --- training hooks --------------------------------------------------------------------------
    def auxiliary_loss(self) -> torch.Tensor | None:
        if self.hp.aux_loss_coef == 0 or not self.layers:
            return None
        aux = collect_aux_loss(self.layers.values())
        return None if aux is None else self.hp.aux_loss_coef * aux

    def before_forward(self, batch: dict[str, torch.Tensor], phase: str) -> None:
        # Token-aware routers need to know which positions are image features; decoded tokens are text.
        if phase != "decode" and self.ctx is not None and self.ctx.image_token_id is not None:
            set_token_types(self.layers.values(), batch["input_ids"] == self.ctx.image_token_id)

    def select_rows(self, rows: torch.Tensor | None) -> None:
        for layer in self.layers.values():
            layer.select_rows(rows)

    @property
    def rows_independent_at_eval(self) -> bool:  # type: ignore[override]
        """True unless some MoE layer couples the rows of a forward (capacity, second-choice noise)."""
        return all(layer.rows_independent_at_eval() for layer in self.layers.values())

    def reset_usage(self) -> None:
        for layer in self.layers.values():
            layer.reset_usage()

    # --- reporting -------------------------------------------------------------------------------
    def expert_utilisation(self) -> dict[str, list[float]]:
        """Per MoE layer: fraction of tokens routed to each expert since the last reset."""
        return {str(i): [round(float(f), 6) for f in layer.usage_fraction()] for i, layer in self.layers.items()}

    def task_report(self) -> dict[str, Any]:
        return {"experts_per_layer": {str(i): layer.experts.num_experts for i, layer in self.layers.items()},
                "expert_utilisation": self.expert_utilisation()}

    def inactive_parameters_per_token(self) -> int:
        """A token runs top_k experts of a layer (the largest ones, as an upper bound on activation)
        and one router; every other expert and router of the layer is inactive for it."""
        inactive = 0
        for layer in self.layers.values():
            sizes = sorted((layer.experts.expert_numel(e) for e in range(layer.experts.num_experts)), reverse=True)
            inactive += sum(sizes[layer.top_k:])
            routers = [sum(p.numel() for p in r.parameters()) for r in layer.routers]
            inactive += sum(routers) - max(routers)
        return inactive
