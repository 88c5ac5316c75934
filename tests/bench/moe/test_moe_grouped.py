"""The fused grouped SwiGLU node equals the module-by-module experts (values, gradients, frozen ones)."""
import torch

from bench.moe import FFNExperts, SwiGLUExpert
from bench.moe.experts import ExpertSet
from bench.moe.grouped import grouped_swiglu


def test_grouped_swiglu_gradcheck_with_empty_and_frozen_experts():
    torch.manual_seed(0)
    d, f, counts = 5, 7, [3, 0, 4, 2]
    weights = [tuple(torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                     for shape in [(f, d), (f, d), (d, f)]) for _ in counts]
    weights[3][1].requires_grad_(False)
    x = torch.randn(sum(counts), d, dtype=torch.float64, requires_grad=True)
    flat = [w for triple in weights for w in triple]

    def fn(x, *flat):
        return grouped_swiglu(x, counts, [flat[i:i + 3] for i in range(0, len(flat), 3)])

    assert torch.autograd.gradcheck(fn, (x, *flat))


def test_fused_path_matches_module_loop():
    torch.manual_seed(1)
    experts = FFNExperts([SwiGLUExpert(8, 12) for _ in range(4)])
    experts.freeze(2)
    counts = [5, 0, 3, 6]
    x = torch.randn(sum(counts), 8)
    g = torch.randn(sum(counts), 8)

    def run(fn):
        experts.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        y = fn(xi, counts)
        y.backward(g)
        return y, xi.grad, [None if p.grad is None else p.grad.clone() for p in experts.parameters()]

    y1, gx1, gp1 = run(experts.forward_grouped)                                  # fused
    y2, gx2, gp2 = run(lambda xi, c: ExpertSet.forward_grouped(experts, xi, c))  # module loop
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(gx1, gx2)
    for a, b in zip(gp1, gp2):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    # expert 1 got no tokens and expert 2 is frozen: neither has a gradient
    assert all(p.grad is None for e in (1, 2) for p in experts.expert_parameters(e))


def test_biased_experts_fall_back_to_the_module_loop():
    torch.manual_seed(2)
    experts = FFNExperts([SwiGLUExpert(8, 12, bias=True) for _ in range(2)])
    x = torch.randn(5, 8)
    y = experts.forward_grouped(x, [2, 3])
    ref = torch.cat([experts.expert_forward(0, x[:2]), experts.expert_forward(1, x[2:])])
    torch.testing.assert_close(y, ref)
