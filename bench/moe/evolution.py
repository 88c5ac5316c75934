"""Expert evolution: experts that follow a trained expert without gradient (EvoMoE,
arXiv 2505.23830, Eq. 1).

After every optimiser step on the trained expert θ_1, every evolved expert θ_n moves towards it:

    "ema"     θ_n ← β θ_n + (1 − β) θ_1          the project's reading of the paper's Eq. 1 (default)
    "scaled"  θ_n ← θ_n + (1 − β) Δθ_1           Δθ_1 = θ_1 after the step − θ_1 before it

β is redrawn at every step, uniformly from the evolved expert's own range (EvoMoE: [0.90, 0.99],
[0.80, 0.89], [0.70, 0.79] for experts 2, 3, 4). Both readings agree at β = 0 (θ_n = θ_1 after one
step when θ_n started equal to θ_1) and keep "10 % of the update" at β = 0.9.

Works on any ``ExpertSet`` whose experts share one shape (``FFNExperts``, ``LoRAExperts``), one or many
sets (one per MoE layer) at once. The β draws come from a private, seeded ``torch.Generator`` so that
they neither consume nor depend on the global RNG, and its state can be saved for an exact resume.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from bench.moe.experts import ExpertSet

EvolutionRule = Literal["ema", "scaled"]


@torch.no_grad()
def ema_update(target: Sequence[torch.Tensor], source: Sequence[torch.Tensor], beta: float) -> None:
    """In place, per tensor: ``t ← β t + (1 − β) s``."""
    for t, s in zip(target, source, strict=True):
        t.mul_(beta).add_(s, alpha=1.0 - beta)


@torch.no_grad()
def scaled_update(target: Sequence[torch.Tensor], delta: Sequence[torch.Tensor], beta: float) -> None:
    """In place, per tensor: ``t ← t + (1 − β) Δ``."""
    for t, d in zip(target, delta, strict=True):
        t.add_(d, alpha=1.0 - beta)


class BetaSampler:
    """Draws β ~ U[lo, hi] per range, ``groups`` independent draws per range at every call.

    ``draw()`` returns a [groups, len(ranges)] float64 tensor (one row per group, e.g. per MoE layer, or
    a single row shared by all layers).
    """

    def __init__(self, ranges: Sequence[tuple[float, float]], seed: int, groups: int = 1):
        for lo, hi in ranges:
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"beta range [{lo}, {hi}] must satisfy 0 <= lo <= hi <= 1")
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.groups = groups
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        lo_hi = torch.tensor(self.ranges, dtype=torch.float64).reshape(-1, 2)
        self._lo, self._width = lo_hi[:, 0], lo_hi[:, 1] - lo_hi[:, 0]

    def draw(self) -> torch.Tensor:
        u = torch.rand(self.groups, len(self.ranges), generator=self.generator, dtype=torch.float64)
        return self._lo + self._width * u

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


class ExpertEvolution:
    """Evolves experts ``targets`` of every set in ``expert_sets`` towards expert ``source``.

    Call ``start()`` when the evolution phase begins (the scaled rule snapshots θ_1 there), ``step()``
    after every optimiser step, ``stop()`` when the phase ends (frees the snapshot).

    Args:
        expert_sets: one ``ExpertSet`` per MoE layer.
        source: the trained expert (θ_1; index 0 in EvoMoE).
        targets: the evolved experts, in the order of ``ranges``.
        ranges: one (lo, hi) β range per target.
        rule: "ema" or "scaled" (module docstring).
        seed: seed of the β generator.
        per_set_beta: draw β separately for every set (layer) instead of one β per target shared by all
            layers at a step.
    """

    def __init__(self, expert_sets: Sequence[ExpertSet], source: int, targets: Sequence[int],
                 ranges: Sequence[tuple[float, float]], rule: EvolutionRule = "ema", seed: int = 0,
                 per_set_beta: bool = False):
        if rule not in ("ema", "scaled"):
            raise ValueError(f"evolution rule must be 'ema' or 'scaled', not {rule!r}")
        if len(targets) != len(ranges):
            raise ValueError(f"{len(targets)} evolved experts but {len(ranges)} beta ranges")
        if source in targets:
            raise ValueError(f"expert {source} cannot evolve towards itself")
        self.expert_sets = list(expert_sets)
        self.source, self.targets, self.rule = source, list(targets), rule
        self.sampler = BetaSampler(ranges, seed, groups=len(self.expert_sets) if per_set_beta else 1)
        self._previous: list[list[torch.Tensor]] | None = None  # θ_1 before the step ("scaled")
        self.last_betas: torch.Tensor | None = None  # [sets or 1, targets], the latest step's draws

    def start(self) -> None:
        if self.rule == "scaled":
            # One copy of θ_1 per layer: the memory cost of the scaled reading, held only in the phase.
            self._previous = [[p.detach().clone() for p in s.expert_parameters(self.source)]
                              for s in self.expert_sets]

    def stop(self) -> None:
        self._previous = None

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        """Apply one evolution step to every set; returns the β used, [sets or 1, targets]."""
        if self.rule == "scaled" and self._previous is None:
            raise RuntimeError("ExpertEvolution.step() with the scaled rule needs start() first")
        betas = self.sampler.draw()
        for i, experts in enumerate(self.expert_sets):
            row = betas[i if betas.shape[0] > 1 else 0]
            src = [p.detach() for p in experts.expert_parameters(self.source)]
            if self.rule == "scaled":
                prev = self._previous[i]
                delta = [s - q for s, q in zip(src, prev)]
                for n, beta in zip(self.targets, row.tolist()):
                    scaled_update([p.detach() for p in experts.expert_parameters(n)], delta, beta)
                for q, s in zip(prev, src):
                    q.copy_(s)
            else:
                for n, beta in zip(self.targets, row.tolist()):
                    ema_update([p.detach() for p in experts.expert_parameters(n)], src, beta)
        self.last_betas = betas
        return betas
