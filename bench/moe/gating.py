"""Top-k gating with optional capacity, and the load-balancing loss (DeepSpeed 0.9.5 top2gating).

``top_k_gating`` turns router logits into a routing plan, the ``MoEOutput`` that both dispatch paths
consume and that the MoE layer records after every forward. For k = 2 with a capacity factor and
second-choice noise it reproduces DeepSpeed 0.9.5 ``sharded_moe.top2gating`` (MoE-LLaVA):

1. ``g = softmax(logits)``; first choice ``e1 = argmax g``.
2. Second choice ``e2 = argmax_{e != e1} (logits + Gumbel noise)`` when ``second_choice_noise`` (in
   eval too, as in that DeepSpeed version); otherwise the next-highest probability (Mixtral-style top-k).
3. Capacity ``C = ceil(S / E · k · cf)`` (S tokens in the micro-batch, ``min_capacity`` floor).
4. Slots by cumulative sum over token order, first choices before second choices: the j-th choice of
   token s lands at position ``#{earlier-choice assignments to e} + #{tokens s' <= s with j-th choice e} - 1``
   of expert e's buffer and is dropped if that position is ``>= C``.
5. ``l_aux = E · Σ_e mean_s(g_{s,e}) · mean_s(1[e1_s = e])``: top-1 assignments, before dropping.
6. With ``renormalize``: ``w_j = g_{e_j} / Σ_{surviving j'} g_{e_j'}`` over surviving assignments
   (denominator clamped at fp32 eps, so a fully dropped token gets weights 0 and only the residual
   carries it). Without: ``w_j = g_{e_j}`` (DeepSpeed top-1: the output is scaled by ``ρ_max``).

Generalisation to k > 2 [INFERRED]: choices 2..k are the best remaining (noisy) logits and each choice
rank takes slots after all earlier ranks. Top-1 with a capacity keeps token order too; DeepSpeed's top-1
instead drops by Random Token Selection (``use_rts``) — not reproduced, since top-1 runs in this
project (EvoMoE) are dropless.

Masked experts (``expert_mask`` False) are removed before the softmax rather than given probability 0
after it: the routing of the remaining experts is then bit-identical to a router without the masked
rows, and E (for C and for ``l_aux``) counts routable experts only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MoEOutput:
    """One MoE forward's routing plan and statistics (N = flattened tokens, E = the set's experts).

    router_logits   [N, E] float32, ``-inf`` for experts the router cannot choose
    router_probs    [N, E] softmax over the routable experts (0 elsewhere)
    expert_index    [N, k] chosen experts, best first, before dropping
    kept            [N, k] False where the assignment was dropped for capacity
    combine_weights [N, k] weights applied to the expert outputs (0 where dropped)
    aux_loss        scalar, differentiable: the load-balancing loss of this forward
    expert_counts   [E] long: assignments each expert processed (after dropping)
    dropped_counts  [E] long: assignments each expert dropped for capacity
    capacity        slots per expert, or None when dropless
    """

    router_logits: torch.Tensor
    router_probs: torch.Tensor
    expert_index: torch.Tensor
    kept: torch.Tensor
    combine_weights: torch.Tensor
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor
    dropped_counts: torch.Tensor
    capacity: int | None = None

    @property
    def num_dropped(self) -> int:
        return int(self.dropped_counts.sum())


def load_balancing_loss(router_probs: torch.Tensor, top1_index: torch.Tensor,
                        num_experts: int) -> torch.Tensor:
    """Switch / MoE-LLaVA load-balancing loss.

        l_aux = E · Σ_e f_e · P_e
        f_e = (1/S) Σ_s 1[top1_s = e]     fraction of tokens whose first choice is e (no gradient)
        P_e = (1/S) Σ_s p_{s,e}            mean router probability of e (carries the gradient)

    Equals 1 for perfectly uniform routing and E when every token picks one expert with probability 1.
    ``router_probs`` [S, E], ``top1_index`` [S]. Zero for an empty batch.
    """
    if router_probs.shape[0] == 0:
        return router_probs.new_zeros(())
    f = torch.bincount(top1_index, minlength=num_experts).to(router_probs.dtype) / top1_index.numel()
    p = router_probs.mean(dim=0)
    return num_experts * torch.sum(f * p)


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float,
                    min_capacity: int = 0) -> int:
    """``C = max(ceil(S / E · k · cf), min_capacity)``.

    Evaluated in float32 like DeepSpeed's ``_capacity`` (``(S / E) * tensor(cf * k)``), so rounding at
    the ceiling matches the reference exactly.
    """
    c = torch.tensor(num_tokens / num_experts, dtype=torch.float32) * torch.tensor(
        capacity_factor * top_k, dtype=torch.float32)
    return max(int(math.ceil(float(c))), min_capacity)


def _gumbel_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Gumbel(0, 1) = -log(Exp(1)); the exponential sampler never returns 0.
    return -torch.empty_like(x).exponential_(generator=generator).log()


def _routable_columns(logits: torch.Tensor, expert_mask: torch.Tensor | None, routable_rows: torch.Tensor | None,
                      num_experts: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits [S, E] over the whole expert set, the routable expert ids or None for all of them).

    Experts beyond the router's E_r rows (added after it) get logit -inf and are unroutable; the
    routable ids come from ``routable_rows`` when the caller has them, else from the mask (one read
    back from the device only when some row is masked)."""
    S, E_r = logits.shape
    E_all = E_r if num_experts is None else num_experts
    if E_all < E_r:
        raise ValueError(f"router has {E_r} rows for {E_all} experts")
    all_router_rows = expert_mask is None
    if E_all > E_r:
        logits = torch.cat([logits, logits.new_full((S, E_all - E_r), float("-inf"))], dim=1)
        mask = torch.ones(E_r, dtype=torch.bool, device=logits.device) if expert_mask is None \
            else expert_mask.to(logits.device)
        expert_mask = torch.cat([mask, mask.new_zeros(E_all - E_r)])
    active = None
    if all_router_rows and E_all > E_r:  # the router's own rows, known without reading the mask
        active = torch.arange(E_r, device=logits.device)
    elif routable_rows is not None:
        active = routable_rows.to(logits.device)
    elif expert_mask is not None and not bool(expert_mask.all()):
        active = expert_mask.nonzero().squeeze(1)
    return logits, active


