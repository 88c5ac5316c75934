"""LoRA-FFN experts: a fresh set is the dense FFN, the fast path equals the eager one (values and
gradients), an expert equals an FFN whose weights carry its LoRA, copies are exact and independent."""
import torch

from bench.moe import LinearRouter, LoRAFFNExperts, MoEFFN, SwiGLUExpert

D, F = 16, 24


def _set(n=3, seed=0):
    torch.manual_seed(seed)
    return LoRAFFNExperts(SwiGLUExpert(D, F), n, r=4, alpha=8)


def _randomise(experts):
    with torch.no_grad():
        for p in experts.experts.parameters():
            p.normal_(0, 0.2)


def test_fresh_experts_compute_the_dense_ffn_and_parameter_count():
    experts = _set()
    x = torch.randn(10, D)
    layer = MoEFFN(experts, LinearRouter(D, 3), top_k=2)
    torch.testing.assert_close(layer(x[None])[0], experts.base(x), rtol=1e-6, atol=1e-6)
    assert experts.expert_numel(0) == 3 * 4 * (D + F)
    assert not any(p.requires_grad for p in experts.base.parameters())


def test_expert_equals_ffn_with_merged_lora_weights():
    experts = _set()
    _randomise(experts)
    x = torch.randn(7, D)
    e = experts.experts[1]
    merged = SwiGLUExpert(D, F)
    with torch.no_grad():
        for name in ("gate_proj", "up_proj", "down_proj"):
            lora = getattr(e, name)
            getattr(merged, name).weight.copy_(getattr(experts.base, name).weight + lora.scaling * lora.lora_B @ lora.lora_A)
    torch.testing.assert_close(experts.expert_forward(1, x), merged(x), rtol=1e-5, atol=1e-5)


def test_fast_and_eager_dispatch_agree_in_values_and_gradients():
    outs, grads = [], []
    for dispatch in ("fast", "eager"):
        experts = _set(seed=1)
        _randomise(experts)
        torch.manual_seed(2)
        layer = MoEFFN(experts, LinearRouter(D, 3), top_k=2, dispatch=dispatch)
        x = torch.randn(2, 9, D, requires_grad=True)
        y = layer(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([x.grad] + [p.grad for p in experts.experts.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_copied_expert_is_exact_and_trains_alone():
    experts = _set()
    _randomise(experts)
    experts.freeze()
    (new,) = experts.append(1, copy_from=2)
    x = torch.randn(5, D)
    torch.testing.assert_close(experts.expert_forward(new, x), experts.expert_forward(2, x))
    assert experts.is_frozen(2) and not experts.is_frozen(new)
    assert experts.experts[new].gate_proj.lora_A is not experts.experts[2].gate_proj.lora_A


def test_grouped_forward_skips_experts_without_rows_and_frozen_ones_get_no_gradient():
    experts = _set(n=4)
    _randomise(experts)
    experts.freeze([0, 1])
    x = torch.randn(9, D)
    counts = [3, 0, 4, 2]  # expert 1 receives no rows
    y = experts.forward_grouped(x, counts)
    rows = x.split([3, 4, 2])
    eager = torch.cat([experts.expert_forward(e, r) for e, r in zip((0, 2, 3), rows)])
    torch.testing.assert_close(y, eager, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert all(p.grad is None for e in (0, 1) for p in experts.experts[e].parameters())
    assert all(p.grad is not None for e in (2, 3) for p in experts.experts[e].parameters())
