"""moelora: every decoder linear wrapped, the base model reproduced at init (B = 0), dense softmax
mixing with CoIN's alpha / r scaling checked by hand, everything trained on every task, no growth,
state round trip."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from bench.model.lora import DECODER_LINEARS
from bench.moe.moelora_linear import MoELoRALinear
from methods import hparams_for
from methods.base import MethodContext, trainable_parameters
from methods.moelora import MoELoRA
from micro_llava import micro_llava  # tests/ is on sys.path through its conftest.py

D = 16


def tiny_llava(seed: int = 0) -> LlavaForConditionalGeneration:
    return micro_llava(seed, d=D)


def attached(model, **overrides) -> MoELoRA:
    method = MoELoRA(hparams_for("moelora", overrides))
    method.attach(model, MethodContext(num_tasks=2, steps_per_task=1, device=torch.device("cpu")))
    return method


def test_wraps_every_decoder_linear_and_starts_as_the_base_model():
    model = tiny_llava()
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
    vision_before = {n: p.clone() for n, p in model.named_parameters() if "language_model" not in n}
    method = attached(model)
    assert len(method.linears) == 4 * len(DECODER_LINEARS)
    assert "0.self_attn.q_proj" in method.linears and "3.mlp.down_proj" in method.linears
    for lin in method.linears.values():
        assert lin.num_experts == 8 and lin.experts.r == 4 and lin.scaling == 64.0 / 32
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, dense)       # B = 0: every delta is exactly 0
    # trainable = exactly the experts and routers; the vision tower, projector and lm_head untouched
    trainable = {id(p) for p in trainable_parameters(method.model)}
    expected = {id(p) for lin in method.linears.values()
                for p in list(lin.experts.parameters()) + list(lin.router.parameters())}
    assert trainable == expected
    assert not any(isinstance(m, MoELoRALinear) for n, m in model.named_modules() if "language_model" not in n)
    assert {n for n, _ in model.named_parameters() if "language_model" not in n} == set(vision_before)
    assert method.inactive_parameters_per_token() == 0


def test_mixing_is_dense_softmax_with_alpha_over_total_rank():
    torch.manual_seed(1)
    base = nn.Linear(12, 10)
    lin = MoELoRALinear(base, num_experts=4, rank=8, alpha=4.0)
    for ex in lin.experts.experts:
        nn.init.normal_(ex.lora_B, std=0.3)
    x = torch.randn(3, 5, 12)
    y = lin(x)
    R = lin.router.weight                                           # [4, 12]
    for b in range(3):
        for s in range(5):
            h = x[b, s]
            p = torch.softmax(R @ h, dim=0)
            assert (p > 0).all()                                    # dense: no top-k, no zero weights
            expected = base(h).clone()
            for e, ex in enumerate(lin.experts.experts):
                assert ex.lora_A.shape == (2, 12) and ex.lora_B.shape == (10, 2)   # rank r / N each
                expected += p[e] * (4.0 / 8) * (ex.lora_B @ (ex.lora_A @ h))        # alpha / r, total r
            torch.testing.assert_close(y[b, s], expected, rtol=1e-5, atol=1e-6)
    # the running statistics: mean weights sum to 1, entropy between 0 and log N
    assert sum(lin.mean_weights()) == pytest.approx(1.0, abs=1e-5)
    assert 0 < lin.mean_entropy() <= math.log(4) + 1e-6
    with pytest.raises(ValueError):
        MoELoRALinear(base, num_experts=3, rank=8, alpha=4.0)


def test_report_describes_the_current_task_only():
    model = tiny_llava()
    method = attached(model, num_experts="4", rank="8")
    method.begin_task(0, None, None)
    model.train()                                                     # statistics count training tokens
    model(input_ids=torch.randint(0, 60, (2, 6)))
    model.eval()
    model(input_ids=torch.randint(0, 60, (2, 6)))                     # ... and not evaluation's
    assert method.linears["0.mlp.up_proj"].tokens == 12
    report = method.task_report()
    json.dumps(report)
    assert set(report["router_entropy"]) == {"0", "1", "2", "3"}
    assert report["router_entropy_uniform"] == pytest.approx(math.log(4), abs=1e-6)
    assert all(0 < v <= math.log(4) + 1e-6 for v in report["router_entropy"].values())
    assert all(len(w) == 4 and sum(w) == pytest.approx(1.0, abs=1e-4)
               for w in report["expert_utilisation"].values())
    method.begin_task(1, None, None)
    assert method.linears["0.mlp.up_proj"].tokens == 0


def test_state_dict_round_trip_reproduces_the_trained_method():
    model = tiny_llava()
    method = attached(model)
    opt = torch.optim.AdamW(trainable_parameters(method.model), lr=1e-2)
    for _ in range(2):                                                # a little real training
        ids = torch.randint(0, 60, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    state = json.loads(json.dumps(method.state_dict()))
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    fresh_model = tiny_llava()
    fresh = attached(fresh_model)
    fresh.load_state_dict(state)
    fresh_model.load_state_dict(saved)
    with torch.no_grad():
        assert torch.equal(fresh_model(input_ids=ids).logits, expected)
    with pytest.raises(ValueError):
        attached(tiny_llava(), targets="q_proj,v_proj").load_state_dict(state)


def test_record_trains_everything_on_every_task_without_growth(tiny_run):
    record = tiny_run("moelora").record
    params = record["parameters"]
    # per linear: 8 experts of rank 4 (A: 4 x d_in, B: d_out x 4) + a router (8 x d_in), 4 layers;
    # tiny preset: d = 128, FFN width 344
    d, f = 128, 344
    shapes = [(d, d)] * 4 + [(d, f), (d, f), (f, d)]                # q k v o, gate up, down
    per_layer = sum(32 * (i + o) + 8 * i for i, o in shapes)
    assert params[0]["trained"] == params[1]["trained"] == 4 * per_layer
    assert params[0]["total"] == params[1]["total"]
    assert params[0]["activated_per_token"] == params[1]["activated_per_token"]
    for report in record["method_reports"]:
        assert len(report["expert_utilisation"]) == 4 * 7 and set(report["router_entropy"]) == {"0", "1", "2", "3"}
