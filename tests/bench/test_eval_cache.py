"""Evaluation rows replay collated batches and reuse image features only while the vision path is
provably unchanged; predictions are identical to decoding from scratch in every case."""
from __future__ import annotations

import copy

import torch
from accelerate import Accelerator
from micro_llava import micro_llava

from bench.train.data import EvalBatches
from bench.decode.generate import generate, vision_fingerprint

IMAGE, EOS = 63, 2


def eval_batches(n: int = 3, b: int = 5, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        text = torch.randint(3, 60, (b, 6 + k), generator=g)
        ids = torch.cat([text[:, :2], torch.full((b, 4), IMAGE), text[:, 2:]], dim=1)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0  # one left-padded prompt per batch
        out.append({"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(b, 3, 28, 28, generator=g),
                    "index": torch.arange(k * b, (k + 1) * b)})
    return out


def decode(model, loader):
    return generate(model, loader, eos_id=EOS, max_new_tokens=6, accelerator=Accelerator(cpu=True))


def test_reused_features_give_identical_predictions_and_are_dropped_when_the_vision_path_changes():
    model = micro_llava(0)
    for p in model.parameters():
        p.requires_grad_(False)
    data = eval_batches()
    cached = EvalBatches(data)
    first = decode(model, cached)
    assert cached.cached and sorted(cached.features) == [0, 1, 2]
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))  # a hook: nothing is reused...
    assert vision_fingerprint(model, Accelerator(cpu=True)) is None
    model.model.vision_tower._forward_hooks.clear()
    # ...but an untouched vision path is: the second row runs no vision tower and predicts the same
    tower_forward = type(model.model.vision_tower).forward
    runs = []

    def counting(self, *a, **k):
        runs.append(1)
        return tower_forward(self, *a, **k)

    type(model.model.vision_tower).forward = counting
    try:
        assert decode(model, cached) == first == decode(model, list(data))
        assert len(runs) == 3  # only the uncached decode above ran the tower (3 batches)
        # training the decoder (as every method does) keeps the features valid
        with torch.no_grad():
            model.model.language_model.layers[0].mlp.up_proj.weight.add_(0.5)
        runs.clear()
        assert decode(model, cached) == decode(model, list(data))
        assert len(runs) == 3
        # an in-place change of the vision tower invalidates them: recomputed, equal to a fresh decode
        with torch.no_grad():
            next(p for n, p in model.model.vision_tower.named_parameters() if "layers.0" in n and p.dim() == 2).mul_(1.5)
        runs.clear()
        assert decode(model, cached) == decode(model, list(data))
        assert len(runs) == 6
        # a trainable projector (--train-projector) is never trusted
        model.model.multi_modal_projector.linear_1.weight.requires_grad_(True)
        assert vision_fingerprint(model, Accelerator(cpu=True)) is None
        runs.clear()
        fresh = copy.deepcopy(model)
        assert decode(model, cached) == decode(fresh, list(data))
        assert len(runs) == 6
    finally:
        type(model.model.vision_tower).forward = tower_forward


def test_a_split_over_budget_is_streamed_not_kept():
    model = micro_llava(0).requires_grad_(False)
    data = eval_batches()
    small = EvalBatches(data, budget=1000)
    assert decode(model, small) == decode(model, list(data))
    assert not small.cached and small.too_big and not small.features
