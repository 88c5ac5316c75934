"""Every registered method gets the same tiny two-task end-to-end run: a valid record with finite
metrics, parameters the method did not expose for training are bit-identical after each task, and the
run's last checkpoint restores the method bit-identically into a fresh model (tests/roundtrip_check.py)."""
from __future__ import annotations

import math

import collections

import pytest
import torch
from accelerate import Accelerator
from roundtrip_check import assert_round_trip

import methods
import bench.decode.generate as decoding
from bench.moe import moe_layers_of


@pytest.mark.parametrize("name", methods.names())
def test_method_runs_two_tasks(name, tiny_run):
    # the session's shared run of the method (tests/methods/conftest.py), trained with FrozenCheck
    done = tiny_run(name)
    cfg, record, hooks = done.cfg, done.record, done.frozen
    expected_stages = 1 if methods.get(name).joint_training else 2
    # the frozen check runs around every training phase (cmoe's probe, EvoMoE's evolution and router)
    assert hooks.checked == sum(len(t.get("phases") or [None]) for t in record["training"]) >= expected_stages
    assert record["method"] == name and record["tasks"] == ["vqav2", "imagenet"]
    assert len(record["accuracy_matrix"]) == expected_stages + 1
    for key in ("last", "maa", "bwt", "forgetting", "fwt", "mft"):
        value = record["metrics"][key]
        assert value is None or math.isfinite(value)
    assert math.isfinite(record["metrics"]["last"])
    assert len(record["parameters"]) == expected_stages
    for counts in record["parameters"]:
        assert 0 < counts["trained"] <= counts["total"]
        assert 0 < counts["activated_per_token"] <= counts["total"]
    assert record["wall_time"]["training"] > 0 and record["wall_time"]["evaluation"] > 0
    assert_split_evaluation_is_exact(done.method, done.model)
    assert_round_trip(cfg, record, done.method, done.model)


def assert_split_evaluation_is_exact(method, model, b: int = 9) -> None:
    """The trained method evaluates a prompt batch split into prefill chunks, with finished rows
    dropped from decoding, to the same tokens as one whole-batch forward decoding every row; a method
    whose rows interact (MoE capacity, second-choice noise) says so and is never split."""
    if not method.rows_independent_at_eval:
        assert any(m.second_choice_noise or m.capacity_factor_eval is not None for m in moe_layers_of(model))
        return
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    n_img, size = cfg.image_seq_length, cfg.vision_config.image_size
    rows = []
    for r in range(b):
        text = torch.randint(5, cfg.text_config.vocab_size - 1, (12,), generator=g)
        text[text == cfg.image_token_id] = 5
        rows.append(torch.cat([text[:3], torch.full((n_img,), cfg.image_token_id), text[3:]]) if r % 3 else text)
    batch = {"input_ids": torch.stack([torch.nn.functional.pad(x, (n_img + 12 - len(x), 0)) for x in rows]),
             "index": torch.arange(b), "pixel_values": torch.randn(sum(r % 3 != 0 for r in range(b)), 3, size, size,
                                                                   generator=g)}
    batch["attention_mask"] = torch.stack([torch.arange(n_img + 12) >= n_img + 12 - len(x) for x in rows]).long()

    def decode(eos: int, split: bool) -> dict[int, list[int]]:
        return decoding.generate(model, [batch], eos_id=eos, max_new_tokens=6, accelerator=Accelerator(cpu=True),
                                before_forward=method.before_forward, select_rows=method.select_rows,
                                split_rows=split, prefill_chunk=4)

    full = decode(-1, split=False)
    eos = collections.Counter(t for seq in full.values() for t in seq[1:4]).most_common(1)[0][0]
    old = decoding.COMPACT_FRACTION
    decoding.COMPACT_FRACTION = 0.1
    try:
        assert decode(eos, split=True) == decode(eos, split=False)
    finally:
        decoding.COMPACT_FRACTION = old
