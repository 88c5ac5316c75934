"""``seq-ft``: CoIN's lower bound. One LoRA adapter on every decoder linear, carried from task to task
with no mechanism against forgetting (CoIN's "Sequential LoRA")."""
from __future__ import annotations

from typing import ClassVar

from dataclasses import dataclass

from bench.model.lora import DECODER_LINEARS, check_targets, LoRASpec, inject_lora
from methods import register
from methods.base import ContinualMethod, MethodHParams


@dataclass
class LoRAHParams(MethodHParams):
    # CoIN uses r=128 on a 7B model. On the d=128 tiny decoder r=32: the FFN-expert methods get the same
    # rank per expert at capacity parity, and an FFN LoRA of rank 16 cannot learn OCR-VQA within a task's
    # budget (constant answers) while rank 32 can (docs/method-notes.md, "Capacity parity").
    rank: int = 32
    alpha: float = 64.0  # CoIN's alpha = 2r
    search: ClassVar[dict[str, tuple]] = {"rank": (16, 32, 64)}
    dropout: float = 0.0
    # The wrapped decoder linears. The default is CoIN's (every linear); the FFN's three alone are the
    # ablation that gives the LoRA the same reach as the FFN-expert methods (attention stays frozen).
    targets: tuple[str, ...] = DECODER_LINEARS

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_targets(self.targets)


@register("seq-ft")
class SequentialFineTuning(ContinualMethod):
    HParams = LoRAHParams

    def attach(self, model, ctx) -> None:
        super().attach(model, ctx)
        self.adapters = inject_lora(model, LoRASpec(rank=self.hp.rank, alpha=self.hp.alpha, dropout=self.hp.dropout,
                                                      targets=tuple(self.hp.targets)))
        for a in self.adapters:
            a.lora_A.requires_grad_(True)
            a.lora_B.requires_grad_(True)
