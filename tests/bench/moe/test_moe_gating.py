"""Gating rules: load-balancing loss by hand, DeepSpeed top-2 capacity dropping by hand."""
import math

import pytest
import torch

from bench.moe import (FFNExperts, LinearRouter, MoEFFN, SwiGLUExpert, expert_capacity,
                       load_balancing_loss, top_k_gating)


def test_load_balancing_loss_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    top1 = torch.tensor([0, 0, 1, 0])
    # f = (3/4, 1/4), P = (0.6, 0.4): l = 2 * (0.75 * 0.6 + 0.25 * 0.4) = 1.1
    assert load_balancing_loss(probs, top1, 2).item() == pytest.approx(1.1, abs=1e-6)
    # through the gate: top-1 comes from argmax of the same probabilities
    out = top_k_gating(probs.log(), top_k=2)
    assert out.aux_loss.item() == pytest.approx(1.1, abs=1e-6)
    # uniform routing is the minimum, 1
    uniform = torch.full((4, 2), 0.5)
    assert load_balancing_loss(uniform, torch.tensor([0, 1, 0, 1]), 2).item() == pytest.approx(1.0)


def test_aux_loss_gradient_flows_only_through_probs():
    logits = torch.randn(8, 4, requires_grad=True)
    out = top_k_gating(logits, top_k=2)
    out.aux_loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_capacity_formula_matches_deepspeed():
    # C = ceil(S / E * k * cf)
    assert expert_capacity(6, 2, 2, 1.5) == 9
    assert expert_capacity(6, 2, 2, 0.5) == 3
    assert expert_capacity(10, 4, 2, 2.0) == 10
    assert expert_capacity(7, 4, 1, 1.0) == 2
    assert expert_capacity(3, 4, 2, 0.1, min_capacity=4) == 4
    assert expert_capacity(2048, 64, 2, 1.5) == math.ceil(2048 / 64 * 3)


def _two_expert_logits():
    # first choices: tokens 0-3 -> expert 0, tokens 4-5 -> expert 1 (with E=2, top-2 the second choice
    # is the other expert)
    p0 = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    return torch.stack([p0, 1 - p0], dim=1).log()


def test_capacity_drops_exactly_the_spec_tokens():
    """E=2, S=6, k=2, cf=0.5 -> C = ceil(6/2 * 2 * 0.5) = 3.

    First choices take slots first, in token order: expert 0 gets t0,t1,t2 (slots 0-2), t3 is dropped;
    expert 1 gets t4,t5 (slots 0-1). Second choices come after: expert 1 gives slot 2 to t0 and drops
    t1,t2,t3; expert 0 is full, so t4 and t5 lose their second choice. t3 loses both.
    """
    out = top_k_gating(_two_expert_logits(), top_k=2, capacity_factor=0.5)
    assert out.capacity == 3
    assert out.expert_index.tolist() == [[0, 1]] * 4 + [[1, 0]] * 2
    assert out.kept.tolist() == [[True, True], [True, False], [True, False], [False, False],
                                 [True, False], [True, False]]
    assert out.expert_counts.tolist() == [3, 3]
    assert out.dropped_counts.tolist() == [3, 3]
    w = out.combine_weights
    # t0 keeps both: renormalised over both = the probabilities themselves
    assert torch.allclose(w[0], torch.tensor([0.9, 0.1]))
    # one survivor: renormalised to 1; none: 0
    assert w[1].tolist() == [1.0, 0.0] and w[4].tolist() == [1.0, 0.0]
    assert w[3].tolist() == [0.0, 0.0]
    # the aux loss counts top-1 assignments before dropping: f = (4/6, 2/6)
    P = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.2]).mean()
    expected = 2 * (4 / 6 * P + 2 / 6 * (1 - P))
    assert out.aux_loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_capacity_in_the_layer_train_vs_eval():
    torch.manual_seed(0)
    d = 8
    experts = FFNExperts([SwiGLUExpert(d, 16) for _ in range(2)])
    router = LinearRouter(d, 2)
    moe = MoEFFN(experts, router, top_k=2, capacity_factor_train=0.5, capacity_factor_eval=1.0)
    x = torch.randn(1, 6, d)
    with torch.no_grad():
        router.groups[0].zero_()
        router.groups[0][0, 0] = 1.0
        x[0, :, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0, -1.0, -2.0])   # first choices 0,0,0,0,1,1
    moe.train()
    y = moe(x)
    assert moe.last_output.capacity == 3 and moe.last_output.num_dropped == 6
    assert torch.equal(y[0, 3], torch.zeros(d))                          # fully dropped token
    assert torch.allclose(y[0, 1], experts.expert_forward(0, x[0, 1:2])[0])  # lone survivor, weight 1
    moe.eval()
    moe(x)
    assert moe.last_output.capacity == 6 and moe.last_output.num_dropped == 0


def test_dropless_by_default_and_topk_order():
    torch.manual_seed(1)
    logits = torch.randn(32, 5)
    out = top_k_gating(logits, top_k=2)
    assert out.capacity is None and out.kept.all()
    assert torch.equal(out.expert_index, logits.topk(2, dim=1).indices)
    assert torch.allclose(out.combine_weights.sum(1), torch.ones(32))
    assert out.expert_counts.sum().item() == 64


def test_second_choice_gumbel_noise_keeps_first_choice():
    torch.manual_seed(2)
    logits = torch.randn(64, 6)
    g = torch.Generator().manual_seed(0)
    out = top_k_gating(logits, top_k=2, second_choice_noise=True, generator=g)
    assert torch.equal(out.expert_index[:, 0], logits.argmax(1))
    assert (out.expert_index[:, 1] != out.expert_index[:, 0]).all()
    # the noise makes some second choices differ from the noiseless runner-up
    assert (out.expert_index[:, 1] != logits.topk(2, dim=1).indices[:, 1]).any()


def test_top1_keeps_rho_max():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    out = top_k_gating(logits, top_k=1, renormalize=False)
    assert out.combine_weights.item() == pytest.approx(torch.softmax(logits, 1).max().item())


def test_masked_experts_are_never_chosen():
    logits = torch.randn(16, 4)
    mask = torch.tensor([True, False, True, True])
    out = top_k_gating(logits, top_k=2, expert_mask=mask)
    assert (out.expert_index != 1).all()
    assert (out.router_probs[:, 1] == 0).all()
    assert out.expert_counts[1].item() == 0
