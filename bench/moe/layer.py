"""``MoEFFN``: a sparse MoE layer that replaces a decoder FFN (``language_model.layers[i].mlp``).

    logits = router(h, image_mask)                      # [N, E], explicit
    plan   = top_k_gating(logits, k, capacity, ...)     # bench.moe.gating
    y      = Σ_k w_k · expert_{e_k}(h)                  # bench.moe.dispatch (fast or eager)
    y     += experts.base_forward(h)                    # residual-base mode: LoRA experts on a frozen FFN

The decoder layer calls ``mlp(hidden_states)`` with nothing else, so per-batch inputs are set on the
module before the forward and the per-forward outputs are read from it afterwards:

* ``set_token_types(image_mask [B, T])`` — image-token mask for the DTR router;
* ``set_router_choice(int | LongTensor[B])`` — which of the layer's routers routes each sample
  (LLaVA-CMoE's per-task routers picked per sample by PTL);
* ``select_rows(LongTensor | None)`` — the next forwards run on these rows of the batch the two above
  were set for (a prefill chunk, or the samples still decoding at evaluation);
* ``last_output`` — the ``MoEOutput`` of the latest forward (aux loss with its graph, router logits,
  per-expert kept / dropped counts). It is instance state overwritten by every forward, never global;
* ``usage_counts`` / ``usage_fraction()`` — per-expert assignments summed since ``reset_usage()``.
"""
from __future__ import annotations

from typing import Iterable, Literal

import torch
from torch import nn

from bench.moe.dispatch import dispatch_eager, dispatch_sorted
from bench.moe.experts import ExpertSet
from bench.moe.gating import MoEOutput, top_k_gating
from bench.moe.routers import TokenSplit

Dispatch = Literal["fast", "eager"]


