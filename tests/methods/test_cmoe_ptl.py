"""PTL pieces: the VAE locator separates tasks, and F_end is the base model's last-prompt-token state
whatever the batch layout (training right-padded prompt + answer, evaluation left-padded prompt)."""
from __future__ import annotations

import copy

import pytest
import torch

from bench.moe import MoEFFN, decoder_layers
from methods.cmoe.method import CMoE, CMoEHParams
from methods.cmoe.ptl import (BaseFeatureCache, TaskLocator, base_last_token_features, experts_bypassed,
                              fit_task_vae)

from cmoe_tiny import IMAGE, ToySplit, collate_eval, collate_train, one_thread, tiny_llava  # noqa: F401

VAE = dict(hidden=64, latent=16, kl_weight=1e-3, epochs=60, lr=3e-3, batch_size=64, standardize=True)


def test_locator_picks_the_task_of_well_separated_features():
    g = torch.Generator().manual_seed(0)
    d, centres = 24, [torch.randn(24, generator=g) * 3 for _ in range(3)]
    sample = lambda t, n: centres[t] + 0.5 * torch.randn(n, d, generator=g)  # noqa: E731
    locator = TaskLocator()
    for t in range(3):
        train = sample(t, 120)
        vae, loss = fit_task_vae(train, seed=t, **VAE)
        assert loss == loss and not any(p.requires_grad for p in vae.parameters())
        locator.add(vae, train)
    for t in range(3):
        pred = locator.predict(sample(t, 40))
        assert (pred == t).float().mean() >= 0.95, (t, pred.tolist())
    assert locator.err_mean.shape == (3,) and bool((locator.err_std > 0).all())


def test_vae_fit_is_reproducible_and_leaves_the_global_rng_alone():
    x = torch.randn(30, 8)
    state = torch.get_rng_state()
    a, _ = fit_task_vae(x, seed=5, **VAE)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = fit_task_vae(x, seed=5, **VAE)
    assert torch.equal(a.reconstruction_error(x), b.reconstruction_error(x))


@pytest.fixture(scope="module")
def installed():
    """A tiny LLaVA with cmoe's layers installed and non-zero experts, plus a pristine copy."""
    model = tiny_llava()
    pristine = copy.deepcopy(model)
    method = CMoE(CMoEHParams())
    from methods.base import MethodContext

    method.attach(model, MethodContext(num_tasks=1, steps_per_task=1, device=torch.device("cpu"), image_token_id=IMAGE))
    method.install(model)
    for layer in method.layers.values():
        for ex in layer.experts.experts:
            for lora in (ex.gate_proj, ex.up_proj, ex.down_proj):
                torch.nn.init.normal_(lora.lora_B, std=0.5)   # experts now change the output
    return method, model, pristine


def test_features_are_the_base_model_state_with_experts_bypassed(installed):
    method, model, pristine = installed
    batch = collate_eval(ToySplit(0, 5).items)
    feats = base_last_token_features(model, method.layers, batch, torch.device("cpu"))
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = pristine.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=positions).last_hidden_state[:, -1]
        moe = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=positions).last_hidden_state[:, -1]
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moe, ref, atol=1e-3), "experts should change the MoE model's state"
    assert all(isinstance(decoder_layers(model)[i].mlp, MoEFFN) for i in method.layers), "swap not undone"


def test_training_and_evaluation_layouts_give_the_same_feature(installed):
    method, model, _ = installed
    items = ToySplit(1, 6).items
    train = base_last_token_features(model, method.layers, collate_train(items), torch.device("cpu"))
    evalf = base_last_token_features(model, method.layers, collate_eval(items), torch.device("cpu"))
    torch.testing.assert_close(train, evalf, rtol=1e-4, atol=1e-5)


def test_bypass_is_undone_on_error(installed):
    method, model, _ = installed
    with pytest.raises(RuntimeError):
        with experts_bypassed(model, method.layers):
            assert not isinstance(decoder_layers(model)[0].mlp, MoEFFN)
            raise RuntimeError("boom")
    assert isinstance(decoder_layers(model)[0].mlp, MoEFFN)


def test_feature_cache_reuses_features_only_while_the_base_model_is_unchanged(installed):
    method, model = copy.deepcopy(installed[:2])  # this test writes to base weights
    layers, cpu = method.layers, torch.device("cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    cache = BaseFeatureCache()
    batch = collate_eval(ToySplit(0, 5).items)
    first = cache.features(model, layers, batch, cpu)
    assert torch.equal(first, base_last_token_features(model, layers, batch, cpu))
    # the same prompts in new tensors (as a GPU run moves them every row): reused, not recomputed
    assert cache.features(model, layers, {k: v.clone() for k, v in batch.items()}, cpu) is first
    # training the experts (all a task changes) leaves the base and hence F_end alone
    with torch.no_grad():
        for layer in layers.values():
            for ex in layer.experts.experts:
                ex.down_proj.lora_B.add_(1.0)
    assert cache.features(model, layers, batch, cpu) is first
    assert (cache.hits, cache.misses) == (2, 1)
    # other prompts are never handed the first batch's features
    other = collate_eval(ToySplit(1, 5).items)
    assert torch.equal(cache.features(model, layers, other, cpu), base_last_token_features(model, layers, other, cpu))
    # an in-place write to a base weight (an optimiser step, load_state_dict) invalidates every entry
    weight = decoder_layers(model)[1].self_attn.q_proj.weight
    with torch.no_grad():
        weight.mul_(1.5)
    fresh = cache.features(model, layers, batch, cpu)
    assert fresh is not first and not torch.equal(fresh, first)
    assert torch.equal(fresh, base_last_token_features(model, layers, batch, cpu))
    # a trainable base parameter (e.g. --train-projector): nothing is reused
    weight.requires_grad_(True)
    misses = cache.misses
    a, b = cache.features(model, layers, batch, cpu), cache.features(model, layers, batch, cpu)
    assert cache.misses == misses + 2 and a is not b and torch.equal(a, b)
