"""``moelora``: CoIN's MoELoRA baseline (zackschen/CoIN, ``coinmoelora.py``).

Every decoder linear W_0 (q, k, v, o, gate, up, down; not the vision tower, projector or lm_head) gets
N LoRA experts of rank r / N and its own router, mixed densely (``bench.moe.moelora_linear``):

    y = W_0 x + sum_e softmax(R x)_e * (alpha / r) * B_e A_e dropout(x)

All experts and routers train on every task; nothing is frozen between tasks and nothing grows, so
this is the LoRA lower bound with a mixture inside each adapter. It is not an FFN-level MoE, hence not
an ``MoEMethod``: there is no top-k, no capacity, no load-balancing loss, and every expert is active for
every token (``inactive_parameters_per_token`` = 0).

Hyper-parameters, inferred choices and the task report: see ``MoELoRA``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.model.lora import DECODER_LINEARS, check_targets
from bench.moe.moelora_linear import MoELoRALinear, inject_moelora
from methods import register
from methods.base import ContinualMethod, MethodHParams


@dataclass
class MoELoRAHParams(MethodHParams):
    num_experts: int = 8
    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    lora_init: str = "kaiming"
    targets: tuple[str, ...] = DECODER_LINEARS
    lr_scale: float = 2.0
    search: ClassVar[dict[str, tuple]] = {"lr_scale": (1.0, 2.0, 4.0), "rank": (16, 32, 64), "num_experts": (4, 8)}

    def validate(self) -> None:
        super().validate()
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.rank < self.num_experts or self.rank % self.num_experts:
            raise ValueError(f"rank ({self.rank}) must be a positive multiple of num_experts ({self.num_experts})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lora_init not in ("kaiming", "normal"):
            raise ValueError(f"lora_init must be 'kaiming' or 'normal', got {self.lora_init!r}")
        check_targets(self.targets)


@register("moelora")
class MoELoRA(ContinualMethod):
    """CoIN's MoELoRA on every decoder linear (module docstring: the forward).

    Hyper-parameters (``--set key=value``):
        num_experts=8      N, CoIN's ``expert_num``.
        rank=32            total rank r, split into N experts of r / N = 4 [INFERRED: CoIN uses r = 128 on a
                           7B model; 32 is seq-ft's rank on the d=128 tiny decoder, so both baselines hold
                           the same LoRA parameter budget].
        alpha=64.0         scale alpha / r = 2, as CoIN's 256 / 128.
        dropout=0.0        LoRA dropout on the experts' input (not the router's, as in CoIN's forward);
                           0 as seq-ft here (LLaVA's training script defaults to 0.05).
        lora_init="kaiming"  A's init; B = 0 either way, so the model starts as the base model. Deviation:
                           CoIN's code draws A ~ N(0, 0.01) ("normal"). With A that small the tiny decoder
                           barely moves within a task's step budget, which is why the project's seq-ft
                           LoRA uses peft's kaiming-uniform; following it keeps the two LoRA baselines
                           comparable. ``normal`` restores CoIN's init.
        targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  the wrapped decoder linears.
        lr_scale=2.0       peak lr = 2 x the budget's. Dense softmax mixing gives each of the N experts a
                           weight near 1/N, so at seq-ft's lr the mixture's delta moves about 1/N as far per
                           AdamW step as seq-ft's LoRA of the same total rank. Chosen by training loss on
                           the coin-mini stream (seed 0, mean of the eight tasks' final losses): 1.134 at 1x,
                           0.967 at 2x; at 1x ImageNet stays at chance.

    The task report gives, per wrapped linear, the mean mixing weight of each expert over the task's
    training tokens (``expert_utilisation``) and, per decoder layer, the mean router entropy in nats
    (``router_entropy``; ``router_entropy_uniform`` = log N is the value of uniform mixing).
    """
    HParams = MoELoRAHParams

    def __init__(self, hparams: MoELoRAHParams | None = None):
        super().__init__(hparams)
        self.linears: dict[str, MoELoRALinear] = {}

    def attach(self, model, ctx) -> None:
        super().attach(model, ctx)
        hp = self.hp
        self.linears = inject_moelora(model, tuple(hp.targets), hp.num_experts, hp.rank, hp.alpha,
                                      hp.dropout, hp.lora_init)
        for lin in self.linears.values():
            lin.experts.requires_grad_(True)
            lin.router.requires_grad_(True)

    def begin_task(self, task_index: int, task, train_loader) -> None:
        for lin in self.linears.values():
            lin.reset_stats()  # the report describes this task's training tokens only

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        per_layer: dict[str, list[float]] = {}
        for name, lin in self.linears.items():
            per_layer.setdefault(name.split(".", 1)[0], []).append(lin.mean_entropy())
        return {
            "router_entropy": {k: round(sum(v) / len(v), 6) for k, v in per_layer.items()},
            "router_entropy_uniform": round(math.log(self.hp.num_experts), 6),
            "expert_utilisation": {name: [round(w, 6) for w in lin.mean_weights()]
                                   for name, lin in self.linears.items()},
        }

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # All tensors (experts, routers) live in the model and attach() rebuilds the structure; the
        # list of wrapped linears guards against loading into a differently configured method.
        return {"linears": list(self.linears)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("linears", [])) != list(self.linears):
            raise ValueError("saved MoELoRA linears differ from the ones attach() wrapped")
