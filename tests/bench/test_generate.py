"""``bench.decode.generate.generate``: the prompt batch prefilled in chunks into one KV buffer and finished rows
dropped from the decoding batch give the same tokens as one whole-batch forward that decodes every
row to the end; LoRA adapters run merged, with the same function."""
from __future__ import annotations

import collections
import functools

import torch
from accelerate import Accelerator
from micro_llava import micro_llava

import bench.decode.generate as decoding
from bench.decode.kv_cache import RoomyLayer
from bench.model.lora import LoRALinear, LoRASpec, inject_lora, merged_for_eval

IMAGE = 63
NEW = 8


def mixed_batch(b: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows with and without an image (pixel_values hold one image per image row, in row order),
    left padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    has_image = [r % 3 != 1 for r in range(b)]
    rows = []
    for r in range(b):
        text = torch.randint(3, 60, (7,), generator=g)
        rows.append(torch.cat([text[:2], torch.full((4,), IMAGE), text[2:]]) if has_image[r] else
                    torch.cat([text, torch.randint(3, 60, (4,), generator=g)]))
    ids = torch.stack(rows)
    mask = torch.ones_like(ids)
    for r in range(b):
        mask[r, : r % 3] = 0
    return {"input_ids": ids, "attention_mask": mask, "index": torch.arange(b),
            "pixel_values": torch.randn(sum(has_image), 3, 28, 28, generator=g)}


def decode(model, batch, eos: int, **kw) -> dict[int, list[int]]:
    return decoding.generate(model, [batch], eos_id=eos, max_new_tokens=NEW, accelerator=Accelerator(cpu=True), **kw)


def test_chunked_prefill_and_compaction_give_the_whole_batch_tokens(monkeypatch):
    model = micro_llava(0)
    batch = mixed_batch()
    # an eos the random model emits at different steps for different rows, so rows finish unevenly
    full = decode(model, batch, eos=-1)
    firsts = collections.Counter(t for seq in full.values() for t in seq[1:4])
    eos = firsts.most_common(1)[0][0]
    stops = {seq.index(eos) if eos in seq else NEW for seq in full.values()}
    assert len(stops) >= 2

    forwards, selects, rows_seen = [], [], []
    real_forward = type(model).forward

    @functools.wraps(real_forward)  # generate reads the forward's signature for the cache keyword
    def spy(self, *a, **k):
        forwards.append(k["input_ids"].shape[0])
        return real_forward(self, *a, **k)

    monkeypatch.setattr(type(model), "forward", spy)
    real_select = RoomyLayer.batch_select_indices
    monkeypatch.setattr(RoomyLayer, "batch_select_indices", lambda self, i: (selects.append(i.numel()),
                                                                              real_select(self, i))[1])
    monkeypatch.setattr(decoding, "COMPACT_FRACTION", 2.0)  # never compact
    reference = decode(model, batch, eos, prefill_chunk=64)
    assert forwards[0] == 7 and not selects
    forwards.clear()
    monkeypatch.setattr(decoding, "COMPACT_FRACTION", 0.1)
    fast = decode(model, batch, eos, prefill_chunk=3, select_rows=rows_seen.append)
    assert fast == reference
    assert forwards[:3] == [3, 3, 1]                      # the prompt batch in three chunks
    assert selects and min(forwards[3:]) < 7              # decoding continued on fewer rows
    assert [r.tolist() for r in rows_seen[:3]] == [[0, 1, 2], [3, 4, 5], [6]] and rows_seen[3] is None
    assert rows_seen[-1] is None                          # the method's selection is cleared after the batch


def test_merged_lora_is_the_same_function_and_leaves_the_weights_alone():
    model = micro_llava(1)
    adapters = inject_lora(model, LoRASpec(rank=4, alpha=8.0))
    model.eval()
    torch.manual_seed(0)
    for a in adapters:
        torch.nn.init.normal_(a.lora_B, std=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 60, (3, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    with merged_for_eval(model) as n:
        assert n == len(adapters) == 4 * 7
        with torch.no_grad():
            merged = model(input_ids=ids).logits
        # with autograd on, the adapters' own path runs (gradients must reach A and B)
        model(input_ids=ids).logits.sum().backward()
        assert all(a.lora_B.grad is not None and a.lora_B.grad.abs().sum() > 0 for a in adapters)
    torch.testing.assert_close(merged, plain, rtol=1e-5, atol=1e-5)
    assert all(a.merged is None for a in model.modules() if isinstance(a, LoRALinear))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # training mode is never merged (dropout and the gradient path are the adapter's)
    model.train()
    with merged_for_eval(model) as n:
        assert n == 0
