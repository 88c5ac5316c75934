"""moe-llava: the one-time conversion reproduces the dense model, capacity factors switch between
training and evaluation, only experts + routers train, no growth, and the state round-trips."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from bench.moe import FFNExperts, MoEFFN, decoder_layers, expert_capacity
from methods import hparams_for
from methods.base import MethodContext
from methods.moe_llava import MoELLaVA
from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

D = 16


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    return micro_llava(seed, d=D)


def converted(model, **overrides) -> MoELLaVA:
    method = MoELLaVA(hparams_for("moe-llava", overrides))
    method.attach(model, MethodContext(num_tasks=2, steps_per_task=1, device=torch.device("cpu")))
    method.begin_task(0, None, None)
    return method


def test_conversion_equals_the_dense_model_and_trains_only_experts_and_routers():
    model = tiny_llava()
    ids = torch.randint(0, 60, (2, 11))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    dense_ffn_1 = decoder_layers(model)[1].mlp
    method = converted(model, capacity_factor_train="none", capacity_factor_eval="none")
    layers = decoder_layers(model)
    assert sorted(method.layers) == [0, 2]                           # alternate layers, range(L)[::2]
    for i in (0, 2):
        moe = layers[i].mlp
        assert isinstance(moe, MoEFFN) and isinstance(moe.experts, FFNExperts)
        assert moe.experts.num_experts == 4 and moe.top_k == 2 and moe.router.num_experts == 4
        assert moe.router.weight.dtype == torch.float32
        assert moe.second_choice_noise                                 # DeepSpeed 0.9.5 default
    assert layers[1].mlp is dense_ffn_1
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, dense, rtol=1e-5, atol=1e-5)
        model.train()                                                 # the noisy second choice is
        torch.testing.assert_close(model(input_ids=ids).logits, dense, rtol=1e-5, atol=1e-5)  # harmless
        model.eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("model.language_model.layers.0.mlp.", "model.language_model.layers.2.mlp."))}
    assert trainable == expected and any(".routers." in n for n in trainable)
    # one-time conversion: a later task neither grows nor re-converts
    before = sum(p.numel() for p in model.parameters())
    moe0 = layers[0].mlp
    method.begin_task(1, None, None)
    assert layers[0].mlp is moe0 and sum(p.numel() for p in model.parameters()) == before


def test_train_dense_ffns_reproduces_the_substring_quirk():
    model = tiny_llava()
    converted(model, train_dense_ffns="true")
    for i, layer in enumerate(decoder_layers(model)):
        assert all(p.requires_grad for p in layer.mlp.parameters()), i
        assert not any(p.requires_grad for p in layer.self_attn.parameters())


def test_capacity_factor_is_1_5_in_training_and_2_0_in_evaluation():
    model = tiny_llava()
    method = converted(model)
    ids = torch.randint(0, 60, (3, 10))
    S = ids.numel()
    moe = decoder_layers(model)[0].mlp
    # every token's first choice is expert 0: S first choices cannot fit C = ceil(S/4 * 2 * 1.5) < S
    skew = torch.tensor([10.0, 5.0, 0.0, 0.0])
    moe.router.register_forward_hook(lambda mod, args, logits: skew.expand_as(logits).clone())
    with torch.no_grad():
        model.train()
        model(input_ids=ids)
    train_out = moe.last_output
    assert train_out.capacity == expert_capacity(S, 4, 2, 1.5) == 23
    assert train_out.dropped_counts[0] >= S - 23                    # 1.5 cannot hold a skewed batch
    method.auxiliary_loss()                                         # the trainer's per-micro-batch call
    report = method.task_report()
    assert report["capacity_dropped_fraction"]["0"] == pytest.approx(train_out.num_dropped / (2 * S), abs=1e-6)
    with torch.no_grad():
        model.eval()
        model(input_ids=ids)
    assert moe.last_output.capacity == expert_capacity(S, 4, 2, 2.0) == S
    assert moe.last_output.num_dropped == 0                         # E=4, k=2, cf=2: C = S, never full
    json.dumps(report)


def test_aux_loss_is_0_01_times_the_sum_over_moe_layers():
    model = tiny_llava()
    method = converted(model)
    model.train()
    model(input_ids=torch.randint(0, 60, (2, 7)))
    expected = 0.01 * sum(method.layers[i].last_output.aux_loss for i in (0, 2))
    aux = method.auxiliary_loss()
    assert aux.requires_grad and aux.item() == pytest.approx(expected.item())


def test_state_dict_round_trip_reproduces_the_trained_method():
    model = tiny_llava()
    method = converted(model)
    with torch.no_grad():                                            # stands in for training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 60, (2, 9))
    torch.manual_seed(7)                                             # the Gumbel noise draws from it
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    state = json.loads(json.dumps(method.state_dict()))
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    fresh_model = tiny_llava()
    fresh = MoELLaVA(hparams_for("moe-llava", {}))
    fresh.attach(fresh_model, MethodContext(num_tasks=2, steps_per_task=1, device=torch.device("cpu")))
    fresh.load_state_dict(state)
    fresh_model.load_state_dict(saved)                               # strict: same module tree
    torch.manual_seed(7)
    with torch.no_grad():
        assert torch.equal(fresh_model(input_ids=ids).logits, expected)
    assert sorted(fresh.layers) == [0, 2]


def test_two_task_record_shows_no_growth_and_per_task_utilisation(tiny_run):
    done = tiny_run("moe-llava")
    record, totals = done.record, done.totals  # the model's parameter count before each phase
    params = record["parameters"]
    assert params[0]["total"] == params[1]["total"] == totals[0] == totals[1]
    assert params[0]["trained"] == params[1]["trained"]
    assert params[0]["activated_per_token"] < params[0]["total"]
    assert record["hparams"]["capacity_factor_train"] == 1.5 and record["hparams"]["num_experts"] == 4
    for report in record["method_reports"]:
        assert report["experts_per_layer"] == {"0": 4, "2": 4}
        for fractions in report["expert_utilisation"].values():
            # top-2 assignments per token, minus those dropped for capacity
            assert len(fractions) == 4 and 0 < sum(fractions) <= 2.0 + 1e-6
        assert set(report["capacity_dropped_fraction"]) == {"0", "2"}
