"""The MoE layer: LoRA residual-base mode, per-sample routers, installation into a tiny LLaVA."""
import pytest
import torch
from transformers import LlavaForConditionalGeneration

from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

from bench.moe import (FFNExperts, LinearRouter, LoRAExperts, MoEFFN, SwiGLUExpert, collect_aux_loss,
                       decoder_layers, install_moe, moe_layers_of, select_moe_layers)

D = 16


def test_lora_experts_start_as_the_frozen_ffn():
    torch.manual_seed(0)
    base = SwiGLUExpert(D, 32)
    moe = MoEFFN(LoRAExperts(D, D, 2, r=4, alpha=8, base=base), LinearRouter(D, 2), top_k=2)
    x = torch.randn(2, 5, D)
    assert torch.equal(moe(x), base(x))                  # B = 0: every delta is exactly zero
    assert not any(p.requires_grad for p in base.parameters())


def test_lora_residual_mode_formula():
    torch.manual_seed(1)
    base = SwiGLUExpert(D, 32)
    experts = LoRAExperts(D, D, 3, r=4, alpha=8, base=base, init="normal")
    for ex in experts.experts:
        torch.nn.init.normal_(ex.lora_B, std=0.1)
    moe = MoEFFN(experts, LinearRouter(D, 3), top_k=2)
    x = torch.randn(7, D)
    y, out = moe.forward_with_output(x)
    expected = base(x).clone()
    for s in range(7):
        for j in range(2):
            e = out.expert_index[s, j].item()
            a, b = experts.experts[e].lora_A, experts.experts[e].lora_B
            expected[s] += out.combine_weights[s, j] * (8 / 4) * (b @ (a @ x[s]))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    # dense MoELoRA-style mixing of the same set
    w = torch.softmax(torch.randn(7, 3), dim=1)
    dense = sum(w[:, e:e + 1] * experts.expert_forward(e, x) for e in range(3))
    torch.testing.assert_close(experts.mix_dense(x, w), dense, rtol=1e-5, atol=1e-6)


def test_per_sample_router_choice_equals_running_each_sample_alone():
    torch.manual_seed(2)
    experts = FFNExperts([SwiGLUExpert(D, 32) for _ in range(3)])
    r1 = LinearRouter(D, 2)                               # an old task's router: sees experts 0, 1
    moe = MoEFFN(experts, r1, top_k=2)
    moe.add_router(LinearRouter(D, 3))                     # a later task's router over all three
    x = torch.randn(3, 4, D)
    moe.set_router_choice(torch.tensor([1, 0, 1]))
    y = moe(x)
    merged = moe.last_output
    assert merged.expert_counts.sum().item() == 3 * 4 * 2
    assert torch.isinf(merged.router_logits.view(3, 4, 3)[1, :, 2]).all()
    for b, r in enumerate([1, 0, 1]):
        moe.set_router_choice(r)
        torch.testing.assert_close(y[b:b + 1], moe(x[b:b + 1]), rtol=1e-6, atol=1e-6)
    moe.set_router_choice(0)
    moe(x)
    assert moe.last_output.expert_counts[2].item() == 0


class ImageBiasedRouter(torch.nn.Module):
    """A router whose choice depends on the image mask: image tokens are pushed to expert 0."""

    def __init__(self, d: int, n: int):
        super().__init__()
        self.inner = LinearRouter(d, n)

    def forward(self, x, image_mask=None):
        logits = self.inner(x, None)
        if image_mask is not None:
            logits = logits + 10.0 * image_mask.float().unsqueeze(1) * torch.nn.functional.one_hot(
                torch.zeros_like(image_mask, dtype=torch.long), logits.shape[1])
        return logits


def test_selected_rows_see_their_own_router_choice_and_image_mask():
    """Chunked prefill and decode compaction run a subset of the prompt batch: per-sample state set
    for the whole batch must follow the rows (generate calls select_rows)."""
    torch.manual_seed(3)
    experts = FFNExperts([SwiGLUExpert(D, 32) for _ in range(3)])
    moe = MoEFFN(experts, ImageBiasedRouter(D, 3), top_k=1)
    moe.add_router(ImageBiasedRouter(D, 3))
    x = torch.randn(5, 4, D)
    choice = torch.tensor([1, 0, 0, 1, 1])
    image = torch.rand(5, 4) < 0.5
    moe.set_router_choice(choice)
    moe.set_token_types(image)
    with torch.no_grad():
        full = moe(x)
        for rows in (torch.tensor([0, 1]), torch.tensor([1, 3, 4]), torch.tensor([2])):
            moe.select_rows(rows)
            torch.testing.assert_close(moe(x[rows]), full[rows], rtol=1e-6, atol=1e-6)
        # a decoding step (one text token per row) on the rows still generating
        moe.select_rows(torch.tensor([0, 4]))
        step = moe(x[[0, 4], :1])
        moe.select_rows(None)
        moe.set_router_choice(choice[[0, 4]])
        moe.set_token_types(None)
        torch.testing.assert_close(step, moe(x[[0, 4], :1]), rtol=1e-6, atol=1e-6)
        # without the selection the per-sample choice no longer matches the batch: a clear error
        moe.set_router_choice(choice)
        with pytest.raises(ValueError, match="router choice"):
            moe(x[:2])


