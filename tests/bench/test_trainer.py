"""The shared trainer is exactly a plain PyTorch loop (bit for bit on CPU) and its options work."""
from __future__ import annotations


import pytest
import torch
from accelerate import Accelerator
from micro_llava import micro_llava

from bench.perf.trainer import reference_steps
from bench.train.trainer import train_steps

IMAGE = 63


def batches(n: int = 3, b: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        text = torch.randint(1, 60, (b, 10), generator=g)
        ids = torch.cat([text[:, :2], torch.full((b, 4), IMAGE), text[:, 2:]], dim=1)  # 4 image tokens (28/14)^2
        labels = ids.clone()
        labels[:, :8] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                    "pixel_values": torch.randn(b, 3, 28, 28, generator=g)})
    return out


def trainable(model):
    for name, p in model.named_parameters():
        p.requires_grad_("language_model.layers.3" in name)
    return [p for p in model.parameters() if p.requires_grad]


def test_train_steps_equals_a_plain_loop_bit_for_bit():
    data = batches()
    a, b = micro_llava(0), micro_llava(0)
    stats = train_steps(a, trainable(a), data, 7, accelerator=Accelerator(cpu=True), lr=1e-3, log_every=1)
    _, losses = reference_steps(b, trainable(b), data, 7, lr=1e-3)
    assert [v for _, v in stats.loss_curve] == losses.tolist()
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), n
    assert 0 < stats.loop_seconds <= stats.seconds


def test_gradient_checkpointing_trains_the_same_parameters():
    """Recomputing the decoder's activations in backward gives the same training (float rounding
    aside: the recomputed forward runs the same kernels on the same inputs), and evaluation-mode
    forwards are untouched by it."""
    from bench.train.trainer import enable_gradient_checkpointing

    data = batches()
    a, b = micro_llava(0), micro_llava(0)
    enable_gradient_checkpointing(b)
    assert b.model.language_model.gradient_checkpointing
    sa = train_steps(a, trainable(a), data, 4, accelerator=Accelerator(cpu=True), lr=1e-3, log_every=1)
    sb = train_steps(b, trainable(b), data, 4, accelerator=Accelerator(cpu=True), lr=1e-3, log_every=1)
    assert sa.loss_curve == pytest.approx(sb.loss_curve, rel=1e-5)
    for (n, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), n


def test_bf16_autocast_trains_and_decodes_on_cpu():
    from accelerate.state import AcceleratorState

    from bench.decode.generate import generate

    AcceleratorState._reset_state(True)  # the precision is process-wide state in accelerate
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        model = micro_llava(0)
        stats = train_steps(model, trainable(model), batches(), 3, accelerator=accelerator, lr=1e-3, log_every=1)
        assert len(stats.loss_curve) == 3 and all(torch.isfinite(torch.tensor(v)) for _, v in stats.loss_curve)
        batch = {k: v for k, v in batches(1)[0].items() if k != "labels"}
        batch["index"] = torch.arange(4)
        ids = generate(model, [batch], eos_id=2, max_new_tokens=3, accelerator=accelerator)
        assert sorted(ids) == [0, 1, 2, 3]
    finally:
        AcceleratorState._reset_state(True)


def test_compile_failure_is_one_clear_error(monkeypatch):
    def broken(model, *a, **k):
        def call(**kwargs):
            raise RuntimeError("InductorError: no working C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = micro_llava(0)
    with pytest.raises(RuntimeError, match="--compile failed.*C\\+\\+ compiler"):
        train_steps(model, trainable(model), batches(), 2, accelerator=Accelerator(cpu=True), lr=1e-3, compile=True)


def test_time_split_lists_every_phase_and_the_rest():
    from bench.run.timing import time_split

    text = time_split({"stage0": 5.0, "data": 2.0, "training": 100.0, "method": 3.0, "evaluation": 40.0,
                       "total": 160.0}, 812.4)
    assert "training" in text and "evaluation" in text and "method work" in text
    assert "other" in text and "10.0 s" in text  # 160 - 150 not covered by a phase
    assert "25.0 %" in text  # evaluation 40 of 160
    assert "812 MB" in text
