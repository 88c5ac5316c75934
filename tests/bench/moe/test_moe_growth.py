"""Growing expert sets and routers: old outputs, old parameters and old optimizer state stay put."""
import pytest
import torch

from bench.moe import FFNExperts, LinearRouter, LoRAExperts, MoEFFN, SwiGLUExpert

D, DFF = 16, 32


def ffn_moe(num_experts=3, top_k=2, cf=None, seed=0) -> MoEFFN:
    torch.manual_seed(seed)
    experts = FFNExperts([SwiGLUExpert(D, DFF) for _ in range(num_experts)])
    return MoEFFN(experts, LinearRouter(D, num_experts), top_k=top_k, capacity_factor_train=cf,
                  capacity_factor_eval=cf)


def lora_moe(num_experts=2, seed=0) -> MoEFFN:
    torch.manual_seed(seed)
    base = SwiGLUExpert(D, DFF)
    experts = LoRAExperts(D, D, num_experts, r=4, alpha=8, base=base)
    for ex in experts.experts:
        torch.nn.init.normal_(ex.lora_B, std=0.1)
    return MoEFFN(experts, LinearRouter(D, num_experts), top_k=2)


@pytest.mark.parametrize("make", [lambda: ffn_moe(), lambda: ffn_moe(cf=1.0), lambda: lora_moe()],
                         ids=["ffn", "ffn-capacity", "lora"])
@pytest.mark.parametrize("dispatch", ["fast", "eager"])
def test_masked_new_expert_leaves_old_outputs_bit_identical(make, dispatch):
    moe = make()
    moe.dispatch = dispatch
    x = torch.randn(2, 9, D)
    with torch.no_grad():
        y0 = moe(x)
    old = list(moe.parameters())   # hold the objects, so ids cannot be recycled
    moe.experts.append(1)
    moe.router.append_rows(1, masked=True)
    with torch.no_grad():
        y1 = moe(x)
    assert torch.equal(y0, y1)
    assert {id(p) for p in old} <= {id(p) for p in moe.parameters()}, "existing Parameters replaced"
    assert moe.last_output.expert_counts[-1].item() == 0
    # unmasking lets the new expert take tokens
    moe.router.unmask_rows([moe.experts.num_experts - 1])
    with torch.no_grad():
        moe.router.groups[-1].copy_(10 * moe.router.weight[:1])
        moe(x)
    assert moe.last_output.expert_counts[-1].item() > 0


def test_copy_from_and_pop():
    moe = ffn_moe()
    (new,) = moe.experts.append(copy_from=1)
    moe.experts.freeze(1)
    assert torch.equal(moe.experts.experts[new].up_proj.weight, moe.experts.experts[1].up_proj.weight)
    assert moe.experts.experts[new].up_proj.weight is not moe.experts.experts[1].up_proj.weight
    assert not moe.experts.is_frozen(new) and moe.experts.is_frozen(1)
    moe.experts.pop()
    assert moe.experts.num_experts == 3
    rows = moe.router.append_rows(2, copy_from=[0, 2])
    assert torch.equal(moe.router.weight[rows], moe.router.weight[[0, 2]])


def test_router_rows_freeze_per_group():
    router = LinearRouter(D, 2)
    router.append_rows(2)
    with pytest.raises(ValueError):
        router.freeze([0])
    router.freeze([0, 1])
    assert [g.requires_grad for g in router.groups] == [False, True]
    copy = LinearRouter.from_router(router)
    assert torch.equal(copy.weight, router.weight) and copy.groups[0].requires_grad


@pytest.mark.parametrize("kind", ["ffn", "lora"])
def test_frozen_experts_and_optimizer_state_survive_training_a_new_expert(kind):
    moe = ffn_moe(num_experts=2) if kind == "ffn" else lora_moe()
    x = torch.randn(4, 8, D)
    target = torch.randn(4, 8, D)
    opt = torch.optim.AdamW(moe.parameters(), lr=1e-2, weight_decay=0.1)

    def step():
        opt.zero_grad()
        y = moe(x)
        loss = (y - target).pow(2).mean() + 0.01 * moe.last_output.aux_loss
        loss.backward()
        opt.step()

    for _ in range(3):                       # task 1: everything trains, AdamW builds state
        step()
    old_params = [p for p in moe.parameters() if p.requires_grad]
    snap_params = [p.detach().clone() for p in old_params]
    snap_state = [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                  for p in old_params]

    # task 2: freeze the old experts and router rows, append a trainable expert + row
    moe.experts.freeze()
    moe.router.freeze()
    new_expert = moe.experts.append(1)[0]
    moe.router.append_rows(1)
    new_params = moe.experts.expert_parameters(new_expert) + [moe.router.groups[-1]]
    if kind == "lora":                       # B = 0 would make the first steps trivial
        torch.nn.init.normal_(moe.experts.experts[new_expert].lora_B, std=0.1)
    assert all(any(p is q for q in moe.parameters()) for p in old_params)
    opt.add_param_group({"params": new_params})
    before_new = [p.detach().clone() for p in new_params]

    for _ in range(3):
        step()
    for p, s in zip(old_params, snap_params):
        assert torch.equal(p, s), "a frozen parameter moved (update or weight decay)"
    for p, s in zip(old_params, snap_state):
        st = opt.state[p]
        assert st.keys() == s.keys()
        for k in s:
            assert torch.equal(torch.as_tensor(st[k]), torch.as_tensor(s[k])), k
    assert moe.last_output.expert_counts[new_expert] > 0
    assert any(not torch.equal(p, b) for p, b in zip(new_params, before_new))