class MoEFFN(nn.Module):
    """Top-k routed experts in place of a dense FFN; forward(h [B, T, d]) -> [B, T, d].

    Args:
        experts: the expert set (``FFNExperts`` or ``LoRAExperts``; the latter adds its frozen base).
        router: a router ``(x [N, d], image_mask [N] | None) -> logits [N, E_r]`` with ``E_r`` <= the
            number of experts (a router made before later experts were appended never sees them).
            More routers can be added with ``add_router``.
        top_k: experts per token.
        capacity_factor_train / capacity_factor_eval: DeepSpeed capacity factors (MoE-LLaVA: 1.5 /
            2.0); None = dropless (the project default).
        min_capacity: floor on the capacity (MoE-LLaVA: 0).
        second_choice_noise: Gumbel noise on choices 2..k (DeepSpeed top2gating; on in eval too).
        renormalize: renormalise the weights over surviving choices; default ``top_k > 1`` (top-1 keeps
            ``ρ_max`` so the router still gets a gradient).
        dispatch: "fast" (sorted) or "eager" (reference).
    """

    def __init__(self, experts: ExpertSet, router: nn.Module, top_k: int = 2, *,
                 capacity_factor_train: float | None = None, capacity_factor_eval: float | None = None,
                 min_capacity: int = 0, second_choice_noise: bool = False,
                 renormalize: bool | None = None, dispatch: Dispatch = "fast"):
        super().__init__()
        if dispatch not in ("fast", "eager"):
            raise ValueError(f"dispatch must be 'fast' or 'eager', not {dispatch!r}")
        self.experts = experts
        self.routers = nn.ModuleList([router])
        self.top_k = top_k
        self.capacity_factor_train = capacity_factor_train
        self.capacity_factor_eval = capacity_factor_eval
        self.min_capacity = min_capacity
        self.second_choice_noise = second_choice_noise
        self.renormalize = top_k > 1 if renormalize is None else renormalize
        self.dispatch = dispatch
        self.generator: torch.Generator | None = None  # for the Gumbel noise; None = global RNG
        self.last_output: MoEOutput | None = None
        # running per-expert assignment counts since reset_usage(): expert utilisation reports and
        # LLaVA-CMoE's probe frequencies, without keeping every forward's MoEOutput
        self.usage_counts: torch.Tensor | None = None
        self.usage_tokens = 0
        self._image_mask: torch.Tensor | None = None
        self._token_split: TokenSplit | None = None
        self._router_choice: int | torch.Tensor = 0
        self._rows: torch.Tensor | None = None

    # --- routers ----------------------------------------------------------------------------------
    @property
    def router(self) -> nn.Module:
        """The router in use when a single router is chosen (the only one, by default)."""
        if not isinstance(self._router_choice, int):
            raise RuntimeError("a per-sample router choice is set; use `routers`")
        return self.routers[self._router_choice]

    def add_router(self, router: nn.Module) -> int:
        """Add a router (e.g. LLaVA-CMoE's task router R^t); returns its index. Does not select it."""
        self.routers.append(router)
        return len(self.routers) - 1

    def pop_router(self) -> nn.Module:
        """Remove and return the last router (e.g. a probe router); the choice falls back to router 0."""
        if len(self.routers) < 2:
            raise RuntimeError("cannot remove the only router")
        router = self.routers[len(self.routers) - 1]
        del self.routers[len(self.routers) - 1]
        self._router_choice = 0
        return router

    def set_router_choice(self, choice: int | torch.Tensor) -> None:
        """Route every token with ``routers[choice]``, or sample b's tokens with ``routers[choice[b]]``."""
        if isinstance(choice, int):
            if not 0 <= choice < len(self.routers):
                raise IndexError(f"router {choice} of {len(self.routers)}")
        self._router_choice = choice

    def set_token_types(self, image_mask: torch.Tensor | None, split: TokenSplit | None = None) -> None:
        """Per-token image mask [B, T] (True = image token) for the next forwards; None = all text.

        A forward whose [B, T] differs from the mask's (a cached decoding step) treats its tokens as
        text: tokens produced while decoding are always text. ``split``: the mask's ``TokenSplit``,
        shared with the other layers (see the module-level ``set_token_types``).
        """
        self._image_mask = image_mask
        self._token_split = split if image_mask is not None else None

    def select_rows(self, rows: torch.Tensor | None) -> None:
        """The next forwards see rows ``rows`` of the batch that the router choice and the token-type
        mask were set for (evaluation: a prefill chunk, or the samples still decoding); None = all."""
        self._rows = rows

    def rows_independent_at_eval(self) -> bool:
        """Whether, in eval mode, a row's output depends on that row alone. Not with Gumbel noise on the
        second choice (the draws follow the forward's token count), nor with a capacity that can drop
        tokens (which ones depends on every token of the forward): splitting such a batch changes the
        predictions. A capacity ``C = ceil(S / E · k · cf)`` with ``k · cf >= E`` is at least the S
        tokens of any forward, and an expert receives at most one assignment per token, so it never
        drops (MoE-LLaVA's eval factor 2.0 at top-2 over 4 experts)."""
        cf = self.capacity_factor_eval
        return not self.second_choice_noise and (cf is None or cf * self.top_k >= self.experts.num_experts)

    def _sample_state(self, T: int) -> tuple[int | torch.Tensor, torch.Tensor | None]:
        """The router choice and image mask for the rows a forward over ``T`` positions runs on (the
        mask only if it covers ``T`` positions: decoded tokens are text)."""
        choice, mask = self._router_choice, self._image_mask
        if mask is not None and mask.shape[-1] != T:
            mask = None
        if self._rows is not None:
            if not isinstance(choice, int):
                choice = choice.index_select(0, self._rows.to(choice.device))
            if mask is not None:
                mask = mask.index_select(0, self._rows.to(mask.device))
        return choice, mask

    def reset_usage(self) -> None:
        self.usage_counts, self.usage_tokens = None, 0

    def usage_fraction(self) -> torch.Tensor:
        """Per expert: fraction of tokens routed to it since ``reset_usage`` (top-k assignments that
        were processed / tokens), i.e. ``f_e = (1/N) Σ_tokens 1[e ∈ TopK]`` for dropless routing."""
        if self.usage_counts is None or self.usage_tokens == 0:
            return torch.zeros(self.experts.num_experts)
        return self.usage_counts.double() / self.usage_tokens

    # --- forward ----------------------------------------------------------------------------------
    def _route(self, router: nn.Module, x: torch.Tensor, image_mask: torch.Tensor | None,
               split: TokenSplit | None = None) -> MoEOutput:
        if split is not None and getattr(router, "takes_token_split", False):
            logits = router(x, image_mask, split=split)
        else:
            logits = router(x, image_mask)
        cf = self.capacity_factor_train if self.training else self.capacity_factor_eval
        # the router knows its routable rows without reading the mask back from the device
        mask, rows = getattr(router, "row_mask", None), None
        if mask is not None:
            rows = router.routable_rows()
            mask = None if rows is None else mask
        return top_k_gating(logits, self.top_k, expert_mask=mask, routable_rows=rows,
                            num_experts=self.experts.num_experts, capacity_factor=cf, min_capacity=self.min_capacity,
                            second_choice_noise=self.second_choice_noise,
                            renormalize=self.renormalize, generator=self.generator)

    def _route_per_sample(self, x: torch.Tensor, image_mask: torch.Tensor | None, B: int,
                          T: int, choice: torch.Tensor) -> MoEOutput:
        """Group tokens by their sample's router (``choice`` [B]), gate each group on its own, merge
        the plans. Capacity, if any, applies per group; the aux loss is the token-weighted mean over
        groups.
        """
        if choice.shape != (B,):
            raise ValueError(f"router choice has shape {tuple(choice.shape)}, batch is {B}")
        per_token = choice.to(x.device).repeat_interleave(T)
        N, E = x.shape[0], self.experts.num_experts
        logits = x.new_empty((N, E), dtype=torch.float32)
        probs = x.new_empty((N, E), dtype=torch.float32)
        index = torch.empty(N, self.top_k, dtype=torch.long, device=x.device)
        kept = torch.empty(N, self.top_k, dtype=torch.bool, device=x.device)
        weights = x.new_empty((N, self.top_k), dtype=torch.float32)
        counts = torch.zeros(E, dtype=torch.long, device=x.device)
        dropped = torch.zeros_like(counts)
        aux = x.new_zeros((), dtype=torch.float32)
        caps = []
        for r in per_token.unique().tolist():
            tok = (per_token == r).nonzero().squeeze(1)
            part = self._route(self.routers[r], x.index_select(0, tok),
                               None if image_mask is None else image_mask.index_select(0, tok))
            # every part covers all E experts, so the pieces slot straight into the merged plan
            logits = logits.index_copy(0, tok, part.router_logits)
            probs = probs.index_copy(0, tok, part.router_probs)
            index = index.index_copy(0, tok, part.expert_index)
            kept = kept.index_copy(0, tok, part.kept)
            weights = weights.index_copy(0, tok, part.combine_weights)
            counts += part.expert_counts
            dropped += part.dropped_counts
            aux = aux + part.aux_loss * (tok.numel() / N)
            caps.append(part.capacity)
        capacity = None if all(c is None for c in caps) else max(c for c in caps if c is not None)
        return MoEOutput(router_logits=logits, router_probs=probs, expert_index=index, kept=kept,
                         combine_weights=weights, aux_loss=aux, expert_counts=counts,
                         dropped_counts=dropped, capacity=capacity)

    def forward_with_output(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, MoEOutput]:
        """The forward, returning the ``MoEOutput`` explicitly as well as recording it."""
        *lead, d = hidden_states.shape
        x = hidden_states.reshape(-1, d)
        B, T = (lead[0], lead[1]) if len(lead) == 2 else (1, x.shape[0])
        choice, sample_mask = self._sample_state(T)
        image_mask = None
        if sample_mask is not None and tuple(sample_mask.shape) == (B, T):
            image_mask = sample_mask.reshape(-1).to(device=x.device, dtype=torch.bool)

        if isinstance(choice, int):
            # the shared split describes the whole batch: only for a forward over all of it
            split = self._token_split if image_mask is not None and self._rows is None else None
            out = self._route(self.routers[choice], x, image_mask, split)
        else:
            out = self._route_per_sample(x, image_mask, B, T, choice)

        run = dispatch_sorted if self.dispatch == "fast" else dispatch_eager
        y = run(x, self.experts, out)
        base = self.experts.base_forward(x)
        if base is not None:
            y = base + y
        self.last_output = out
        counts = out.expert_counts.detach()
        if self.usage_counts is None or self.usage_counts.numel() != counts.numel():
            # (re)start when the expert set has grown: old counts stay valid, new experts start at 0
            prev = self.usage_counts
            self.usage_counts = torch.zeros_like(counts)
            if prev is not None:
                n = min(prev.numel(), counts.numel())
                self.usage_counts[:n] += prev[:n].to(counts.device)
        self.usage_counts += counts
        self.usage_tokens += x.shape[0]
        return y.view(*lead, -1), out

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.forward_with_output(hidden_states)[0]

    def extra_repr(self) -> str:
        return (f"experts={self.experts.num_experts}, routers={len(self.routers)}, top_k={self.top_k}, "
                f"capacity_factor={self.capacity_factor_train}/{self.capacity_factor_eval}, "
                f"dispatch={self.dispatch!r}")


# --------------------------------------------------------------------------------------------------
# helpers over a whole model
# --------------------------------------------------------------------------------------------------
def moe_layers_of(model: nn.Module) -> list[MoEFFN]:
    """All MoE layers in a model, in module order."""
    return [m for m in model.modules() if isinstance(m, MoEFFN)]


def collect_aux_loss(layers: Iterable[MoEFFN]) -> torch.Tensor | None:
    """Σ over layers of the latest forward's aux loss (MoE-LLaVA sums over layers, not a mean)."""
    losses = [m.last_output.aux_loss for m in layers if m.last_output is not None]
    return torch.stack(losses).sum() if losses else None


def set_token_types(layers: Iterable[MoEFFN], image_mask: torch.Tensor | None) -> None:
    """The batch's image mask for every layer, with one ``TokenSplit`` they share."""
    split = TokenSplit(image_mask) if image_mask is not None else None
    for m in layers:
        m.set_token_types(image_mask, split)


def set_router_choice(layers: Iterable[MoEFFN], choice: int | torch.Tensor) -> None:
    for m in layers:
        m.set_router_choice(choice)
