"""naive-expansion: exactly K LoRA experts + K router rows per MoE layer per task, old experts frozen
and bit-identical through a later task (old rows too when frozen), new experts that copy the most-used
ones with their rows (or fresh ones, rows at the old rows' scale or at zero), no load balancing by
default, linear growth in the record, state round trip."""
from __future__ import annotations

import json

import torch
from transformers import LlavaForConditionalGeneration

from torch.utils.data import DataLoader

from bench.moe import LoRAExperts, LoRAFFNExperts, decoder_layers
from methods import hparams_for
from methods.base import MethodContext, trainable_parameters
from methods import naive_expansion
from methods.naive_expansion import NaiveExpansion
from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

D = 16


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    return micro_llava(seed, d=D)


def attached(model, **overrides) -> NaiveExpansion:
    """The method on ``model``; growth "fresh" unless given, since these tests pass no task data (the
    default "copy" measures which experts the new task's records use, ``test_copy_growth_...``)."""
    method = NaiveExpansion(hparams_for("naive-expansion", {"growth": "fresh", **overrides}))
    method.attach(model, MethodContext(num_tasks=3, steps_per_task=1, device=torch.device("cpu")))
    return method


def increment(K: int, r: int, d: int, layers: int) -> int:
    """Output-delta experts, per task: K experts of A (r x d) + B (d x r) and K router rows of d, in
    every MoE layer."""
    return layers * K * (2 * r * d + d)


def ffn_increment(K: int, r: int, d: int, d_ff: int, layers: int) -> int:
    """LoRA-FFN experts, per task: K experts of a rank-r LoRA on gate, up and down (3 r (d + d_ff))
    and K router rows of d, in every MoE layer."""
    return layers * K * (3 * r * (d + d_ff) + d)

FROZEN_ROWS = dict(expert_type="delta", moe_layers="alternate", train_old_rows="false", new_row_init="kaiming")


def train_a_little(model, method, steps: int = 3) -> None:
    """A few AdamW steps with weight decay on the method's trainable parameters (LM + aux loss)."""
    params = trainable_parameters(method.model)
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, 60, (2, 8))
        aux = method.auxiliary_loss()
        loss = model(input_ids=ids, labels=ids).loss + (0.0 if aux is None else aux)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def test_each_task_adds_exactly_k_experts_and_k_rows_and_trains_only_them():
    model = tiny_llava()
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    method = attached(model, experts_per_task="3", lora_rank="4", top_k="2", **FROZEN_ROWS)
    base_total = sum(p.numel() for p in model.parameters())
    step = increment(K=3, r=4, d=D, layers=2)
    for t in range(3):
        before = {id(p) for p in model.parameters()}
        method.begin_task(t, None, None)
        if t == 0:
            with torch.no_grad():  # B = 0: the first experts add nothing to the dense FFN
                torch.testing.assert_close(model(input_ids=ids).logits, dense, rtol=1e-5, atol=1e-6)
        assert sum(p.numel() for p in model.parameters()) == base_total + (t + 1) * step
        new = [p for p in model.parameters() if id(p) not in before]
        assert {id(p) for p in trainable_parameters(method.model)} == {id(p) for p in new}
        assert sum(p.numel() for p in new) == step
        for i in (0, 2):
            moe = decoder_layers(model)[i].mlp
            assert isinstance(moe.experts, LoRAExperts) and moe.experts.num_experts == 3 * (t + 1)
            assert moe.router.num_experts == 3 * (t + 1) and len(moe.router.groups) == t + 1
            assert [moe.experts.is_frozen(e) for e in range(3 * (t + 1))] == [True] * (3 * t) + [False] * 3
            assert not any(p.requires_grad for p in moe.experts.base.parameters())
        assert method.task_report()["experts_per_layer"] == {"0": 3 * (t + 1), "2": 3 * (t + 1)}


def test_old_experts_and_rows_stay_bit_identical_under_adamw_weight_decay():
    model = tiny_llava()
    method = attached(model, train_old_rows="false")
    method.begin_task(0, None, None)
    train_a_little(model, method)
    moe = decoder_layers(model)[2].mlp
    old = [p.detach().clone() for e in range(2) for p in moe.experts.expert_parameters(e)]
    old_rows = moe.router.groups[0].detach().clone()
    method.begin_task(1, None, None)
    new_before = [p.detach().clone() for e in (2, 3) for p in moe.experts.expert_parameters(e)]
    train_a_little(model, method)
    assert all(torch.equal(p, s) for p, s in
               zip([p for e in range(2) for p in moe.experts.expert_parameters(e)], old))
    assert torch.equal(moe.router.groups[0], old_rows)
    assert any(not torch.equal(p, s) for p, s in
               zip([p for e in (2, 3) for p in moe.experts.expert_parameters(e)], new_before))


