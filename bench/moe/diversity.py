"""Expert diversity: how different the experts of a layer are (the "expert uniformity" EvoMoE claims to
fix).

For experts e with all their parameters flattened into one vector v_e:

    d(i, j)    = 1 − <v_i, v_j> / sqrt(<v_i, v_i> <v_j, v_j>)        cosine distance, in [0, 2]
    diversity  = mean_{i<j} d(i, j)                                   per layer
    model      = mean over MoE layers of the per-layer diversity

Identical (or positively scaled) experts give 0; MoE-LLaVA's freshly copied experts are exactly 0.

The vectors are never concatenated: the Gram matrix ``G_ij = Σ_tensors <p_i, p_j>`` is accumulated
tensor by tensor in float64, so memory stays one tensor pair even for 7B-sized FFN experts. A
zero-norm expert has no direction: its cosine with a non-zero expert counts as 0 (distance 1) and two
zero experts count as identical (distance 0).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from bench.moe.experts import ExpertSet


@torch.no_grad()
def expert_gram(experts: ExpertSet) -> torch.Tensor:
    """``G [E, E]`` float64 on CPU: inner products of the experts' flattened parameters."""
    params = [[p.detach() for p in experts.expert_parameters(e)] for e in range(experts.num_experts)]
    E = len(params)
    gram = torch.zeros(E, E, dtype=torch.float64)
    for i in range(E):
        for j in range(i, E):
            if len(params[i]) != len(params[j]):
                raise ValueError(f"experts {i} and {j} have different parameter lists")
            total = 0.0
            for a, b in zip(params[i], params[j]):
                if a.shape != b.shape:
                    raise ValueError(f"experts {i} and {j} differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
                total += float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
            gram[i, j] = gram[j, i] = total
    return gram


def cosine_distance_matrix(gram: torch.Tensor) -> torch.Tensor:
    """``D [E, E]`` from a Gram matrix: ``1 − G_ij / sqrt(G_ii G_jj)``, clamped to [0, 2]."""
    norms_sq = gram.diagonal()
    denom = torch.sqrt(norms_sq.unsqueeze(0) * norms_sq.unsqueeze(1))
    cos = torch.where(denom > 0, gram / denom.clamp(min=torch.finfo(gram.dtype).tiny), torch.zeros_like(gram))
    both_zero = (norms_sq.unsqueeze(0) == 0) & (norms_sq.unsqueeze(1) == 0)
    cos = torch.where(both_zero, torch.ones_like(cos), cos)
    dist = (1.0 - cos).clamp(0.0, 2.0)
    dist.fill_diagonal_(0.0)
    return dist


def mean_pairwise(dist: torch.Tensor) -> float:
    """Mean of the strict upper triangle; 0.0 for a single expert (nothing to differ from)."""
    E = dist.shape[0]
    if E < 2:
        return 0.0
    i, j = torch.triu_indices(E, E, offset=1)
    return float(dist[i, j].mean())


def expert_diversity(experts: ExpertSet) -> float:
    """Mean pairwise cosine distance of one layer's experts (module docstring)."""
    return mean_pairwise(cosine_distance_matrix(expert_gram(experts)))


def _sig(x: float, digits: int) -> float:
    # significant digits, not decimals: early in training distances are ~1e-7 and must not round to 0
    return float(f"{x:.{digits}g}")


def diversity_report(layers: Mapping[int, Any], digits: int = 6) -> dict[str, Any]:
    """JSON-able diversity of MoE layers ``{layer id: MoEFFN or ExpertSet}``, ``digits`` significant:
    ``{"mean": m, "per_layer": {id: d}, "pairwise": {id: [[d_ij]]}}``; mean is None without layers."""
    per_layer, pairwise = {}, {}
    for i, layer in layers.items():
        experts = layer if isinstance(layer, ExpertSet) else layer.experts
        dist = cosine_distance_matrix(expert_gram(experts))
        per_layer[str(i)] = mean_pairwise(dist)
        pairwise[str(i)] = [[_sig(float(x), digits) for x in row] for row in dist]
    mean = _sig(sum(per_layer.values()) / len(per_layer), digits) if per_layer else None
    return {"mean": mean, "per_layer": {k: _sig(v, digits) for k, v in per_layer.items()}, "pairwise": pairwise}
