"""Dispatch: run the routed experts and combine ``Σ_k w_k · expert_{e_k}(x)`` per token.

Two paths with the same semantics (tested equal in values and gradients):

``dispatch_eager``   the reference, as transformers' Mixtral sparse block: for each expert, gather the
                     tokens routed to it, run it, ``index_add_`` the weighted outputs back.
``dispatch_sorted``  the fast path: sort the (token, choice) assignments by expert once, gather the
                     tokens into one contiguous buffer, run each expert on its slice (a view, no copy),
                     weight, and scatter everything back with one ``index_add_``. Per expert this is a
                     single matmul chain and no mask scan over all N·k assignments.

Both skip dropped assignments and return [N, d_out] in ``x``'s dtype; residual-base handling (LoRA
experts on a frozen FFN) is the layer's job.
"""
from __future__ import annotations

import torch

from bench.moe.experts import ExpertSet
from bench.moe.gating import MoEOutput


def dispatch_eager(x: torch.Tensor, experts: ExpertSet, routing: MoEOutput) -> torch.Tensor:
    """Reference dispatch: one boolean scan of the assignments per expert."""
    out = x.new_zeros(x.shape[0], experts.d_out)
    routed = routing.expert_index.masked_fill(~routing.kept, -1)        # dropped -> no expert
    weights = routing.combine_weights.to(x.dtype)
    for e in range(experts.num_experts):
        tok, slot = torch.where(routed == e)
        if tok.numel() == 0:
            continue
        y = experts.expert_forward(e, x[tok]) * weights[tok, slot].unsqueeze(1)
        out.index_add_(0, tok, y.to(out.dtype))  # autocast may compute experts in bf16
    return out


def dispatch_sorted(x: torch.Tensor, experts: ExpertSet, routing: MoEOutput) -> torch.Tensor:
    """Fast dispatch: one stable sort by expert, contiguous per-expert slices, one scatter back."""
    n, k = routing.expert_index.shape
    flat_expert = routing.expert_index.reshape(-1)                        # assignment a = token*k + slot
    flat_weight = routing.combine_weights.reshape(-1)
    if routing.capacity is not None:  # dropless routing keeps every assignment: nothing to read back
        assign = routing.kept.reshape(-1).nonzero().squeeze(1)
        flat_expert = flat_expert.index_select(0, assign)
    else:
        assign = None
    # Stable: within an expert, tokens keep their order, so each expert sees exactly the rows (and
    # row order) the eager path gives it.
    order = torch.argsort(flat_expert, stable=True)
    if assign is not None:
        order = assign.index_select(0, order)
    token = torch.div(order, k, rounding_mode="floor")
    # The gate already counted the surviving assignments per expert: those are the slice sizes, so
    # the sorted order needs no second pass (one host sync for the list).
    counts = routing.expert_counts.tolist()
    x_sorted = x.index_select(0, token)
    y_sorted = experts.forward_grouped(x_sorted, counts)
    y_sorted = y_sorted * flat_weight.index_select(0, order).to(y_sorted.dtype).unsqueeze(1)
    # under autocast the experts may return bf16 while the residual stream is fp32
    return x.new_zeros(n, experts.d_out).index_add_(0, token, y_sorted.to(x.dtype))
