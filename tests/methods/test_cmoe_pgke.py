"""PGKE pieces on hand-made numbers and a single MoE layer: the threshold rule (both readings), probe
attach/detach, expansion copying the most-used expert, the probe subset."""
from __future__ import annotations

import statistics

import pytest
import torch

from bench.moe import LinearRouter, LoRAExperts, MoEFFN, SwiGLUExpert
from methods.cmoe.pgke import attach_probe, detach_probe, expand_layer, expansion_thresholds, layers_to_expand

from cmoe_tiny import one_thread  # noqa: F401  (autouse: single-threaded module)

D = 16


def lora_layer(seed: int = 0) -> MoEFFN:
    torch.manual_seed(seed)
    experts = LoRAExperts.on_mlp(SwiGLUExpert(D, 32), 2, r=4, alpha=8)
    for ex in experts.experts:  # B = 0 at init would make every expert equal
        torch.nn.init.normal_(ex.lora_B, std=0.1)
    return MoEFFN(experts, LinearRouter(D, 2), top_k=2)


def test_reading_a_one_threshold_across_layers():
    probe = {0: 0.1, 2: 0.5, 4: 0.9}
    theta = expansion_thresholds(probe, {}, alpha=1.0, reading="A")
    expected = statistics.fmean(probe.values()) - statistics.pstdev(probe.values())
    assert all(t == pytest.approx(expected) for t in theta.values())
    assert layers_to_expand(probe, theta) == {0: False, 2: True, 4: True}
    # alpha = 0: theta = mean, and equality does not expand (Eq. 2 is strict)
    theta0 = expansion_thresholds(probe, {}, alpha=0.0, reading="A")
    assert layers_to_expand(probe, theta0) == {0: False, 2: False, 4: True}
    # identical frequencies: std 0, theta = f, so no layer expands
    flat = {0: 0.3, 2: 0.3}
    assert not any(layers_to_expand(flat, expansion_thresholds(flat, {}, 1.0, "A")).values())


def test_reading_b_per_layer_over_its_experts():
    experts = {0: [0.9, 0.9, 0.2], 2: [0.5, 0.5, 1.0]}     # probe last
    probe = {l: f[-1] for l, f in experts.items()}
    theta = expansion_thresholds(probe, experts, alpha=1.0, reading="B")
    for l, f in experts.items():
        assert theta[l] == pytest.approx(statistics.fmean(f) - statistics.pstdev(f))
    assert layers_to_expand(probe, theta) == {0: False, 2: True}
    # the same probe frequencies under reading A: theta = 0.6 - 0.4 = 0.2, layer 0 sits on it
    assert layers_to_expand(probe, expansion_thresholds(probe, experts, 1.0, "A")) == {0: False, 2: True}
    low = {0: [0.95, 0.95, 0.1], 2: [0.95, 0.95, 0.1]}
    assert layers_to_expand({0: 0.1, 2: 0.1}, expansion_thresholds({0: 0.1, 2: 0.1}, low, 0.5, "B")) == \
        {0: False, 2: False}
    with pytest.raises(ValueError, match="reading"):
        expansion_thresholds(probe, experts, 1.0, "C")


def test_probe_attach_and_detach_leave_the_layer_as_it_was():
    layer = lora_layer()
    snap = {n: p.detach().clone() for n, p in layer.named_parameters()}
    idx = attach_probe(layer, prev_router=0)
    assert idx == 1 and layer.experts.num_experts == 3 and layer.routers[idx].num_experts == 3
    assert layer.experts.is_frozen(0) and layer.experts.is_frozen(1) and not layer.experts.is_frozen(2)
    assert torch.equal(layer.routers[idx].weight[:2], layer.routers[0].weight)
    assert all(p.requires_grad for p in layer.routers[idx].parameters())
    layer.set_router_choice(idx)
    layer(torch.randn(2, 5, D))
    assert layer.last_output.expert_counts.shape == (3,)
    detach_probe(layer)
    assert layer.experts.num_experts == 2 and len(layer.routers) == 1
    assert all(torch.equal(p, snap[n]) for n, p in layer.named_parameters())


@pytest.mark.parametrize("routing,noise", [("replace", 0.0), ("split", 0.0), ("split", 0.01)])
def test_expansion_copies_the_most_used_expert_exactly(routing, noise):
    layer = lora_layer()
    layer.experts.freeze()
    layer.routers[0].freeze()
    r1 = layer.routers[0].weight.detach().clone()
    idx = expand_layer(layer, prev_router=0, sources=[1], routing=routing, router_noise=noise)
    new = layer.experts.experts[2]
    src = layer.experts.experts[1]
    for a, b in zip(new.parameters(), src.parameters()):
        assert torch.equal(a, b) and a is not b and a.requires_grad and not b.requires_grad
    w = layer.routers[idx].weight.detach()
    assert torch.equal(w[:2], r1)          # old rows: an exact (trainable) copy of R^{t-1}
    if noise == 0:
        assert torch.equal(w[2], r1[1])
    else:
        assert not torch.equal(w[2], r1[1])
        assert (w[2] - r1[1]).std() < 5 * noise * r1[1].std()
    # replace: R^t cannot reach the source, so it starts as exactly R^{t-1}'s function
    assert layer.routers[idx].row_mask.tolist() == [True, routing == "split", True]
    assert torch.equal(layer.routers[0].weight, r1) and not layer.routers[0].groups[0].requires_grad
    assert layer.routers[0].row_mask.all()   # the old router still reaches every old expert
    # a layer that is not expanded still gets its task router, over the old experts only
    idx2 = expand_layer(layer, prev_router=idx, sources=None, routing=routing, router_noise=noise)
    assert layer.experts.num_experts == 3 and torch.equal(layer.routers[idx2].weight, w)


def test_replace_routing_starts_as_the_previous_task_router():
    layer = lora_layer()
    with torch.no_grad():
        for p in layer.experts.experts.parameters():
            p.normal_(0, 0.1)
    x = torch.randn(1, 20, D)
    before = layer(x)
    idx = expand_layer(layer, prev_router=0, sources=[1, 0], routing="replace")
    assert layer.routers[idx].row_mask.tolist() == [False, False, True, True]  # both sources replaced
    for new, src in ((2, 1), (3, 0)):
        for a, b in zip(layer.experts.experts[new].parameters(), layer.experts.experts[src].parameters()):
            assert torch.equal(a, b)
    layer.set_router_choice(idx)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-6)
