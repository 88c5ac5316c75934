"""The fast (sorted) dispatch equals the eager reference; a 1-expert MoE equals the dense FFN."""
import copy

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from bench.moe import FFNExperts, LinearRouter, LoRAExperts, MoEFFN, SwiGLUExpert

D, DFF = 16, 40


def tiny_mlp(seed: int = 0) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=DFF, num_attention_heads=2,
                                num_key_value_heads=2))


def test_one_expert_moe_equals_dense_mlp():
    mlp = tiny_mlp()
    moe = MoEFFN(FFNExperts.from_mlp(mlp, 1), LinearRouter(D, 1), top_k=1)
    x = torch.randn(2, 7, D)
    y = moe(x)
    assert torch.allclose(y, mlp(x), atol=1e-6, rtol=0)
    assert moe.last_output.expert_counts.tolist() == [14]


def test_expert_copy_is_independent_of_the_mlp():
    mlp = tiny_mlp()
    experts = FFNExperts.from_mlp(mlp, 2)
    with torch.no_grad():
        experts.experts[0].gate_proj.weight.add_(1.0)
    assert not torch.equal(experts.experts[0].gate_proj.weight, mlp.gate_proj.weight)
    assert torch.equal(experts.experts[1].gate_proj.weight, mlp.gate_proj.weight)


def _pair(kind: str, num_experts: int, top_k: int, cf: float | None, noise: bool):
    torch.manual_seed(3)
    if kind == "ffn":
        experts = FFNExperts([SwiGLUExpert(D, DFF) for _ in range(num_experts)])
    else:
        experts = LoRAExperts.on_mlp(tiny_mlp(1), num_experts, r=4, alpha=8)
        for ex in experts.experts:          # B = 0 at init would hide the experts: give them values
            torch.nn.init.normal_(ex.lora_B, std=0.1)
    fast = MoEFFN(experts, LinearRouter(D, num_experts), top_k=top_k, capacity_factor_train=cf,
                  second_choice_noise=noise, dispatch="fast")
    eager = copy.deepcopy(fast)
    eager.dispatch = "eager"
    return fast, eager


def _run(moe: MoEFFN, x: torch.Tensor, seed: int):
    moe.generator = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_(True)
    y = moe(x)
    loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + 0.1 * moe.last_output.aux_loss
    loss.backward()
    grads = {n: p.grad for n, p in moe.named_parameters() if p.requires_grad}
    return y, x.grad, grads, moe.last_output


@pytest.mark.parametrize("kind", ["ffn", "lora"])
@pytest.mark.parametrize("top_k,cf,noise", [(1, None, False), (2, None, False), (1, 1.0, False),
                                            (2, 0.75, False), (2, 1.0, True)])
def test_fast_equals_eager(kind, top_k, cf, noise):
    fast, eager = _pair(kind, 4, top_k, cf, noise)
    x = torch.randn(3, 11, D)
    yf, gxf, gf, of = _run(fast, x, seed=7)
    ye, gxe, ge, oe = _run(eager, x, seed=7)
    assert torch.equal(of.expert_index, oe.expert_index) and torch.equal(of.kept, oe.kept)
    if cf is not None:
        assert of.num_dropped > 0, "the capacity case should drop something to be a real test"
    torch.testing.assert_close(yf, ye, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gxf, gxe, rtol=1e-6, atol=1e-6)
    assert gf.keys() == ge.keys()
    for name in gf:
        if gf[name] is None or ge[name] is None:
            assert gf[name] is None and ge[name] is None, name
        else:
            torch.testing.assert_close(gf[name], ge[name], rtol=1e-5, atol=1e-6, msg=name)


def test_unused_expert_gets_no_gradient_in_both_paths():
    fast, eager = _pair("ffn", 4, 1, None, False)
    for moe in (fast, eager):
        with torch.no_grad():
            moe.router.groups[0][3].fill_(-100.0)   # expert 3 is never the first choice...
            moe.router.groups[0][3, 0] = 0.0
        x = torch.randn(2, 5, D).abs()
        x[..., 0] = 0.0
        moe(x).sum().backward()
        assert moe.last_output.expert_counts[3] == 0
        assert all(p.grad is None for p in moe.experts.expert_parameters(3))
