"""``evomoe``: expert evolution + Dynamic Token-aware Router on the continual stream (EvoMoE,
arXiv 2505.23830).

Structure (installed once, when the first task begins): every MoE layer's FFN is copied into E experts
(``FFNExperts.from_mlp``) and routed top-1 by a ``HyperRouter`` (DTR: image tokens through H^V, text
tokens through H^T, shared projection φ to E logits; Eqs. 2-8). Expert 0 of the code is the
paper's θ_1 (the trained FFN), experts 1..E-1 are θ_2..θ_E (the evolved ones).

Every task t = 1..T splits its step budget S:

    evolution phase, S_e = round(evolution_fraction · S) steps:
        dense on θ_1: router rows 1..E-1 are masked, so top-1 has one choice with probability 1 and
        the layer's output is exactly θ_1's FFN output. θ_1 trains; θ_2..θ_E get no gradient and after
        every optimiser step evolve (bench.moe.evolution):
            ema     θ_n ← β θ_n + (1 − β) θ_1                 (default; the project's reading of Eq. 1)
            scaled  θ_n ← θ_n + (1 − β) Δθ_1                  (``evolution_rule=scaled``)
        β redrawn each step, uniformly from expert n's range ([0.90,0.99], [0.80,0.89], [0.70,0.79]).
    router phase, the remaining S - S_e steps:
        experts frozen; the hypernetworks and φ train; top-1 over all E experts, output scaled by
        ρ_max; loss = LM + 0.001 · Σ_layers E Σ_e f_e P_e (Eq. 9).

Task t >= 2 continues from the current experts and router: θ_1 keeps training, θ_2..θ_E keep tracking
it, the router is retrained for the new mix (nothing is re-copied; no mechanism against forgetting
beyond what EvoMoE itself has).

How the phases run. Each phase is a ``TrainingPhase`` (``training_phases``) that the shared trainer
runs with its own AdamW and its own warm-up + cosine schedule over the phase's steps, so the router
phase trains on a full schedule of its own rather than on the tail of the evolution phase's. The MoE
is installed at the first ``begin_task``: row 0 of the accuracy matrix is the dense stage-0 base, as
for every other method.

Ablations (the paper's Table 2):
  * ``router=linear``   — "expert evolution + linear router": a ``LinearRouter`` replaces the DTR.
  * ``experts=copied``  — "MoE-tuning + DTR": the E experts are plain copies of the FFN and, as in
    MoE-tuning, experts and router train together for the whole task budget (one joint phase, no
    evolution, no dense phase; ``evolution_*`` knobs are ignored).

Reported per task (``task_report``): expert utilisation per layer (tokens of this task's router phase —
or of the whole task for ``experts=copied`` — as routed during training), expert diversity (mean
pairwise cosine distance of the flattened expert weights, ``bench.moe.diversity``), the phase split and
the mean β drawn per evolved expert.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bench.moe import FFNExperts, HyperRouter, LinearRouter, MoEFFN
from bench.moe.diversity import diversity_report
from bench.moe.evolution import ExpertEvolution
from methods import register
from methods.base import TrainingPhase, hparams_dict
from methods.moe_base import MoEHParams, MoEMethod

# Seed offset of the β generator: the run seed picks the draws, the offset keeps the stream distinct
# from anything else seeded with the bare run seed.
BETA_SEED_OFFSET = 0xE70


@dataclass
class EvoMoEHParams(MoEHParams):
    """EvoMoE hyper-parameters (the paper's defaults; [INFERRED] = the project's choice, no source confirms it).

    top_k               1 (paper Table 11: top-1 beats top-2). In the evolution phase the layer routes
                        top-1 regardless, since only θ_1 is routable.
    aux_loss_coef       0.001 (paper Eq. 9, α), summed over MoE layers as in MoE-LLaVA.
    moe_layers          "all" [deviation: the paper, on MoE-LLaVA's 7B setting, uses every other layer]. θ_1 is
                        the one expert that learns a task, so a layer without MoE keeps its stage-0 FFN
                        for the whole stream; on the 4-layer tiny decoder "alternate" leaves half the FFNs
                        frozen and OCR-VQA's final training loss at 1.69 (right after training: the
                        constant answer), against 1.65 with every layer (mean over the eight tasks: 1.14
                        against 1.04; coin-mini, seed 0). ``--set moe_layers=alternate`` gives the paper's.
    num_experts         4: θ_1 plus 3 evolved experts (paper Table 12).
    evolution_fraction  0.8 [INFERRED]: share of each task's steps in the evolution phase; the rest is
                        the router phase. 0 = router phase only, 1 = evolution only (the router is then
                        never trained and evaluation routes with its current weights). θ_1 is the only
                        expert that learns the task, while the router phase chooses among θ_1 and its
                        lagging copies; on the coin-mini stream (seed 0) the router phase moved the
                        training loss by at most 0.08 at 0.5, and the mean final training loss over the
                        eight tasks was 1.226 at 0.5 against 1.140 at 0.8.
    evolution_rule      "ema" (the project's reading of Eq. 1) or "scaled" (θ_n += (1 − β) Δθ_1).
    beta_ranges         (0.90, 0.99, 0.80, 0.89, 0.70, 0.79): flat (lo, hi) pairs, one per evolved
                        expert, in expert order (paper); ``--set beta_ranges=0.9,0.99,...``.
    beta_per_layer      False [INFERRED]: one β per evolved expert per step, shared by all layers (the
                        paper evolves "the" FFN as one model); True draws each layer's β separately.
    router              "dtr" (HyperRouter) or "linear" (ablation "evolution + linear router").
    experts             "evolved" or "copied" (ablation "MoE-tuning + DTR": copies trained jointly with
                        the router for the whole task [INFERRED reading of Table 2]).
    dtr_r, dtr_h, dtr_m 16, 4, 16 [INFERRED]: DTR bottleneck, hypernetwork basis size,
                        embedding size.
    Capacity: dropless (the harness default for everything but MoE-LLaVA); router in float32.
    """

    top_k: int = 1
    aux_loss_coef: float = 0.001
    moe_layers: str = "all"
    num_experts: int = 4
    evolution_fraction: float = 0.8
    search: ClassVar[dict[str, tuple]] = {"evolution_fraction": (0.5, 0.8, 0.9)}
    evolution_rule: str = "ema"
    beta_ranges: tuple[float, ...] = (0.90, 0.99, 0.80, 0.89, 0.70, 0.79)
    beta_per_layer: bool = False
    router: str = "dtr"
    experts: str = "evolved"
    dtr_r: int = 16
    dtr_h: int = 4
    dtr_m: int = 16

    def validate(self) -> None:
        super().validate()
        if self.num_experts < 2:
            raise ValueError(f"num_experts must be >= 2, got {self.num_experts}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if not 0.0 <= self.evolution_fraction <= 1.0:
            raise ValueError(f"evolution_fraction must be in [0, 1], got {self.evolution_fraction}")
        if self.evolution_rule not in ("ema", "scaled"):
            raise ValueError(f"evolution_rule must be 'ema' or 'scaled', got {self.evolution_rule!r}")
        if self.router not in ("dtr", "linear"):
            raise ValueError(f"router must be 'dtr' or 'linear', got {self.router!r}")
        if self.experts not in ("evolved", "copied"):
            raise ValueError(f"experts must be 'evolved' or 'copied', got {self.experts!r}")
        if len(self.beta_ranges) != 2 * (self.num_experts - 1):
            raise ValueError(f"beta_ranges needs one (lo, hi) pair per evolved expert: "
                             f"{2 * (self.num_experts - 1)} numbers, got {len(self.beta_ranges)}")
        for lo, hi in self.pairs():
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"beta range [{lo}, {hi}] must satisfy 0 <= lo <= hi <= 1")
        if min(self.dtr_r, self.dtr_h, self.dtr_m) < 1:
            raise ValueError("dtr_r, dtr_h and dtr_m must be >= 1")

    def pairs(self) -> list[tuple[float, float]]:
        b = list(self.beta_ranges)
        return [(float(b[i]), float(b[i + 1])) for i in range(0, len(b) - 1, 2)]


def _row_owner(router: nn.Module) -> LinearRouter:
    """The module holding the router's maskable rows: φ of a DTR, or the linear router itself."""
    return router.proj if isinstance(router, HyperRouter) else router


def _set_trainable(params, on: bool) -> None:
    for p in params:
        p.requires_grad_(on)
        if not on:
            p.grad = None  # so AdamW skips it even with weight decay


@register("evomoe")
class EvoMoE(MoEMethod):
    HParams = EvoMoEHParams

    # phases of a task; "idle" between tasks (full MoE, nothing trainable)
    EVOLUTION, ROUTER, JOINT, IDLE = "evolution", "router", "joint", "idle"

    def __init__(self, hparams: EvoMoEHParams | None = None):
        super().__init__(hparams)
        self.evolution: ExpertEvolution | None = None
        self.phase = self.IDLE
        self.evolution_steps = 0  # S_e of the current task
        self.router_steps = 0
        self.tasks_seen = 0
        self._beta_sum: torch.Tensor | None = None
        self._beta_count = 0

    @property
    def evolved(self) -> bool:
        return self.hp.experts == "evolved"

    # --- installation ----------------------------------------------------------------------------
    def build_layer(self, index: int, mlp: nn.Module) -> MoEFFN:
        hp = self.hp
        d = mlp.gate_proj.in_features
        device = mlp.gate_proj.weight.device
        if hp.router == "dtr":
            router = HyperRouter(d, hp.num_experts, r=hp.dtr_r, h=hp.dtr_h, m=hp.dtr_m, device=device)
        else:
            router = LinearRouter(d, hp.num_experts, device=device)
        return MoEFFN(FFNExperts.from_mlp(mlp, hp.num_experts), router, top_k=hp.top_k, dispatch=hp.dispatch)

    def _install(self) -> None:
        """The MoE of every chosen layer: E copies of its FFN and a router; nothing trainable yet."""
        self.install(self.model)
        for layer in self.layers.values():
            _set_trainable(layer.parameters(), False)
        if self.evolved:
            self.evolution = ExpertEvolution(
                [layer.experts for layer in self.layers.values()], source=0,
                targets=range(1, self.hp.num_experts), ranges=self.hp.pairs(), rule=self.hp.evolution_rule,
                seed=self.ctx.run_seed + BETA_SEED_OFFSET, per_set_beta=self.hp.beta_per_layer)

    # --- parameter sets --------------------------------------------------------------------------
    def _expert_params(self, ids) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for e in ids for p in layer.experts.expert_parameters(e)]

    def _router_params(self) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.router.parameters()]

    # --- phases ----------------------------------------------------------------------------------
    def _enter(self, phase: str) -> None:
        E = self.hp.num_experts
        if self.phase == self.EVOLUTION and self.evolution is not None:
            self.evolution.stop()
        for layer in self.layers.values():
            rows = _row_owner(layer.router)
            if phase == self.EVOLUTION:
                # dense on θ_1: the only routable row gets probability 1, weight exactly 1.0
                _set_trainable(layer.router.parameters(), False)
                layer.experts.freeze()
                layer.experts.unfreeze(0)
                rows.mask_rows(range(1, E))
                layer.top_k = 1
            else:
                rows.unmask_rows(range(E))
                layer.top_k = self.hp.top_k
                layer.experts.freeze()
                if phase == self.JOINT:
                    layer.experts.unfreeze()
                _set_trainable(layer.router.parameters(), phase in (self.ROUTER, self.JOINT))
        if phase == self.EVOLUTION and self.evolution is not None:
            self.evolution.start()
        if phase in (self.ROUTER, self.JOINT):
            self.reset_usage()  # utilisation = this task's routed training tokens
        self.phase = phase

    # --- lifecycle -------------------------------------------------------------------------------
    def begin_task(self, task_index: int, task, train_loader) -> None:
        if not self.layers:
            self._install()
        self._beta_sum, self._beta_count = None, 0
        self._enter(self.IDLE)
        self.reset_usage()

    def training_phases(self, task_index: int, task, train_loader, steps: int):
        """``experts=copied``: one joint phase. Evolved: the evolution phase (θ_1 trained densely,
        θ_2..θ_E evolving), then the router phase (experts frozen, router trained), each on its own
        schedule; a phase with no steps is skipped by the trainer."""
        if not self.evolved:
            self.evolution_steps, self.router_steps = 0, 0
            self._enter(self.JOINT)
            yield TrainingPhase("joint", self._expert_params(range(self.hp.num_experts)) + self._router_params(),
                                steps)
            return
        self.evolution_steps = int(self.hp.evolution_fraction * steps + 0.5)
        self.router_steps = steps - self.evolution_steps
        self._enter(self.EVOLUTION)
        # θ_2..θ_E change without gradient in this phase (after_optimizer_step)
        yield TrainingPhase("evolution", self._expert_params([0]), self.evolution_steps,
                            evolving=self._expert_params(range(1, self.hp.num_experts)))
        self._enter(self.ROUTER)
        yield TrainingPhase("router", self._router_params(), self.router_steps)

    def after_optimizer_step(self) -> None:
        if self.phase == self.EVOLUTION:
            betas = self.evolution.step()
            self._beta_sum = betas.sum(0) if self._beta_sum is None else self._beta_sum + betas.sum(0)
            self._beta_count += betas.shape[0]

    def auxiliary_loss(self) -> torch.Tensor | None:
        # Dense evolution phase: one routable expert, the balance loss is the constant 1 per layer.
        if self.phase == self.EVOLUTION:
            return None
        return super().auxiliary_loss()

    def end_task(self, task_index: int, task, train_loader) -> None:
        # Evaluation (and the next task's begin) sees the full top-k MoE with nothing trainable.
        self._enter(self.IDLE)
        self.tasks_seen += 1

    # --- reporting -------------------------------------------------------------------------------
    def inactive_parameters_per_token(self) -> int:
        """MoEMethod's count (experts outside the top-k) plus, for the DTR, the image hypernetwork,
        which a text token never passes through."""
        inactive = super().inactive_parameters_per_token()
        for layer in self.layers.values():
            if isinstance(layer.router, HyperRouter):
                inactive += sum(p.numel() for p in layer.router.image.parameters())
        return inactive

    def task_report(self) -> dict[str, Any]:
        report = super().task_report()
        report["expert_utilisation_scope"] = ("router-phase training tokens" if self.evolved
                                              else "training tokens")
        report["expert_diversity"] = diversity_report(self.layers)
        report["phases"] = {"evolution_steps": self.evolution_steps, "router_steps": self.router_steps,
                            "joint_steps": 0 if self.evolved else self.ctx.steps_per_task}
        if self._beta_count:
            mean = (self._beta_sum / self._beta_count).tolist()
            report["beta_mean"] = {str(n): round(b, 6) for n, b in zip(range(1, self.hp.num_experts), mean)}
        return report

    # --- resume ----------------------------------------------------------------------------------
    def _hparams_json(self) -> Any:
        # every knob but the dispatch path (fast and eager compute the same thing) must match on resume
        hp = json.loads(json.dumps(hparams_dict(self)))
        hp.pop("dispatch", None)
        return hp

    def state_dict(self) -> dict[str, Any]:
        """Between tasks: the β generator (so later draws continue the same stream) and the task count;
        experts, routers and row masks live in the model's own state dict."""
        state: dict[str, Any] = {"version": 1, "tasks_seen": self.tasks_seen, "hparams": self._hparams_json()}
        if self.evolution is not None:
            state["beta_generator"] = self.evolution.sampler.get_state().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unsupported evomoe state version {state.get('version')!r}")
        if state["hparams"] != self._hparams_json():
            raise ValueError("evomoe state was saved with different hyper-parameters: "
                             f"{state['hparams']} vs {self._hparams_json()}")
        self.tasks_seen = int(state["tasks_seen"])
        if self.tasks_seen and not self.layers:
            self._install()  # the MoE exists from the first task on
        if self.evolution is not None:
            self.evolution.sampler.set_state(state["beta_generator"])