def test_rows_are_independent_only_when_no_token_can_be_dropped():
    """A capacity with k·cf >= E is at least the token count of any forward: nothing is dropped and a
    row's output is its own, so the evaluator may split the batch; a smaller one, or the Gumbel
    second-choice noise, couples the rows."""
    torch.manual_seed(4)
    experts = FFNExperts([SwiGLUExpert(D, 32) for _ in range(4)])
    moe = MoEFFN(experts, LinearRouter(D, 4), top_k=2, capacity_factor_eval=2.0).eval()
    x = torch.randn(6, 5, D) * 3
    assert moe.rows_independent_at_eval()
    with torch.no_grad():
        full = moe(x)
        assert moe.last_output.dropped_counts.sum().item() == 0
        torch.testing.assert_close(moe(x[2:4]), full[2:4], rtol=1e-6, atol=1e-6)
        moe.capacity_factor_eval = 0.5
        assert not moe.rows_independent_at_eval()
        moe(x)
        assert moe.last_output.dropped_counts.sum().item() > 0
    moe.capacity_factor_eval, moe.second_choice_noise = None, True
    assert not moe.rows_independent_at_eval()


def test_select_moe_layers():
    assert select_moe_layers(5) == [0, 2, 4]
    assert select_moe_layers(3, "all") == [0, 1, 2]
    assert select_moe_layers(4, [3, 1]) == [1, 3]
    with pytest.raises(ValueError):
        select_moe_layers(4, "odd")


def tiny_llava() -> LlavaForConditionalGeneration:
    return micro_llava(0, d=D)


def test_ffn_copies_with_renormalised_top2_reproduce_the_dense_llava():
    """MoE-LLaVA's start: E identical FFN copies + top-2 with weights summing to 1 = the dense FFN."""
    model = tiny_llava()
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    installed = install_moe(model, lambda i, mlp: MoEFFN(FFNExperts.from_mlp(mlp, 4), LinearRouter(D, 4),
                                                         top_k=2, capacity_factor_train=1.5,
                                                         capacity_factor_eval=None,
                                                         second_choice_noise=True))
    assert sorted(installed) == [0, 2]
    assert isinstance(decoder_layers(model)[2].mlp, MoEFFN)
    assert not isinstance(decoder_layers(model)[1].mlp, MoEFFN)
    with torch.no_grad():
        moe = model(input_ids=ids).logits
    torch.testing.assert_close(moe, dense, rtol=1e-4, atol=1e-5)
    layers = moe_layers_of(model)
    aux = collect_aux_loss(layers)
    assert aux is not None and aux.item() == pytest.approx(
        sum(m.last_output.aux_loss.item() for m in layers))


def test_probe_cycle_usage_and_pop_router():
    """LLaVA-CMoE's probing as the primitives express it: freeze, append a probe expert and a probe
    router (old rows + one), count usage, then discard the probe and its router."""
    torch.manual_seed(3)
    base = SwiGLUExpert(D, 32)
    experts = LoRAExperts(D, D, 2, r=4, alpha=8, base=base)
    moe = MoEFFN(experts, LinearRouter(D, 2), top_k=2)
    x = torch.randn(2, 6, D)
    moe(x)
    assert moe.usage_counts.tolist() == [12, 12] and moe.usage_tokens == 12
    experts.freeze()
    (probe,) = experts.append(1)
    probe_router = LinearRouter.from_router(moe.router)
    probe_router.append_rows(1)
    moe.set_router_choice(moe.add_router(probe_router))
    moe.reset_usage()
    moe(x)
    f = moe.usage_fraction()
    assert f.shape == (3,) and f.sum().item() == pytest.approx(2.0)
    moe.pop_router()
    experts.pop(1)
    assert len(moe.routers) == 1 and experts.num_experts == 2
    moe(x)
    assert moe.last_output.expert_counts.shape == (2,)
