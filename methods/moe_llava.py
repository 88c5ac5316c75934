"""``moe-llava``: MoE-LLaVA's MoE-tuning run through the continual stream (arXiv 2401.15947,
PKU-YuanGroup/MoE-LLaVA).

At the start of task 1 the FFN of every MoE layer (every other decoder layer by default, MoE-LLaVA's
``range(L)[::2]``) is deep-copied into E SwiGLU experts and gets a bias-free fp32 linear router
``wg = Linear(d, E)``. Every later task trains the same experts and routers with no continual
mechanism: no freezing, no growth, no replay. Routing is DeepSpeed 0.9.5 ``top2gating``
(``bench.moe.gating``):

    g  = softmax(x W_g^T)                     e1 = argmax g
    e2 = argmax_{e != e1} (x W_g^T + Gumbel)  (second_choice_noise)
    C  = ceil(S / E * k * cf)                 cf = 1.5 train / 2.0 eval, min_capacity 0
    y  = w1 E_e1(x) + w2 E_e2(x)              w renormalised over the surviving assignments
    L  = CE + 0.01 * sum_{MoE layers} E * sum_e mean_s(g_se) * mean_s(1[e1_s = e])

Because all E experts start as the same FFN and the top-2 weights sum to 1, the converted model
computes exactly the dense model until training makes the experts differ (when no token is dropped
for capacity).

Hyper-parameters and inferred choices: see ``MoELLaVA``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.moe import FFNExperts, LinearRouter, MoEFFN, decoder_layers
from methods import register
from methods.moe_base import MoEHParams, MoEMethod


@dataclass
class MoELLaVAHParams(MoEHParams):
    num_experts: int = 4
    search: ClassVar[dict[str, tuple]] = {"num_experts": (2, 4, 8)}
    capacity_factor_train: float | None = 1.5
    capacity_factor_eval: float | None = 2.0
    min_capacity: int = 0
    second_choice_noise: bool = True
    train_dense_ffns: bool = False

    def validate(self) -> None:
        super().validate()
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            cf = getattr(self, name)
            if cf is not None and cf <= 0:
                raise ValueError(f"{name} must be > 0 or none (dropless), got {cf}")
        if self.min_capacity < 0:
            raise ValueError(f"min_capacity must be >= 0, got {self.min_capacity}")


@register("moe-llava")
class MoELLaVA(MoEMethod):
    """MoE-LLaVA's MoE-tuning on the continual stream (module docstring: the routing equations).

    Hyper-parameters (``--set key=value``; defaults are MoE-LLaVA's unless noted):
        num_experts=4              E, MoE-LLaVA's default.
        top_k=2                    experts per token.
        aux_loss_coef=0.01         MoE-LLaVA's ``router_aux_loss_coef``; summed over MoE layers.
        capacity_factor_train=1.5  DeepSpeed ``capacity_factor``; ``none`` = dropless.
        capacity_factor_eval=2.0   DeepSpeed ``eval_capacity_factor``; ``none`` = dropless.
        min_capacity=0             DeepSpeed ``min_capacity`` as MoE-LLaVA sets it.
        second_choice_noise=True   Gumbel noise on the second choice, in training and in evaluation. This
                                   is what DeepSpeed 0.9.5 ``top2gating`` does unconditionally
                                   (``sharded_moe.top2gating``), so the default follows it; evaluation is therefore
                                   stochastic (it draws from the global RNG, which the harness seeds).
        train_dense_ffns=False     MoE-LLaVA's Stage III selects trainable parameters by substring match
                                   (``gate_proj``, ``up_proj``, ``down_proj``, ``wg``), which also trains
                                   the dense FFNs of the non-MoE layers. The paper says "trained:
                                   experts + routers", so the default leaves them frozen; ``true``
                                   reproduces the substring quirk.
        moe_layers="alternate"     which decoder layers become MoE ("alternate", "all" or "0,2").
        dispatch="fast"            sorted dispatch ("eager" = the reference loop; same result).

    [INFERRED] choices: the conversion happens in ``begin_task`` of the first task rather than at attach,
    so row 0 of the accuracy matrix is the dense base model itself; the router uses ``nn.Linear``'s
    default init as MoE-LLaVA's ``wg``.

    The task report adds, per MoE layer, the fraction of top-k assignments dropped for capacity during
    the task's training; ``expert_utilisation`` (from ``MoEMethod``) counts the task's training tokens
    (usage is reset in ``begin_task`` and the report is read before evaluation).
    """
    HParams = MoELLaVAHParams

    def __init__(self, hparams: MoELLaVAHParams | None = None):
        super().__init__(hparams)
        # per MoE layer: assignments dropped for capacity / assignments routed, during this task's training
        # (kept on the model's device: reading them back per step would synchronise every micro-batch)
        self._dropped: dict[int, torch.Tensor | int] = {}
        self._routed: dict[int, int] = {}

    # --- construction ----------------------------------------------------------------------------
    def build_layer(self, index: int, mlp: nn.Module) -> MoEFFN:
        """E deep copies of the layer's FFN (DeepSpeed ``MoE(expert=mlp)``) and a fresh fp32 router."""
        hp = self.hp
        experts = FFNExperts.from_mlp(mlp, hp.num_experts)
        router = LinearRouter(experts.d_in, hp.num_experts, device=mlp.gate_proj.weight.device)
        return MoEFFN(experts, router, top_k=hp.top_k, capacity_factor_train=hp.capacity_factor_train,
                      capacity_factor_eval=hp.capacity_factor_eval, min_capacity=hp.min_capacity,
                      second_choice_noise=hp.second_choice_noise, dispatch=hp.dispatch)

    @property
    def converted(self) -> bool:
        return bool(self.layers)

    def _set_trainable(self) -> None:
        """Experts and routers of every MoE layer (+ the dense FFNs of the other layers if asked)."""
        for layer in self.layers.values():
            layer.experts.unfreeze()
            for router in layer.routers:
                router.unfreeze()
        if self.hp.train_dense_ffns:
            for i, block in enumerate(decoder_layers(self.model)):
                if i not in self.layers:
                    block.mlp.requires_grad_(True)

    # --- lifecycle -------------------------------------------------------------------------------
    def begin_task(self, task_index: int, task, train_loader) -> None:
        if not self.converted:
            self.install(self.model)  # the one-time MoE conversion; later tasks reuse these layers
        self._set_trainable()
        self.reset_usage()
        self._dropped = {i: 0 for i in self.layers}
        self._routed = {i: 0 for i in self.layers}

    def auxiliary_loss(self) -> torch.Tensor | None:
        # Called once per training micro-batch right after the forward: the one place that sees every
        # training forward's routing plan, so the capacity-drop tally for the task report lives here.
        for i, layer in self.layers.items():
            out = layer.last_output
            if out is not None and i in self._dropped:
                self._dropped[i] = self._dropped[i] + out.dropped_counts.detach().sum()
                self._routed[i] += out.kept.numel()
        return super().auxiliary_loss()

    # --- reporting -------------------------------------------------------------------------------
    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report["capacity_dropped_fraction"] = {
            str(i): round(float(self._dropped[i]) / max(1, self._routed[i]), 6) for i in self._dropped}
        return report

    # --- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Every tensor lives in the model; the method only needs to know whether to rebuild the layers.
        return {"converted": self.converted, "moe_layers": sorted(self.layers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.install_if_saved(bool(state.get("converted")))
        self.check_saved_layers(state.get("moe_layers", []))