def test_fresh_growth_trains_the_whole_router_with_fresh_new_rows_but_not_the_old_experts():
    model = tiny_llava()
    method = attached(model)
    assert method.auxiliary_loss() is None  # no load balancing over frozen experts by default
    method.begin_task(0, None, None)
    train_a_little(model, method)
    method.begin_task(1, None, None)
    moe = decoder_layers(model)[3].mlp     # every decoder layer is an MoE layer
    assert isinstance(moe.experts, LoRAFFNExperts)
    assert all(g.requires_grad for g in moe.router.groups)
    assert moe.experts.is_frozen(0) and moe.experts.is_frozen(1) and not moe.experts.is_frozen(2)
    # new rows at nn.Linear's init (|w| <= 1/sqrt(d), the scale the old rows started at), so the new
    # experts compete for tokens from the first step; each starts as the dense FFN (B = 0)
    new_rows = moe.router.groups[1]
    assert torch.count_nonzero(new_rows) == new_rows.numel() and float(new_rows.detach().abs().max()) <= D ** -0.5
    assert moe.experts.expert_numel(2) == 3 * 32 * (D + 40)
    x = torch.randn(5, D)
    with torch.no_grad():
        torch.testing.assert_close(moe.experts.expert_forward(2, x), moe.experts.base(x))


def test_copy_growth_copies_the_most_used_experts_and_their_rows(monkeypatch):
    # hand-made usage of the new task's records: expert 1 most used in layers 0 and 1, expert 0 elsewhere
    usage = {0: [0.2, 0.9], 1: [0.1, 0.7], 2: [0.8, 0.3], 3: [0.6, 0.6]}
    monkeypatch.setattr(naive_expansion, "measure_usage", lambda *args, **kwargs: {
        i: torch.tensor(f, dtype=torch.float64) for i, f in usage.items()})
    model = tiny_llava()
    method = NaiveExpansion(hparams_for("naive-expansion", {}))   # the defaults: growth "copy"
    method.attach(model, MethodContext(num_tasks=3, steps_per_task=1, device=torch.device("cpu")))
    records = DataLoader(list(range(6)), batch_size=2)  # only sampled from: the usage pass is the stand-in
    method.begin_task(0, None, records)
    train_a_little(model, method)
    method.begin_task(1, None, records)
    sources = method.sources
    assert sources == {0: [1, 0], 1: [1, 0], 2: [0, 1], 3: [0, 1]}  # most used first, ties: lower id
    assert method.task_report()["copy_sources"] == {str(i): s for i, s in sources.items()}
    for i, moe in method.layers.items():
        rows = moe.router.weight.detach()
        for new, src in zip((2, 3), sources[i]):
            # the expert is an exact, trainable copy; its row the source's plus 1% noise
            assert all(torch.equal(a, b) for a, b in zip(moe.experts.expert_parameters(new),
                                                         moe.experts.expert_parameters(src)))
            assert not moe.experts.is_frozen(new) and moe.experts.is_frozen(src)
            gap = (rows[new] - rows[src]).norm() / rows[src].norm()
            assert 0 < float(gap) < 0.05


def test_zero_new_rows_start_at_logit_zero():
    model = tiny_llava()
    method = attached(model, new_row_init="zero")
    method.begin_task(0, None, None)
    train_a_little(model, method)
    method.begin_task(1, None, None)
    moe = decoder_layers(model)[3].mlp
    assert torch.count_nonzero(moe.router.groups[1]) == 0
    with torch.no_grad():
        assert torch.equal(moe.router(torch.randn(5, D))[:, 2:], torch.zeros(5, 2))


def test_state_dict_round_trip_reproduces_the_trained_method():
    model = tiny_llava()
    method = attached(model)
    for t in range(2):
        method.begin_task(t, None, None)
        train_a_little(model, method, steps=2)
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    state = json.loads(json.dumps(method.state_dict()))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    fresh_model = tiny_llava()
    fresh = attached(fresh_model)
    fresh.load_state_dict(state)
    fresh_model.load_state_dict(saved)                   # strict: the same module tree and names
    with torch.no_grad():
        assert torch.equal(fresh_model(input_ids=ids).logits, expected)
    assert {n: p.requires_grad for n, p in fresh_model.named_parameters()} == flags
    fresh.begin_task(2, None, None)                      # and it keeps growing from there
    assert decoder_layers(fresh_model)[0].mlp.experts.num_experts == 6


def test_record_shows_linear_growth_and_frozen_old_experts(tiny_run):
    done = tiny_run("naive-expansion")
    record, snapshots = done.record, done.ffn_after  # decoder FFN parameters after each task
    d, d_ff = 128, 344  # the tiny preset's text hidden and FFN sizes
    step = ffn_increment(K=2, r=32, d=d, d_ff=d_ff, layers=4)
    params = record["parameters"]
    assert params[1]["total"] - params[0]["total"] == step
    # task 1 trains its experts and router; task 2 its new experts and the whole router (old rows too)
    assert params[0]["trained"] == step and params[1]["trained"] == step + 4 * 2 * d
    # a token uses top-2 of the layer's experts: the other experts are the inactive ones
    assert params[1]["total"] - params[1]["activated_per_token"] - \
        (params[0]["total"] - params[0]["activated_per_token"]) == 4 * 2 * (3 * 32 * (d + d_ff))
    # task 1's experts (0, 1) are bit-identical after task 2
    old = [n for n in snapshots[0] if ".experts.experts.0." in n or ".experts.experts.1." in n]
    assert len(old) == 4 * 2 * 3 * 2
    assert all(torch.equal(snapshots[0][n], snapshots[1][n]) for n in old)
    assert [r["experts_per_layer"] for r in record["method_reports"]] == [{str(i): 2 for i in range(4)},
                                                                          {str(i): 4 for i in range(4)}]
    assert len(record["method_reports"][1]["expert_utilisation"]["0"]) == 4
