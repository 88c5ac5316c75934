"""Shared MoE primitives: the pieces every MoE method is built from, so methods differ only in how
they combine them.

experts.py   SwiGLUExpert, LoRADelta; growable sets FFNExperts, LoRAExperts (output-delta experts)
lora_ffn_experts.py  LoRAFFNExperts: the frozen FFN with a LoRA per expert on gate, up and down
routers.py   LinearRouter (appendable, maskable rows), HyperRouter (EvoMoE's DTR)
gating.py    top_k_gating (DeepSpeed top-2 capacity rules), load_balancing_loss, MoEOutput
dispatch.py  dispatch_eager (reference), dispatch_sorted (fast)
layer.py     MoEFFN, the layer that replaces a decoder FFN; helpers over all MoE layers
install.py   decoder_layers, select_moe_layers, install_moe
evolution.py EvoMoE's expert evolution (EMA / scaled-update readings, seeded beta sampler)
diversity.py expert diversity: mean pairwise cosine distance of expert weights
usage.py     expert usage of a task's tokens (a seeded subset, one forward-only pass)
"""
from bench.moe.diversity import diversity_report, expert_diversity
from bench.moe.dispatch import dispatch_eager, dispatch_sorted
from bench.moe.experts import ExpertSet, FFNExperts, LoRADelta, LoRAExperts, SwiGLUExpert
from bench.moe.gating import MoEOutput, expert_capacity, load_balancing_loss, top_k_gating
from bench.moe.lora_ffn_experts import LoRAFFNExpert, LoRAFFNExperts
from bench.moe.install import decoder_layers, install_moe, select_moe_layers
from bench.moe.layer import (MoEFFN, collect_aux_loss, moe_layers_of, set_router_choice,
                             set_token_types)
from bench.moe.routers import HyperRouter, LinearRouter, TokenHypernet
from bench.moe.usage import USAGE_TOKENS, measure_usage, subset_loader

__all__ = [
    "ExpertSet", "FFNExperts", "LoRAExperts", "LoRADelta", "LoRAFFNExpert", "LoRAFFNExperts", "SwiGLUExpert",
    "LinearRouter", "HyperRouter", "TokenHypernet",
    "MoEOutput", "top_k_gating", "load_balancing_loss", "expert_capacity",
    "dispatch_eager", "dispatch_sorted",
    "MoEFFN", "moe_layers_of", "collect_aux_loss", "set_token_types", "set_router_choice",
    "decoder_layers", "select_moe_layers", "install_moe", "diversity_report", "expert_diversity",
    "USAGE_TOKENS", "measure_usage", "subset_loader",
]