def _capacity_keep(idx_c: torch.Tensor, E: int, top_k: int, capacity_factor: float | None,
                   min_capacity: int) -> tuple[torch.Tensor, int | None]:
    """(kept [S, k] bool, capacity C or None): an assignment is kept while its expert has a free slot,
    slots filled by choice rank first, then in token order (DeepSpeed's ``top2gating``)."""
    S = idx_c.shape[0]
    if capacity_factor is None or S == 0:
        return torch.ones_like(idx_c, dtype=torch.bool), None
    capacity = expert_capacity(S, E, top_k, capacity_factor, min_capacity)
    onehot = F.one_hot(idx_c, E)                                             # [S, k, E]
    # slots taken by all earlier choice ranks, then running count within this rank (token order)
    earlier = torch.cumsum(onehot.sum(dim=0), dim=0) - onehot.sum(dim=0)     # [k, E]
    location = torch.cumsum(onehot, dim=0) - 1 + earlier.unsqueeze(0)        # [S, k, E]
    location = location.gather(2, idx_c.unsqueeze(2)).squeeze(2)             # [S, k]
    return location < capacity, capacity


def top_k_gating(logits: torch.Tensor, top_k: int, *, expert_mask: torch.Tensor | None = None,
                 routable_rows: torch.Tensor | None = None, num_experts: int | None = None,
                 capacity_factor: float | None = None, min_capacity: int = 0, second_choice_noise: bool = False,
                 renormalize: bool = True, generator: torch.Generator | None = None) -> MoEOutput:
    """Route S tokens: logits [S, E_r] -> ``MoEOutput`` (see the module docstring for the rules).

    ``expert_mask`` [E_r] bool: routable rows (default all); ``routable_rows``: its True indices, when
    the caller already has them (``LinearRouter.routable_rows``: no read back from the device).
    ``num_experts`` (>= E_r): size of the expert set, when the router predates later experts; those
    experts are unroutable and the output's [*, E] fields cover them (logit -inf, probability 0,
    count 0). ``capacity_factor=None``: dropless.
    """
    logits, active = _routable_columns(logits.float(), expert_mask, routable_rows, num_experts)
    S, E_all = logits.shape
    logits_c = logits if active is None else logits.index_select(1, active)
    E = logits_c.shape[1]
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k={top_k} needs 1..{E} routable experts")

    probs_c = F.softmax(logits_c, dim=-1)
    if second_choice_noise and top_k > 1:
        first = probs_c.argmax(dim=-1, keepdim=True)
        noisy = (logits_c + _gumbel_like(logits_c, generator)).scatter(1, first, float("-inf"))
        idx_c = torch.cat([first, noisy.topk(top_k - 1, dim=-1).indices], dim=1)
    elif top_k == 1:
        idx_c = probs_c.argmax(dim=-1, keepdim=True)
    else:
        idx_c = probs_c.topk(top_k, dim=-1).indices                            # [S, k], best first

    aux = load_balancing_loss(probs_c, idx_c[:, 0], E)

    kept, capacity = _capacity_keep(idx_c, E, top_k, capacity_factor, min_capacity)

    gates = probs_c.gather(1, idx_c) * kept
    if renormalize:
        denom = gates.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(gates.dtype).eps)
        weights = gates / denom
    else:
        weights = gates

    # back from routable-expert columns to expert ids of the whole set
    if active is not None:
        expert_index = active[idx_c]
        probs = logits.new_zeros(S, E_all).index_copy(1, active, probs_c)
    else:
        expert_index, probs = idx_c, probs_c
    flat = expert_index.reshape(-1)
    if capacity is None:
        counts = torch.bincount(flat, minlength=E_all)
        dropped = torch.zeros_like(counts)
    else:
        kept_flat = kept.reshape(-1)
        counts = torch.bincount(flat[kept_flat], minlength=E_all)
        dropped = torch.bincount(flat[~kept_flat], minlength=E_all)
    return MoEOutput(router_logits=logits, router_probs=probs, expert_index=expert_index, kept=kept,
                     combine_weights=weights, aux_loss=aux, expert_counts=counts,
                     dropped_counts=dropped, capacity=capacity)
