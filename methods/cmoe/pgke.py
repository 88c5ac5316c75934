"""LLaVA-CMoE's Probe-Guided Knowledge Extension (LLaVA-CMoE, arXiv
2503.21227): which MoE layers get a new expert for task t, and how it is initialised.

    probe       one fresh LoRA expert per MoE layer, appended after the (frozen) old experts
    probe router R~_l = [R_l^{t-1}; one fresh row]      (trainable copy; the row is nn.Linear-init)
    frequency   f_{l,e} = (1/N_tok) sum_{tokens} 1[e in TopK(p)]   on the probe subset, after training
    threshold   A: theta   = mean_l f_{l,probe} - alpha * std_l f_{l,probe}          (across layers)
                B: theta_l = mean_e f_{l,e}     - alpha * std_e f_{l,e}   (the layer's experts + probe)
    expand l    iff f_{l,probe} > theta(_l)          (strict, as the paper's Eq. 2; 1e-9 tolerance)
    new experts copies of the N_s most-used old experts (by f_{l,e});  R_l^t = [R_l^{t-1}; row(source)
                per copy], each source masked in R_l^t ("replace") or kept, noise on the new row ("split")

Statistics are population statistics (std with ddof 0) [INFERRED]. Tokens are the real tokens of the
probe subset (attention mask), prompt and answer, image tokens included [INFERRED].
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from bench.moe import LinearRouter, MoEFFN

READINGS = ("A", "B")
ROUTINGS = ("replace", "split")


# --------------------------------------------------------------------------------------------------
# threshold rule
# --------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mu = sum(values) / len(values)
    return mu, math.sqrt(sum((v - mu) ** 2 for v in values) / len(values))


def expansion_thresholds(probe_freq: Mapping[int, float], expert_freqs: Mapping[int, Sequence[float]],
                         alpha: float, reading: str) -> dict[int, float]:
    """theta per layer. Reading A: one threshold from the probe frequencies of all layers. Reading B:
    per layer, from the frequencies of all its experts (old ones and the probe, the last entry)."""
    if reading == "A":
        mu, sd = _mean_std(list(probe_freq.values()))
        return {l: mu - alpha * sd for l in probe_freq}
    if reading == "B":
        out = {}
        for l in probe_freq:
            mu, sd = _mean_std(list(expert_freqs[l]))
            out[l] = mu - alpha * sd
        return out
    raise ValueError(f"threshold reading must be one of {READINGS}, got {reading!r}")


def layers_to_expand(probe_freq: Mapping[int, float], thresholds: Mapping[int, float],
                     tol: float = 1e-9) -> dict[int, bool]:
    """Eq. 2: layer l expands iff its probe's activation frequency exceeds the threshold.

    WHY the tolerance: with two MoE layers, reading A gives theta = min(f) exactly in arithmetic, but
    ``mean - std`` can round a hair below it; a frequency equal to theta must not expand by rounding.
    """
    return {l: probe_freq[l] > thresholds[l] + tol for l in probe_freq}


# --------------------------------------------------------------------------------------------------
# probes and expansion on one MoE layer
# --------------------------------------------------------------------------------------------------
def attach_probe(layer: MoEFFN, prev_router: int) -> int:
    """Freeze the old experts, append one fresh probe expert and the probe router; returns the probe
    router's index (not selected here: the method sets the choice before every forward)."""
    layer.experts.freeze()
    layer.experts.append(1)
    probe_router = LinearRouter.from_router(layer.routers[prev_router])
    probe_router.append_rows(1)
    return layer.add_router(probe_router)


def detach_probe(layer: MoEFFN) -> None:
    """Discard the probe router and the probe expert (they were appended last)."""
    layer.pop_router()
    layer.experts.pop(1)


def expand_layer(layer: MoEFFN, prev_router: int, sources: Sequence[int] | None, routing: str = "replace",
                 router_noise: float = 0.01) -> int:
    """Add task t's router R^t (and, if ``sources`` are given, one trainable copy of each source
    expert); returns R^t's index. R^t's old rows are a trainable copy of R^{t-1}.

    ``routing="replace"``: each new row is its source's row and the source is masked in R^t (only
    there: R^{t-1} and older routers still reach it). R^t then starts as exactly R^{t-1}'s function,
    and the trainable copy, not the frozen source, receives those tokens with their full weight.
    ``routing="split"``: each new row is its source's row plus Gaussian noise of std
    ``router_noise * std(row)`` and the source stays routable, so top-k renormalised weights split
    those tokens between the near-identical pair and about half of each stays on the frozen source.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    router = LinearRouter.from_router(layer.routers[prev_router])
    for source in sources or []:
        layer.experts.append(1, copy_from=source)
        noise = 0.0
        if routing == "split":
            noise = router_noise * float(router.weight.detach()[source].float().std(unbiased=False))
        router.append_rows(1, copy_from=source, noise_std=noise)
        if routing == "replace":
            router.mask_rows([source])
    return layer.add_router(router)
