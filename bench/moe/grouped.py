"""Per-expert SwiGLU FFNs over an expert-sorted token buffer, as one autograd node.

    for each expert e, on its rows [s_e, s_e + c_e) of the sorted buffer X:
        G = X W_g^T,  U = X W_u^T,  H = silu(G) * U,  Y = H W_d^T

This is what ``FFNExperts.forward_grouped`` computes with ordinary modules; doing it in one
``autograd.Function`` is the fast path's answer to per-expert overhead when experts are many and each
gets few tokens (E = 64, ~64 tokens each):

* every matmul writes straight into its slice of one preallocated buffer (``torch.mm(out=...)``), so
  there is no ``torch.cat`` of expert outputs and no ``cat`` of input-gradient slices in backward;
* one graph node instead of ~10 per expert (linear, transpose, silu, mul, ... and their backward nodes);
* it saves what autograd would (G, U, silu(G), H), so memory matches the module-by-module path;
* weight gradients are computed only for experts that received tokens and are not frozen
  (``ctx.needs_input_grad``), exactly as autograd would.

Gradients (with ``σ = sigmoid(G)``, ``silu'(G) = σ (1 + G (1 - σ))``, upstream ``dY``):
    dW_d = dY^T H,   dH = dY W_d,   dU = dH * silu(G),   dG = dH * U * silu'(G)
    dW_g = dG^T X,   dW_u = dU^T X, dX = dG W_g + dU W_u
"""
from __future__ import annotations

from typing import Sequence

import torch


def _slices(counts: Sequence[int]):
    """(expert, start, count) for every expert that has rows."""
    s = 0
    for e, c in enumerate(counts):
        if c:
            yield e, s, c
        s += c


class _GroupedSwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], *weights: torch.Tensor) -> torch.Tensor:
        M = x.shape[0]
        d_ff, d_out = weights[0].shape[0], weights[2].shape[0]
        gate, up, act, h = (x.new_empty(M, d_ff) for _ in range(4))
        out = x.new_empty(M, d_out)
        # Expert by expert, so each expert's [c, d_ff] activations are still in cache for the
        # elementwise steps (a whole-buffer SiLU after all the matmuls would stream them from memory).
        for e, s, c in _slices(counts):
            w_g, w_u, w_d = weights[3 * e: 3 * e + 3]
            rows = slice(s, s + c)
            torch.mm(x[rows], w_g.t(), out=gate[rows])
            torch.mm(x[rows], w_u.t(), out=up[rows])
            torch.ops.aten.silu.out(gate[rows], out=act[rows])
            torch.mul(act[rows], up[rows], out=h[rows])
            torch.mm(h[rows], w_d.t(), out=out[rows])
        ctx.counts = counts
        ctx.save_for_backward(x, gate, up, act, h, *weights)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, gate, up, act, h, *weights = ctx.saved_tensors
        need = ctx.needs_input_grad                      # (x, counts, w_g0, w_u0, w_d0, w_g1, ...)
        grad_out = grad_out.contiguous()
        dx = torch.empty_like(x) if need[0] else None
        dws: list[torch.Tensor | None] = [None] * len(weights)
        for e, s, c in _slices(ctx.counts):
            w_g, w_u, w_d = weights[3 * e: 3 * e + 3]
            ng, nu, nd = need[2 + 3 * e: 5 + 3 * e]
            rows = slice(s, s + c)
            xs, dy = x[rows], grad_out[rows]
            if nd:
                dws[3 * e + 2] = dy.t().mm(h[rows])
            dh = dy.mm(w_d)
            du = dh * act[rows]
            dg = torch.ops.aten.silu_backward(dh.mul_(up[rows]), gate[rows])  # dH * U * silu'(G)
            if ng:
                dws[3 * e] = dg.t().mm(xs)
            if nu:
                dws[3 * e + 1] = du.t().mm(xs)
            if dx is not None:
                torch.mm(dg, w_g, out=dx[rows])
                dx[rows].addmm_(du, w_u)
        return (dx, None, *dws)


def grouped_swiglu(x_sorted: torch.Tensor, counts: Sequence[int],
                   weights: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """SwiGLU expert e (weights ``(W_g, W_u, W_d)``, bias-free, SiLU) on rows of expert e.

    ``x_sorted`` [M, d_in] holds ``counts[e]`` consecutive rows per expert; returns [M, d_out].
    """
    if len(counts) != len(weights) or sum(counts) != x_sorted.shape[0]:
        raise ValueError(f"counts {list(counts)} do not split {x_sorted.shape[0]} rows over "
                         f"{len(weights)} experts")
    flat = [w for triple in weights for w in triple]
    return _GroupedSwiGLU.apply(x_sorted.contiguous(), list(counts), *flat)
