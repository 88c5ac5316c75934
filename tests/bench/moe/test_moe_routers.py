"""Routers: EvoMoE's DTR separates image and text tokens; the linear router's rows and masks."""
import copy

import torch

from bench.moe import FFNExperts, HyperRouter, LinearRouter, MoEFFN, SwiGLUExpert, TokenHypernet

D = 16


def test_dtr_routes_same_hidden_state_differently_by_modality():
    torch.manual_seed(0)
    router = HyperRouter(D, num_experts=4, r=16, h=4, m=16)
    u = torch.randn(8, D)
    x = torch.cat([u, u])                                   # the same 8 states, as text then as image
    image_mask = torch.tensor([False] * 8 + [True] * 8)
    logits = router(x, image_mask)
    assert logits.shape == (16, 4)
    assert not torch.allclose(logits[:8], logits[8:])
    assert (logits[:8].argmax(1) != logits[8:].argmax(1)).any()
    # each half is exactly its own hypernetwork followed by the shared projection
    torch.testing.assert_close(logits[:8], router.proj(router.text(u)))
    torch.testing.assert_close(logits[8:], router.proj(router.image(u)))
    # no mask = all text
    torch.testing.assert_close(router(u), logits[:8])


def test_dtr_gradients_reach_only_the_modality_used():
    torch.manual_seed(1)
    router = HyperRouter(D, num_experts=4)
    router(torch.randn(5, D), torch.ones(5, dtype=torch.bool)).sum().backward()
    assert all(p.grad is None for p in router.text.parameters())
    assert all(p.grad is not None for p in router.image.parameters())
    assert router.proj.groups[0].grad is not None


def test_hypernet_basis_form_matches_materialised_weights():
    torch.manual_seed(2)
    hn = TokenHypernet(D, r=3, h=2, m=5)
    u = torch.randn(4, D)
    a = hn.coeff(u)
    for i in range(4):
        c = torch.cat([torch.ones(1), a[i]])
        down = (c.view(-1, 1, 1) * hn.down_basis).sum(0)                # [2r, d]
        up = (c.view(-1, 1, 1) * hn.up_basis).sum(0)                    # [m, r]
        z = down @ u[i]
        e = up @ (torch.nn.functional.silu(z[:3]) * z[3:])
        torch.testing.assert_close(hn(u)[i], e, rtol=1e-5, atol=1e-6)


def test_moe_layer_uses_token_types_for_dtr():
    torch.manual_seed(3)
    experts = FFNExperts([SwiGLUExpert(D, 32) for _ in range(4)])
    moe = MoEFFN(experts, HyperRouter(D, 4), top_k=1)
    x = torch.randn(2, 6, D)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    y_text = moe(x)
    logits_text = moe.last_output.router_logits
    moe.set_token_types(mask)
    y_mixed = moe(x)
    logits_mixed = moe.last_output.router_logits
    torch.testing.assert_close(logits_mixed.view(2, 6, 4)[:, 3:], logits_text.view(2, 6, 4)[:, 3:])
    assert not torch.allclose(logits_mixed.view(2, 6, 4)[:, :3], logits_text.view(2, 6, 4)[:, :3])
    torch.testing.assert_close(y_mixed[:, 3:], y_text[:, 3:])
    # a cached decoding step ([B, 1] tokens) is text even while the prompt's mask is set
    step = moe(x[:, :1])
    torch.testing.assert_close(step, y_text[:, :1])


def test_linear_router_masked_rows_are_minus_inf():
    router = LinearRouter(D, 3)
    router.mask_rows([1])
    logits = router(torch.randn(4, D))
    assert torch.isinf(logits[:, 1]).all() and torch.isfinite(logits[:, [0, 2]]).all()


def test_mask_state_is_read_once_and_follows_every_change():
    """The router answers "all rows routable?" from a host-side copy, so it must notice every way the
    mask can change: masking, unmasking, growth, and load_state_dict."""
    from bench.perf.syncs import HostReadCounter

    router = LinearRouter(D, 3)
    x = torch.randn(4, D)
    router(x)
    with HostReadCounter() as reads:
        router(x)
        router(x)
    assert reads.total == 0
    router.mask_rows([1])
    assert torch.equal(router.routable_rows(), torch.tensor([0, 2])) and torch.isinf(router(x)[:, 1]).all()
    router.unmask_rows([1])
    assert router.all_rows_routable() and torch.isfinite(router(x)).all()
    router.append_rows(2, masked=True)
    assert not router.all_rows_routable() and torch.isinf(router(x)[:, 3:]).all()
    other = copy.deepcopy(router)
    other.unmask_rows([3, 4])
    router.load_state_dict(other.state_dict())  # an in-place copy into the same mask tensor
    assert router.all_rows_routable() and torch.isfinite(router(x)).all()


def test_dropless_moe_step_reads_only_the_expert_counts():
    """One training step of a dropless MoE layer with every row routable reads one tensor back from
    the device: the per-expert counts the sorted dispatch splits by (inherent to variable-size
    expert batches). With a capacity the kept assignments are read too (one ``nonzero``), and
    ``expert_capacity`` reads its own CPU scalar."""
    from bench.perf.syncs import HostReadCounter

    for capacity, expected in ((None, {"tolist"}), (1.0, {"tolist", "nonzero", "__float__"})):
        experts = FFNExperts([SwiGLUExpert(D, 16) for _ in range(4)])
        moe = MoEFFN(experts, LinearRouter(D, 4), top_k=2, capacity_factor_train=capacity)
        x = torch.randn(2, 6, D, requires_grad=True)
        moe(x).sum().backward()
        with HostReadCounter() as reads:
            moe(x).sum().backward()
        assert {site.split(" ")[0] for site in reads.sites} == expected, reads.sites
