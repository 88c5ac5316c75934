"""``naive-expansion``: grow every MoE layer by K LoRA experts per task, one shared router (the
incremental MoE-LoRA expansion baseline of continual instruction tuning, e.g. the re-runs in CoIN-style
comparisons: new experts per task, old experts frozen, one router over all of them).

Every MoE layer l keeps its dense FFN frozen and holds LoRA experts on it (the same expert type as
LLaVA-CMoE's, ``methods.moe_base.lora_experts``; by default ``FFN_e`` = the FFN with expert e's LoRA on
gate, up and down):

    p   = softmax([W_1; ...; W_t] h)             one shared router, K rows appended per task
    y   = sum_{e in TopK(p)} (p_e / sum_{TopK} p) * FFN_e(h)
    L   = CE (+ aux_loss_coef * sum_l E_l * sum_e f_e P_e, off by default)

For task t >= 2, every layer appends K trainable copies of the K experts the new task's records use
most (one forward-only pass over a seeded 10% of them), each with its source's router row plus 1%
noise: the upcycling start, an expert that already answers and already takes the tokens its source
took. ``growth=fresh`` appends fresh experts instead (B = 0: the dense FFN) with rows at
``nn.Linear``'s init (``new_row_init=zero``: logit 0). The experts of tasks 1..t-1 are frozen and stay
bit-identical; the router, old rows included, trains on the new task (``train_old_rows=false``
freezes the old rows). Parameters grow linearly with the number of tasks. Because every task's tokens
are routed by one softmax over all rows trained on the latest task, old tasks' tokens drift towards new
experts: the failure mode this baseline exists to show.

Hyper-parameters, inferred choices and the task report: see ``NaiveExpansion``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

import torch

from bench.moe import LinearRouter, MoEFFN, measure_usage, subset_loader
from methods import register
from methods.moe_base import LoRAExpertHParams, MoEMethod, lora_experts

NEW_ROW_INITS = ("zero", "kaiming")
GROWTHS = ("fresh", "copy")


@dataclass
class NaiveExpansionHParams(LoRAExpertHParams):
    experts_per_task: int = 2
    aux_loss_coef: float = 0.0
    search: ClassVar[dict[str, tuple]] = {"experts_per_task": (2, 4), "aux_loss_coef": (0.0, 0.001, 0.01)}
    new_row_init: str = "kaiming"
    train_old_rows: bool = True
    growth: str = "copy"
    usage_fraction: float = 0.1
    router_init_noise: float = 0.01

    def validate(self) -> None:
        super().validate()
        if self.experts_per_task < 1:
            raise ValueError(f"experts_per_task must be >= 1, got {self.experts_per_task}")
        if self.top_k > self.experts_per_task:
            # task 1 has only K experts to choose from
            raise ValueError(f"top_k={self.top_k} exceeds experts_per_task={self.experts_per_task}")
        if self.growth not in GROWTHS:
            raise ValueError(f"growth must be one of {', '.join(GROWTHS)}, got {self.growth!r}")
        if not 0 < self.usage_fraction <= 1:
            raise ValueError(f"usage_fraction must be in (0, 1], got {self.usage_fraction}")
        if self.router_init_noise < 0:
            raise ValueError(f"router_init_noise must be >= 0, got {self.router_init_noise}")
        if self.new_row_init not in NEW_ROW_INITS:
            raise ValueError(f"new_row_init must be one of {', '.join(NEW_ROW_INITS)}, got {self.new_row_init!r}")


@register("naive-expansion")
class NaiveExpansion(MoEMethod):
    """Naive expansion, N-shared variant (module docstring: the forward and the growth).

    Hyper-parameters (``--set key=value``; [INFERRED] where no source fixes them):
        experts_per_task=2     K: the same K and type as LLaVA-CMoE's task-1 experts (N0 = 2).
        expert_type="lora-ffn", lora_rank=32, lora_alpha=64.0, lora_init="kaiming"   the expert
                               (``LoRAExpertHParams``): K experts on every layer train ~1.2x seq-ft's
                               LoRA per task (r = seq-ft's rank, alpha = 2r as CoIN).
        growth="copy"          [INFERRED] new experts copy the K most-used old experts, rows included
                               (use counted on the supervised positions of ``usage_fraction=0.1`` of the
                               task's records, ``bench.moe.measure_usage``; ``router_init_noise=0.01``
                               relative to the row's std). "fresh": new experts at the dense FFN with new
                               rows; they lose the top-k to the old rows, which were trained to win it,
                               and an unselected row gets no gradient: on the coin-mini stream (seed 0)
                               the two fresh experts of VQAv2 took 2-17% of its tokens and VQAv2 and
                               OCR-VQA stayed at chance right after training (mean final training loss
                               1.29 against 1.13 with copies).
        new_row_init="kaiming" [INFERRED] growth "fresh" only: new rows at nn.Linear's init; "zero"
                               (logit 0) loses the top-k to every old row with a positive logit.
        aux_loss_coef=0.0      [INFERRED] no load balancing. The Switch loss balances a layer's tokens over
                               all its E = tK experts, frozen ones included, so it drives the K trainable
                               experts towards K/E = 1/t of the assignments and the new task onto experts
                               that cannot learn it (measured: near-uniform utilisation over all experts,
                               and ImageNet / GQA at chance right after training on them).
        train_old_rows=True    the router trains as a whole on each task, as the literature runs it;
                               false freezes old rows (old experts stay frozen either way).
        top_k=2, moe_layers="all", dispatch="fast"; routing is dropless.

    [INFERRED] the first K experts are created in ``begin_task`` of task 1, so row 0 of the accuracy
    matrix is the dense base.

    ``expert_utilisation`` (from ``MoEMethod``) counts the task's training tokens: usage is reset in
    ``begin_task`` and the report is read before evaluation.
    """
    HParams = NaiveExpansionHParams

    def __init__(self, hparams: NaiveExpansionHParams | None = None):
        super().__init__(hparams)
        self.tasks_seen = 0  # expansions done: the layers hold tasks_seen * K experts
        self.sources: dict[int, list[int]] | None = None  # the last growth's copy sources ("copy")

    def build_layer(self, index: int, mlp: nn.Module) -> MoEFFN:
        """Task 1's K LoRA experts on the frozen FFN and a K-row router (dropless top-k)."""
        hp = self.hp
        experts = lora_experts(mlp, hp.experts_per_task, hp)
        router = LinearRouter(experts.d_in, hp.experts_per_task, device=mlp.gate_proj.weight.device)
        return MoEFFN(experts, router, top_k=hp.top_k, dispatch=hp.dispatch)

    def _expand(self, sources: dict[int, list[int]] | None = None) -> None:
        """One task's growth: K new experts and K new router rows per layer, everything older frozen.
        ``sources`` (growth "copy"): per layer, the K old experts the new ones copy, rows included."""
        if not self.layers:
            self.install(self.model)
        else:
            K = self.hp.experts_per_task
            self.freeze_moe()
            for i, layer in self.layers.items():
                if sources is None:
                    layer.experts.append(K)
                    layer.router.append_rows(K)  # its own parameter group: frozen as a whole next task
                    if self.hp.new_row_init == "zero":
                        with torch.no_grad():
                            layer.router.groups[-1].zero_()
                else:
                    for source in sources[i]:
                        layer.experts.append(1, copy_from=source)
                    rows = layer.router.weight.detach()[sources[i]]
                    noise = self.hp.router_init_noise * float(rows.float().std(unbiased=False))
                    layer.router.append_rows(K, copy_from=sources[i], noise_std=noise)
        if self.hp.train_old_rows:
            for layer in self.layers.values():
                layer.router.unfreeze()
        self.tasks_seen += 1

    def begin_task(self, task_index: int, task, train_loader) -> None:
        sources = None
        if self.hp.growth == "copy" and self.layers:
            subset = subset_loader(train_loader, self.hp.usage_fraction, seed=self.ctx.run_seed * 1000 + task_index)
            usage = measure_usage(self.model, self.layers, subset, self.ctx.device, lambda batch: None)
            # the K experts the new task's tokens use most, most used first (ties keep the lower id)
            sources = {i: torch.argsort(f, descending=True, stable=True)[: self.hp.experts_per_task].tolist()
                       for i, f in usage.items()}
        self.sources = sources
        self._expand(sources)
        self.reset_usage()

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report["tasks_seen"] = self.tasks_seen
        if self.sources is not None:
            report["copy_sources"] = {str(i): src for i, src in self.sources.items()}
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
        self.check_saved_layers(state.get("moe_layers", []))
