"""``naive-expansion``: grow every MoE layer by K LoRA experts per task, one shared router (spec
methods.md Part A table; Part B section 4 "Naive expansion", variant N-shared).

Every MoE layer l keeps its dense FFN frozen and adds LoRA-delta experts on it (the same expert type as
LLaVA-CMoE's, ``bench.moe.LoRAExperts``):

    p   = softmax([W_1; ...; W_t] h)             one shared router, K rows appended per task
    y   = FFN_frozen(h) + sum_{e in TopK(p)} (p_e / sum_{TopK} p) * (alpha / r) B_e A_e h
    L   = CE + aux_loss_coef * sum_l E_l * sum_e f_e P_e

For task t, every layer appends K fresh experts and K fresh router rows; the experts and router rows of
tasks 1..t-1 are frozen and stay bit-identical. Parameters therefore grow linearly with the number of
tasks: per task and MoE layer, K experts of 2 r d parameters and K router rows of d. Because every
task's tokens are routed by one softmax over all rows, adding rows redistributes old tokens towards new
experts ("routing drift"), the failure mode this baseline exists to show.

Hyper-parameters, inferred choices and the task report: see ``NaiveExpansion``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from bench.moe import LinearRouter, LoRAExperts, MoEFFN
from methods import register
from methods.moe_base import MoEHParams, MoEMethod


@dataclass
class NaiveExpansionHParams(MoEHParams):
    experts_per_task: int = 2
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_init: str = "kaiming"
    train_old_rows: bool = False

    def validate(self) -> None:
        super().validate()
        if self.experts_per_task < 1:
            raise ValueError(f"experts_per_task must be >= 1, got {self.experts_per_task}")
        if self.top_k > self.experts_per_task:
            # task 1 has only K experts to choose from
            raise ValueError(f"top_k={self.top_k} exceeds experts_per_task={self.experts_per_task}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_init not in ("kaiming", "normal"):
            raise ValueError(f"lora_init must be 'kaiming' or 'normal', got {self.lora_init!r}")


@register("naive-expansion")
class NaiveExpansion(MoEMethod):
    """Naive expansion, N-shared variant (module docstring: the forward and the growth).

    Hyper-parameters (``--set key=value``; defaults are the spec's or [INFERRED] where it has none):
        experts_per_task=2     K: the same K and type as LLaVA-CMoE's task-1 experts (N0 = 2, Part A).
        lora_rank=16           r of every expert [INFERRED: the spec gives no rank; 16 is seq-ft's rank on
                               the d=128 tiny decoder].
        lora_alpha=32.0        scale alpha / r = 2, CoIN's alpha = 2r.
        lora_init="kaiming"    A's init, ``bench.moe.LoRADelta`` (B = 0, so a new expert starts as a no-op
                               and the model's output at a task's start only moves through routing).
        train_old_rows=False   Part A freezes old router rows; ``true`` is Part B's "optionally the old
                               rows" variant (old experts stay frozen either way).
        top_k=2, aux_loss_coef=0.01, moe_layers="alternate", dispatch="fast" (``MoEHParams``); routing is
        dropless (the project's default outside MoE-LLaVA).

    [INFERRED] choices: new rows use ``nn.Linear``'s default init (a fresh ``W^new``, Part B); the first
    K experts are created in ``begin_task`` of task 1, so row 0 of the accuracy matrix is the dense base.

    ``expert_utilisation`` (from ``MoEMethod``) counts the task's training tokens: usage is reset in
    ``begin_task`` and the report is read before evaluation.
    """
    HParams = NaiveExpansionHParams

    def __init__(self, hparams: NaiveExpansionHParams | None = None):
        super().__init__(hparams)
        self.tasks_seen = 0  # expansions done: the layers hold tasks_seen * K experts

    def build_layer(self, index: int, mlp: nn.Module) -> MoEFFN:
        """Task 1's K LoRA experts on the frozen FFN and a K-row router (dropless top-k)."""
        hp = self.hp
        experts = LoRAExperts.on_mlp(mlp, hp.experts_per_task, hp.lora_rank, hp.lora_alpha, init=hp.lora_init)
        router = LinearRouter(experts.d_in, hp.experts_per_task, device=mlp.gate_proj.weight.device)
        return MoEFFN(experts, router, top_k=hp.top_k, dispatch=hp.dispatch)

    def _expand(self) -> None:
        """One task's growth: K new experts and K new router rows per layer, everything older frozen."""
        if not self.layers:
            self.install(self.model)
        else:
            K = self.hp.experts_per_task
            for layer in self.layers.values():
                layer.experts.freeze()
                layer.router.freeze()
                layer.experts.append(K)
                layer.router.append_rows(K)  # its own parameter group: frozen as a whole next task
        if self.hp.train_old_rows:
            for layer in self.layers.values():
                layer.router.unfreeze()
        self.tasks_seen += 1

    def begin_task(self, task_index: int, task, train_loader) -> None:
        self._expand()
        self.reset_usage()

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report["tasks_seen"] = self.tasks_seen
        return report

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Tensors live in the model; the structure (how many expansions) is what a fresh method rebuilds.
        return {"tasks_seen": self.tasks_seen, "moe_layers": sorted(self.layers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replay the expansions on a freshly attached model; ``model.load_state_dict`` then fills the
        values (same parameter names, same groups, same frozen flags as after the saved task)."""
        if self.tasks_seen:
            raise RuntimeError("load_state_dict expects a freshly attached method")
        for _ in range(int(state["tasks_seen"])):
            self._expand()
        if sorted(self.layers) != list(state.get("moe_layers", [])):
            raise ValueError(f"saved MoE layers {state.get('moe_layers')} != installed {sorted(self.layers)}")
